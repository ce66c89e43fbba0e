"""Which input gradients one backward call must produce.

`ctx.needs_input_grad` says which inputs require a gradient at all; it is fixed when the graph is built.
The engine knows more: `torch.autograd.grad(loss, alphas)` (an alpha step) runs no node that leads only to
the weights, and `torch.autograd.grad(loss, weights)` (a weight step) none that leads only to the alphas.
The fused ops ask the engine, per tensor input, whether the node that input feeds will run, and hand the
answer to their kernels as an output mask (as ATen's own backwards take `output_mask`), so a gradient
nobody asked for is never computed.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _runs(node) -> bool:
    """Whether the engine will run `node` (an input's grad_fn or AccumulateGrad) in the current backward."""
    if node is None:  # the input does not require a gradient
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except RuntimeError:
        # a leaf that torch.autograd.grad captures (the engine refuses to answer for it: it is wanted), or no
        # backward running (a backward traced ahead of time): wanted
        return True


def wanted(ctx) -> List[bool]:
    """One flag per tensor input of the op, in the order the op received them (non-tensor arguments have
    no entry): whether this backward must produce that input's gradient.

    False when the input does not require a gradient, or when the engine will not run the node the input
    feeds in the current backward. Outside the engine (a backward traced ahead of time, as
    torch.compile does) every input that requires a gradient is wanted."""
    return [_runs(node) for node, _ in ctx.next_functions]


def wanted_any(ctx, spans: Sequence[Tuple[int, int]]) -> List[bool]:
    """For each [start, stop) span of tensor inputs (a kind: the inputs, the weights, ...), whether any of
    them is wanted; asks the engine only until one is (a weight step's first weight answers for all)."""
    nodes = [node for node, _ in ctx.next_functions]
    return [any(_runs(node) for node in nodes[a:b]) for a, b in spans]


def spread(grads: Sequence[Tensor], need: Sequence[bool]) -> List[Optional[Tensor]]:
    """The wanted gradients a kernel returned, in order, put back in their inputs' places (None elsewhere):
    a Tensor[] result holds only what was asked for."""
    it = iter(grads)
    out = [next(it) if n else None for n in need]
    if next(it, None) is not None:
        raise RuntimeError("a fused backward returned more gradients than were asked for")
    return out


def only_wanted(grads: Sequence[Tensor], need: Sequence[bool]) -> List[Tensor]:
    """The fake-kernel side of `spread`: keep the wanted ones."""
    return [g for g, n in zip(grads, need) if n]
