"""The mixed sum of one node: out = sum_i softmax(alpha, -1)[e_i, m_i] * ys[i], its reference twin and its
fused implementations.

`mixed_sum_reference` is plain PyTorch (the oracle). `mixed_sum_fused` has its signature and semantics and
runs the Triton kernels (kernels/mixed_sum.py) on CUDA tensors and the C++ twin (csrc/mixed_sum.cpp) on CPU
tensors; with EMODARTS_TRITON_CPU=1 (and TRITON_INTERPRET=1 set before the kernels are loaded) CPU tensors go
through the Triton interpreter instead. `mixed_sum_triton` and `mixed_sum_cpp` pick one implementation.

Backward: one pass over grad_out (per chunk of 8 inputs in Triton) writes every grad_y_i = p_i * grad_out
and the dot products d_i = <grad_out, y_i>; an epilogue on (E, M) scatters d (repeated (e, m) add up) and
applies the softmax Jacobian, grad_alpha[e, k] = p[e, k] * (D[e, k] - sum_j p[e, j] D[e, j]). The C++ ops
(emodarts::mixed_sum_fwd / mixed_sum_bwd, given alpha and the flat index e * M + m) do the softmax and the
epilogue themselves, in double; the Triton path does them with a few torch ops on the (E, M) tensors.
A `none` candidate has no y: D is 0 there, so it costs nothing but its softmax mass.

Inputs are read where they lie, through their strides (emodarts/ops/layout.py), so skip_connect inputs are
never copied; the only copy is Triton's, for an input whose strides do not collapse to 4 dims (never the
case for <= 4-D cell tensors), counted by `copy_count()`.

Registration: one torch.library custom op, `emodarts::mixed_sum(Tensor[] ys, Tensor alpha, int[] edges,
int[] cands, str impl) -> Tensor`, with a fake kernel and autograd registered beside it (its backward is
the op `emodarts::mixed_sum_backward`); torch.compile and export trace that op. In eager mode the same
kernels run through a plain autograd.Function, which skips the custom-op layers (set
EMODARTS_FUSED_CUSTOM_OP=1 to use the op in eager mode too). Double backward is not supported.
"""
import functools
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from emodarts.ops import layout
from emodarts.ops.compiled.triton import triton_kernels
from emodarts.ops.grad_need import wanted
from emodarts.runtime.errors import BackendError

# --------------------------------------------------------------------------------------------------
# the reference twin


def mixed_sum_reference(ys: Sequence[Tensor], alpha: Tensor, index: Sequence[Tuple[int, int]]) -> Tensor:
    """Weighted sum of one node's candidate outputs.

    out = sum_i softmax(alpha, -1)[e_i, m_i] * ys[i]

    alpha: (E, M) logits of the node's E incoming edges over all M candidates, `none` included
    (a `none` candidate has no entry in `ys`: it costs nothing but its softmax mass).
    ys: tensors of one shape and dtype; index[i] = (edge, candidate) of ys[i].
    """
    if len(ys) != len(index):
        raise ValueError(f"mixed_sum: {len(ys)} inputs but {len(index)} index entries")
    p = torch.softmax(alpha.to(torch.promote_types(alpha.dtype, torch.float32)), dim=-1)  # float64 stays
    out = None
    for y, (e, m) in zip(ys, index):
        term = p[e, m].to(y.dtype) * y
        out = term if out is None else out + term
    if out is None:
        raise ValueError("mixed_sum needs at least one input")
    return out


# --------------------------------------------------------------------------------------------------
# the fused implementations: where they are

IMPLS = ("triton", "cpp")


def kernels_module():
    """kernels/mixed_sum.py (Triton)."""
    return triton_kernels("mixed_sum", "the fused backend's mixed sum on this device")


def cpp_ops():
    """torch.ops.emodarts with the C++ mixed-sum ops loaded (JIT-building the extension if needed) and their
    fake kernels registered (so they can be traced and opchecked on their own too)."""
    from emodarts.ops.compiled.cpp import load_ops

    return load_ops("emodarts::mixed_sum_fwd", "emodarts::mixed_sum_bwd", "csrc/mixed_sum.cpp",
                    lambda ys, alpha, index: _empty_out(ys),
                    lambda grad_out, ys, alpha, index, mask: (_empty_grads(ys) if mask[0] else [],
                                                              torch.empty_like(alpha) if mask[1] else None))


def _empty_out(ys: Sequence[Tensor]) -> Tensor:
    return torch.empty_strided(ys[0].shape, layout.out_strides(ys), dtype=layout.result_dtype(ys),
                               device=ys[0].device)


def _empty_grads(ys: Sequence[Tensor]) -> List[Tensor]:
    st = layout.out_strides(ys)
    return [torch.empty_strided(y.shape, st, dtype=y.dtype, device=y.device) for y in ys]


def copy_count() -> int:
    """Inputs copied because of an unreadable layout (Triton only; the C++ twin never copies)."""
    return kernels_module().copy_count()


# --------------------------------------------------------------------------------------------------
# weights and the alpha epilogue


@functools.lru_cache(maxsize=1024)
def _flat_index(edges: Tuple[int, ...], cands: Tuple[int, ...], m: int, device: torch.device) -> Tensor:
    return torch.tensor([e * m + c for e, c in zip(edges, cands)], dtype=torch.long, device=device)


def _weights(alpha: Tensor, edges: Sequence[int], cands: Sequence[int], device) -> Tuple[Tensor, Tensor, Tensor]:
    """(p, w, flat index): p = softmax(alpha) in fp32 (E, M), w[i] = p[e_i, m_i] on `device`."""
    p = torch.softmax(alpha.float(), dim=-1)
    if p.device != device:
        p = p.to(device)
    idx = _flat_index(tuple(edges), tuple(cands), alpha.shape[-1], device)
    return p, p.reshape(-1).index_select(0, idx), idx


def _flat(edges: Sequence[int], cands: Sequence[int], alpha: Tensor) -> List[int]:
    m = alpha.shape[-1]
    return [e * m + c for e, c in zip(edges, cands)]


# --------------------------------------------------------------------------------------------------
# the custom ops


def _forward(ys: List[Tensor], alpha: Tensor, edges: List[int], cands: List[int], impl: str) -> Tensor:
    if impl == "cpp":  # softmax and gather inside the C++ op: one operator per call
        return cpp_ops().mixed_sum_fwd(ys, alpha, _flat(edges, cands, alpha))
    if impl == "triton":
        _, w, _ = _weights(alpha, edges, cands, ys[0].device)
        return kernels_module().forward(ys, w)
    raise ValueError(f"mixed_sum: unknown implementation {impl!r} (one of {IMPLS})")


def _backward(
    grad: Tensor, ys: List[Tensor], alpha: Tensor, edges: List[int], cands: List[int], impl: str,
    need_ys: bool = True, need_alpha: bool = True,
) -> Tuple[List[Optional[Tensor]], Optional[Tensor]]:
    """The inputs' gradients (None each when not need_ys) and alpha's (None when not need_alpha)."""
    if impl == "cpp":  # the whole backward, epilogue included, in the C++ op; it skips what is not wanted
        grads, grad_alpha = cpp_ops().mixed_sum_bwd(grad, ys, alpha, _flat(edges, cands, alpha), [need_ys, need_alpha])
        return (list(grads) if need_ys else [None] * len(ys)), grad_alpha
    if impl != "triton":
        raise ValueError(f"mixed_sum: unknown implementation {impl!r} (one of {IMPLS})")
    dev = ys[0].device
    p, w, idx = _weights(alpha, edges, cands, dev)
    grads, dots = kernels_module().backward(grad, ys, w, need_ys, need_alpha)  # skips what is not wanted
    if not need_ys:
        grads = [None] * len(ys)
    if not need_alpha:
        return grads, None
    # epilogue on (E, M): D[e, m] = sum of d_i over entries with (e_i, m_i) = (e, m); softmax Jacobian
    d = torch.zeros(p.numel(), dtype=torch.float32, device=dev).index_add_(0, idx, dots).view_as(p)
    grad_alpha = p * (d - (p * d).sum(dim=-1, keepdim=True))
    return grads, grad_alpha.to(device=alpha.device, dtype=alpha.dtype)


# The custom ops: what torch.compile / export trace (fake kernels below), and what opcheck checks.


@torch.library.custom_op("emodarts::mixed_sum", mutates_args=())
def _mixed_sum_op(ys: List[Tensor], alpha: Tensor, edges: List[int], cands: List[int], impl: str) -> Tensor:
    return _forward(list(ys), alpha, list(edges), list(cands), impl)


@_mixed_sum_op.register_fake
def _(ys, alpha, edges, cands, impl):
    return _empty_out(ys)


@torch.library.custom_op("emodarts::mixed_sum_backward", mutates_args=())
def _mixed_sum_backward_op(
    grad: Tensor, ys: List[Tensor], alpha: Tensor, edges: List[int], cands: List[int], impl: str
) -> Tuple[List[Tensor], Tensor]:
    return _backward(grad, list(ys), alpha, list(edges), list(cands), impl)


@_mixed_sum_backward_op.register_fake
def _(grad, ys, alpha, edges, cands, impl):
    return _empty_grads(ys), torch.empty_like(alpha)


def _setup_context(ctx, inputs, output):
    ys, alpha, edges, cands, impl = inputs
    ctx.save_for_backward(alpha, *ys)
    ctx.edges, ctx.cands, ctx.impl = list(edges), list(cands), impl


def _op_backward(ctx, grad):
    alpha, *ys = ctx.saved_tensors
    grads, grad_alpha = _mixed_sum_backward_op(grad, ys, alpha, ctx.edges, ctx.cands, ctx.impl)
    need_alpha = ctx.needs_input_grad[1]
    return list(grads), (grad_alpha if need_alpha else None), None, None, None


_mixed_sum_op.register_autograd(_op_backward, setup_context=_setup_context)


class _MixedSumFunction(torch.autograd.Function):
    """The eager path: the same kernels without the custom-op layers (pytree flattening, redispatch), which
    cost about as much as the whole sum at tiny-preset sizes on a CPU (measured: fwd+bwd 435 us through the
    custom op vs 231 us here, K = 8, 61k elements, 1 thread)."""

    @staticmethod
    def forward(ctx, alpha, edges, cands, impl, *ys):
        ctx.save_for_backward(alpha, *ys)
        ctx.edges, ctx.cands, ctx.impl = edges, cands, impl
        return _forward(list(ys), alpha, edges, cands, impl)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        alpha, *ys = ctx.saved_tensors
        need = wanted(ctx)  # alpha, then the inputs: a weight step wants no alpha gradient
        if not any(need):
            return (None,) * (4 + len(ys))
        grads, grad_alpha = _backward(grad, ys, alpha, ctx.edges, ctx.cands, ctx.impl, any(need[1:]), need[0])
        return (grad_alpha, None, None, None, *grads)  # the engine drops an input gradient it does not run


# --------------------------------------------------------------------------------------------------
# public API


def _split_index(ys: Sequence[Tensor], alpha: Tensor, index: Sequence[Tuple[int, int]]) -> Tuple[List[int], List[int]]:
    if len(ys) != len(index):
        raise ValueError(f"mixed_sum: {len(ys)} inputs but {len(index)} index entries")
    if len(ys) == 0:
        raise ValueError("mixed_sum needs at least one input")
    if alpha.dim() != 2:
        raise ValueError(f"mixed_sum: alpha must be (E, M), got shape {tuple(alpha.shape)}")
    n_e, n_m = alpha.shape
    edges, cands = [], []
    for i, (e, m) in enumerate(index):
        e, m = int(e), int(m)
        if not (-n_e <= e < n_e and -n_m <= m < n_m):
            raise ValueError(f"mixed_sum: index[{i}] = ({e}, {m}) is outside alpha of shape ({n_e}, {n_m})")
        edges.append(e % n_e)
        cands.append(m % n_m)
    return edges, cands


SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_inputs(ys: Sequence[Tensor]) -> None:
    shape, dev = ys[0].shape, ys[0].device
    for i, y in enumerate(ys):
        if y.shape != shape:
            raise ValueError(f"mixed_sum: input {i} has shape {tuple(y.shape)}, input 0 has {tuple(shape)}")
        if y.device != dev:
            raise ValueError(f"mixed_sum: input {i} is on {y.device}, input 0 on {dev}")
        if y.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"mixed_sum (fused): unsupported dtype {y.dtype} (float32, bfloat16, float16)")


def _call(ys: Sequence[Tensor], alpha: Tensor, index: Sequence[Tuple[int, int]], impl: str) -> Tensor:
    edges, cands = _split_index(ys, alpha, index)
    _check_inputs(ys)
    if torch.compiler.is_compiling() or os.environ.get("EMODARTS_FUSED_CUSTOM_OP") == "1":
        return _mixed_sum_op(list(ys), alpha, edges, cands, impl)
    return _MixedSumFunction.apply(alpha, edges, cands, impl, *ys)


def default_impl(device: torch.device) -> str:
    """Triton on CUDA; the C++ twin on the CPU unless EMODARTS_TRITON_CPU=1 asks for the interpreter."""
    device = torch.device(device)
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        return "triton" if os.environ.get("EMODARTS_TRITON_CPU") == "1" else "cpp"
    raise BackendError(f"the fused mixed sum has no implementation for {device.type} tensors")


def mixed_sum_fused(ys: Sequence[Tensor], alpha: Tensor, index: Sequence[Tuple[int, int]]) -> Tensor:
    """Fused twin of mixed_sum_reference (same signature and semantics)."""
    if len(ys) == 0:
        raise ValueError("mixed_sum needs at least one input")
    return _call(ys, alpha, index, default_impl(ys[0].device))


def mixed_sum_triton(ys: Sequence[Tensor], alpha: Tensor, index: Sequence[Tuple[int, int]]) -> Tensor:
    """The Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    return _call(ys, alpha, index, "triton")


def mixed_sum_cpp(ys: Sequence[Tensor], alpha: Tensor, index: Sequence[Tuple[int, int]]) -> Tensor:
    """The C++ twin (CPU tensors)."""
    return _call(ys, alpha, index, "cpp")
