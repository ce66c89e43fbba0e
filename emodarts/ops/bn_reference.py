"""The reference twin of emodarts.ops.bn_fused.batch_norms: every BatchNorm2d module on its own input,
one ATen call each."""
from typing import List, Sequence

from torch import Tensor, nn


def batch_norms(xs: Sequence[Tensor], groups: Sequence[Sequence[nn.Module]]) -> List[List[Tensor]]:
    """For each x, the outputs of its group of batch-norm modules, each module run on x."""
    return [[bn(x) for bn in group] for x, group in zip(xs, groups)]
