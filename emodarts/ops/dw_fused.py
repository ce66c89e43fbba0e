"""Multi-depthwise convolution: the depthwise convolutions of every convolution candidate leaving one state
of a CNN cell in one call (C++ on the CPU: csrc/multi_depthwise.cpp; Triton on CUDA:
kernels/multi_depthwise.py through emodarts/ops/dw_triton.py), the `--fused` twin of
emodarts.ops.dw_reference.multi_depthwise.

The op reads the state's (shared) input once per channel for all candidates, or takes one input per
candidate (the second halves of the separable convolutions). float32/float64 run as they are; bf16/fp16 run
in float32 and come back in their dtype; non-contiguous inputs are made contiguous once. On CUDA the Triton
kernels run in the inputs' dtype (the autocast dtype under autocast, as cuDNN would) with float32
accumulation; EMODARTS_DW_CUDNN=1 runs the reference's cuDNN calls instead (to tell a kernel fault from
anything else on a GPU).
"""
import os
from typing import List, Sequence

import torch
from torch import Tensor

from emodarts.ops import dw_reference


def ops():
    """torch.ops.emodarts with the multi-depthwise ops loaded (JIT-building the extension if needed)."""
    from emodarts.ops.extension import load_ops

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
    if xs and xs[0].device.type == "cuda" and os.environ.get("EMODARTS_DW_CUDNN") != "1":
        return _multi_depthwise_cuda(xs, weights, dilations, stride)
    if not xs or xs[0].device.type != "cpu":
        return dw_reference.multi_depthwise(xs, weights, dilations, stride)
    dtype = xs[0].dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast("cpu", enabled=False):
        xs_c = [x.to(work).contiguous() for x in xs]
        ws_c = [w.to(work).contiguous() for w in weights]
        outs = _MultiDepthwise.apply(len(xs_c), [int(d) for d in dilations], int(stride), *xs_c, *ws_c)
    return [o.to(dtype) for o in outs]


def _multi_depthwise_cuda(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int],
                          stride: int) -> List[Tensor]:
    """The Triton op, inputs and weights in one dtype: the autocast dtype when autocast is on (what
    F.conv2d would compute in), else the inputs'."""
    from emodarts.ops.dw_triton import multi_depthwise_triton

    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else xs[0].dtype
    with torch.autocast("cuda", enabled=False):
        return multi_depthwise_triton([x.to(dtype) for x in xs], [w.to(dtype) for w in weights], dilations, stride)
