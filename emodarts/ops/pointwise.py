"""Bias-free 1x1 convolutions: `pointwise_convs_reference` (one ATen convolution each) and
`pointwise_convs_fused` (several in one call).

The reference twin of emodarts.ops.pointwise.pointwise_convs_fused: each bias-free 1x1 convolution as one
ATen convolution.

Several bias-free 1x1 convolutions in one call (the pointwise halves of a CNN search state's candidates,
the factorized reduce, the cell preprocessing): the `--fused` twin of pointwise_convs_reference.

CPU tensors run the C++ ops of csrc/pointwise.cpp (float32/float64; bf16 and fp16 in float32): each (input,
batch item) is one small GEMM on the tensors' own memory, where ATen's convolution or einsum would copy and
permute. Elsewhere each one is a batched GEMM over (B, C, H*W) (torch.einsum), which cuBLAS runs well. Double
backward is not supported.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from emodarts.ops.cpu_amp import result_dtype, work_dtype
from emodarts.ops.grad_need import only_wanted, spread, wanted

# --------------------------------------------------------------------------------------------------
# the reference twin

def pointwise_convs_reference(xs: Sequence[Tensor], weights: Sequence[Tensor]) -> List[Tensor]:
    """ys[i] = conv2d(xs[i], weights[i]) for (O, C, 1, 1) weights: x (B, C, H, W) -> (B, O, H, W)."""
    return [F.conv2d(x, w) for x, w in zip(xs, weights)]


# --------------------------------------------------------------------------------------------------
# the fused op

def ops():
    """torch.ops.emodarts with the pointwise ops loaded (JIT-building the extension if needed)."""
    from emodarts.ops.compiled.cpp import load_ops

    return load_ops("emodarts::pointwise_fwd", "emodarts::pointwise_bwd", "csrc/pointwise.cpp",
                    lambda xs, ws: [x.new_empty(x.shape[0], w.shape[0], x.shape[2], x.shape[3]) for x, w in zip(xs, ws)],
                    lambda grads, xs, ws, need_x, need_w: (
                        only_wanted([torch.empty_like(x) for x in xs], need_x),
                        only_wanted([torch.empty_like(w) for w in ws], need_w)))


class _Pointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n: int, *tensors: Tensor):
        xs, ws = list(tensors[:n]), list(tensors[n:])
        ctx.save_for_backward(*tensors)
        ctx.n = n
        return tuple(ops().pointwise_fwd(xs, ws))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        saved = ctx.saved_tensors
        xs, ws = list(saved[: ctx.n]), list(saved[ctx.n:])
        gs = [torch.zeros(x.shape[0], w.shape[0], *x.shape[2:], dtype=x.dtype) if g is None else g.contiguous()
              for g, x, w in zip(grads, xs, ws)]
        need = wanted(ctx)  # xs then ws: an alpha step wants no weight's gradient
        if not any(need):
            return (None,) * (1 + len(saved))
        gxs, gws = ops().pointwise_bwd(gs, xs, ws, need[: ctx.n], need[ctx.n:])
        return (None, *spread(gxs, need[: ctx.n]), *spread(gws, need[ctx.n:]))


def einsum_pointwise(x: Tensor, w: Tensor) -> Tensor:
    """A bias-free 1x1 convolution as one batched GEMM over (B, C, H*W)."""
    b, c, h, wd = x.shape
    o = w.shape[0]
    return torch.einsum("oc,bcp->bop", w.reshape(o, c), x.reshape(b, c, h * wd)).view(b, o, h, wd)


def pointwise_convs_fused(xs: Sequence[Tensor], weights: Sequence[Tensor]) -> List[Tensor]:
    """Same contract as pointwise_convs_reference; on the CPU in float32 under autocast (emodarts/ops/cpu_amp.py)."""
    work = work_dtype([*xs, *weights]) if xs and all(t.device.type == "cpu" for t in (*xs, *weights)) else None
    if work is None or len({x.dtype for x in xs}) > 1:
        return [einsum_pointwise(x, w) for x, w in zip(xs, weights)]
    out = result_dtype(xs[0].dtype)
    with torch.autocast("cpu", enabled=False):
        ys = _Pointwise.apply(len(xs), *[x.to(work).contiguous() for x in xs],
                              *[w.to(work).contiguous() for w in weights])
    return [y.to(out) for y in ys]
