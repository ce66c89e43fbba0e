"""The factorized reduce's two sampling grids: `offset_grids_reference` (ATen views) and `offset_grids_fused`
(one pass).

The reference twin of emodarts.ops.offset_grids.offset_grids_fused: the two grids FactorizedReduce's stride-2 1x1
convolutions read, as ATen views.

The factorized reduce's two sampling grids in one pass (csrc/offset_grids.cpp): the `--fused` twin of
emodarts.ops.offset_grids_reference. Its backward writes grad_x once, where ATen's slices fill and
scatter into two full-size zero tensors. CPU tensors only; elsewhere the reference's views.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------------------------------
# the reference twin

def offset_grids_reference(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(even rows and columns of x, odd rows and columns of x zero-padded to even sizes): both
    (B, C, ceil(H/2), ceil(W/2)), what FactorizedReduce's conv1 and conv2 see."""
    xp = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    return xp[:, :, ::2, ::2], xp[:, :, 1::2, 1::2]


# --------------------------------------------------------------------------------------------------
# the fused op

def ops():
    """torch.ops.emodarts with the offset-grid ops loaded (JIT-building the extension if needed)."""
    from emodarts.ops.compiled.cpp import load_ops

    def fwd_fake(x):
        shape = (x.shape[0], x.shape[1], (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2)
        return x.new_empty(shape), x.new_empty(shape)

    return load_ops("emodarts::offset_grids_fwd", "emodarts::offset_grids_bwd", "csrc/offset_grids.cpp", fwd_fake,
                    lambda g_even, g_odd, h, w: g_even.new_empty(g_even.shape[0], g_even.shape[1], h, w))


class _OffsetGrids(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor):
        ctx.hw = x.shape[2], x.shape[3]
        return tuple(ops().offset_grids_fwd(x))

    @staticmethod
    def backward(ctx, g_even: Tensor, g_odd: Tensor):
        if g_even is None and g_odd is None:
            return None
        like = g_even if g_even is not None else g_odd
        g_even = torch.zeros_like(like) if g_even is None else g_even
        g_odd = torch.zeros_like(like) if g_odd is None else g_odd
        return ops().offset_grids_bwd(g_even, g_odd, *ctx.hw)


def offset_grids_fused(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Same contract as offset_grids_reference; the grids are contiguous."""
    if x.device.type != "cpu" or x.dim() != 4:
        return offset_grids_reference(x)
    even, odd = _OffsetGrids.apply(x.contiguous())
    return even, odd
