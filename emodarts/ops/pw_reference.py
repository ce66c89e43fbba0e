"""The reference twin of emodarts.ops.pw_fused.pointwise_convs: each bias-free 1x1 convolution as one
ATen convolution."""
from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor


def pointwise_convs(xs: Sequence[Tensor], weights: Sequence[Tensor]) -> List[Tensor]:
    """ys[i] = conv2d(xs[i], weights[i]) for (O, C, 1, 1) weights: x (B, C, H, W) -> (B, O, H, W)."""
    return [F.conv2d(x, w) for x, w in zip(xs, weights)]
