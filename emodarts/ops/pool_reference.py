"""The two 3x3 pools of the CNN search space on one input, in plain PyTorch: the reference twin of
emodarts.ops.pool_fused.pool3x3_pair."""
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor


def pool3x3_pair(x: Tensor, stride: int) -> Tuple[Tensor, Tensor]:
    """(max pool, average pool) with a 3x3 window, padding 1 and `stride`; the average counts only the
    in-bounds elements (count_include_pad=False), as the search space's avg_pool_3x3."""
    return F.max_pool2d(x, 3, stride, 1), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
