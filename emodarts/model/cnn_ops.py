"""The CNN candidate operations of standard DARTS (docs/method.md), for 2-D feature maps (B, C, F, T).

Spatial sizes may be odd: every stride-2 operation maps n to ceil(n / 2), so all candidates of a
reduction edge agree.
"""
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise conv, pointwise conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two DilConv blocks with dilation 1 (the first carries the stride)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class FactorizedReduce(nn.Module):
    """Stride-2 1x1 convs on two offset grids, concatenated: halves F and T (ceil) without losing pixels."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        # pad odd sizes so both grids give ceil(n / 2) positions
        x_relu = self.relu(x)
        x = F.pad(x_relu, (0, x_relu.shape[-1] % 2, 0, x_relu.shape[-2] % 2))
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:])], dim=1))


class PoolBN(nn.Sequential):
    def __init__(self, kind: str, c: int, stride: int, affine: bool):
        pool = (
            nn.MaxPool2d(3, stride, 1)
            if kind == "max"
            else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        )
        super().__init__(pool, nn.BatchNorm2d(c, affine=affine))


class Identity(nn.Module):
    """skip_connect at stride 1: returns its input itself (no copy)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


CNN_OPS: Dict[str, Callable[[int, int, bool], nn.Module]] = {
    "max_pool_3x3": lambda c, s, a: PoolBN("max", c, s, a),
    "avg_pool_3x3": lambda c, s, a: PoolBN("avg", c, s, a),
    "skip_connect": lambda c, s, a: Identity() if s == 1 else FactorizedReduce(c, c, a),
    "sep_conv_3x3": lambda c, s, a: SepConv(c, c, 3, s, 1, a),
    "sep_conv_5x5": lambda c, s, a: SepConv(c, c, 5, s, 2, a),
    "dil_conv_3x3": lambda c, s, a: DilConv(c, c, 3, s, 2, 2, a),
    "dil_conv_5x5": lambda c, s, a: DilConv(c, c, 5, s, 4, 2, a),
}


def make_cnn_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Build one CNN candidate; `none` is never built (it has no output to compute)."""
    if name not in CNN_OPS:
        raise ValueError(f"unknown CNN operation {name!r}; known: {', '.join(CNN_OPS)}")
    return CNN_OPS[name](channels, stride, affine)
