"""The reference twin of emodarts.ops.grids_fused.offset_grids: the two grids FactorizedReduce's stride-2 1x1
convolutions read, as ATen views."""
from typing import Tuple

import torch.nn.functional as F
from torch import Tensor


def offset_grids(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(even rows and columns of x, odd rows and columns of x zero-padded to even sizes): both
    (B, C, ceil(H/2), ceil(W/2)), what FactorizedReduce's conv1 and conv2 see."""
    xp = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    return xp[:, :, ::2, ::2], xp[:, :, 1::2, 1::2]
