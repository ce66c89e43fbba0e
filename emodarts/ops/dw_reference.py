"""Depthwise convolutions of several candidates, one ATen call each: the reference twin of
emodarts.ops.dw_fused.multi_depthwise."""
from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor


def multi_depthwise(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int],
                    stride: int) -> List[Tensor]:
    """[depthwise conv of xs[i] (or of xs[0], shared) with weights[i] (C, 1, k, k), dilation dilations[i],
    padding dilation * (k - 1) / 2, `stride`] for every candidate i."""
    shared = len(xs) == 1
    return [F.conv2d(xs[0 if shared else i], w, None, stride, d * (w.shape[-1] - 1) // 2, d, w.shape[0])
            for i, (w, d) in enumerate(zip(weights, dilations))]
