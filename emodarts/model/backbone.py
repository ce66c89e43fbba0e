"""Pieces shared by the supernet and the derived network: input normalisation, the stem, the
channel plan of the CNN cells, the sequence hand-off and the classifier head.
"""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emodarts.model.cnn_ops import FactorizedReduce, ReLUConvBN
from emodarts.model.config import ModelConfig
from emodarts.model.dropout import BatchDropout


class FeatureNorm(nn.Module):
    """Standardise each feature row (e.g. each MFCC) with statistics of the training split."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-5))

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, F, T)
        return (x - self.mean[:, None]) / self.std[:, None]


def stem(cfg: ModelConfig, affine: bool) -> nn.Module:
    c = cfg.stem_multiplier * cfg.cnn_channels
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, affine=affine))


@dataclass(frozen=True)
class CellPlan:
    c_pp: int
    c_p: int
    c: int
    reduction: bool
    reduction_prev: bool


def cnn_cell_plan(cfg: ModelConfig) -> List[CellPlan]:
    """Channels of each CNN cell; cells at layers//3 and 2*layers//3 reduce (stride 2, channels x2)."""
    c_pp = c_p = cfg.stem_multiplier * cfg.cnn_channels
    c = cfg.cnn_channels
    plan, reduction_prev = [], False
    reductions = {cfg.cnn_layers // 3, 2 * cfg.cnn_layers // 3}
    for i in range(cfg.cnn_layers):
        reduction = i in reductions
        if reduction:
            c *= 2
        plan.append(CellPlan(c_pp, c_p, c, reduction, reduction_prev))
        c_pp, c_p, reduction_prev = c_p, cfg.cnn_nodes * c, reduction
    return plan


def cnn_preprocess(p: CellPlan, affine: bool) -> nn.ModuleList:
    """Bring the two cell inputs to C channels (and to the same size after a reduction)."""
    pre0 = FactorizedReduce(p.c_pp, p.c, affine) if p.reduction_prev else ReLUConvBN(p.c_pp, p.c, 1, 1, 0, affine)
    return nn.ModuleList([pre0, ReLUConvBN(p.c_p, p.c, 1, 1, 0, affine)])


class SequenceHandoff(nn.Module):
    """CNN maps of the last two cells -> two sequences (B, T, H): mean over frequency, then a linear map.

    When the two maps differ in time length (the last cell reduced), the longer one is average-pooled
    to the shorter, so both sequential inputs share the time axis.
    """

    def __init__(self, c_pp: int, c_p: int, hidden: int):
        super().__init__()
        self.proj0 = nn.Linear(c_pp, hidden)
        self.proj1 = nn.Linear(c_p, hidden)

    def forward(self, s0: Tensor, s1: Tensor):
        q0, q1 = s0.mean(dim=2), s1.mean(dim=2)  # (B, C, T)
        if q0.shape[-1] != q1.shape[-1]:
            q0 = F.adaptive_avg_pool1d(q0, q1.shape[-1])
        return self.proj0(q0.transpose(1, 2)), self.proj1(q1.transpose(1, 2))


def reduce_node_concat(nodes: List[Tensor]) -> Tensor:
    """Concatenate the node outputs (B, T, n*H) and average groups of n consecutive features -> (B, T, H)."""
    cat = torch.cat(nodes, dim=-1)
    n = len(nodes)
    return cat.view(*cat.shape[:-1], cat.shape[-1] // n, n).mean(dim=-1)


class Head(nn.Module):
    """Mean over time, dropout, linear to the classes."""

    def __init__(self, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.dropout = BatchDropout(dropout)
        self.linear = nn.Linear(hidden, n_classes)

    def forward(self, seq: Tensor) -> Tensor:
        return self.linear(self.dropout(seq.mean(dim=1)))
