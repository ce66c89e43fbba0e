"""Multi-depthwise convolution: the depthwise convolutions of every convolution candidate leaving one state
of a CNN cell in one C++ call (csrc/multi_depthwise.cpp), the `--fused` twin of
emodarts.ops.dw_reference.multi_depthwise.

The op reads the state's (shared) input once per channel for all candidates, or takes one input per
candidate (the second halves of the separable convolutions). float32/float64 run as they are; bf16/fp16 run
in float32 and come back in their dtype; non-contiguous inputs are made contiguous once. On CUDA the
reference's cuDNN calls run (a Triton kernel is the next step, docs/grouped-cnn.md).
"""
from typing import List, Sequence

import torch
from torch import Tensor

from . import dw_reference


def ops():
    """torch.ops.emodarts with the multi-depthwise ops loaded (JIT-building the extension if needed)."""
    from .extension import load_ops

    return load_ops("emodarts::multi_dw_fwd", "emodarts::multi_dw_bwd", "csrc/multi_depthwise.cpp",
                    lambda xs, ws, dilations, stride: _empty_outs(xs, ws, stride),
                    lambda grads, xs, ws, dilations, stride: ([torch.empty_like(x) for x in xs],
                                                              [torch.empty_like(w) for w in ws]))


def _empty_outs(xs, ws, stride):
    b, c, h, w = xs[0].shape
    return [xs[0].new_empty(b, c, (h - 1) // stride + 1, (w - 1) // stride + 1) for _ in ws]


class _MultiDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n_x: int, dilations: List[int], stride: int, *tensors: Tensor):
        xs, ws = list(tensors[:n_x]), list(tensors[n_x:])
        ctx.save_for_backward(*tensors)
        ctx.n_x, ctx.dilations, ctx.stride = n_x, dilations, stride
        return tuple(ops().multi_dw_fwd(xs, ws, dilations, stride))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        tensors = ctx.saved_tensors
        xs, ws = list(tensors[: ctx.n_x]), list(tensors[ctx.n_x:])
        if any(g is None for g in grads):
            grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, _empty_outs(xs, ws, ctx.stride))]
        grads = [g.contiguous() for g in grads]
        gxs, gws = ops().multi_dw_bwd(grads, xs, ws, ctx.dilations, ctx.stride)
        return (None, None, None, *gxs, *gws)


def multi_depthwise(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int],
                    stride: int) -> List[Tensor]:
    """Same contract as dw_reference.multi_depthwise."""
    if not xs or xs[0].device.type != "cpu":
        return dw_reference.multi_depthwise(xs, weights, dilations, stride)
    dtype = xs[0].dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast("cpu", enabled=False):
        xs_c = [x.to(work).contiguous() for x in xs]
        ws_c = [w.to(work).contiguous() for w in weights]
        outs = _MultiDepthwise.apply(len(xs_c), [int(d) for d in dilations], int(stride), *xs_c, *ws_c)
    return [o.to(dtype) for o in outs]
