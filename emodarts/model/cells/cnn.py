"""The CNN cells: the supernet's mixed cell (every edge a mixed operation) and the derived network's fixed cell.

The mixed cell runs one of two ways, the model's choice (Supernet.grouped_cnn): per edge, candidate by candidate
(the reference twin below), or grouped by source state (cnn_grouped.py), where everything that depends only on
a state is computed once. Both sum a node's inputs in the same order (source state, then candidate).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from emodarts.model.backbone import cnn_preprocess
from emodarts.model.cells.cnn_grouped import grouped_cnn_nodes, preprocess
from emodarts.model.cnn_ops import Identity, make_cnn_op
from emodarts.model.config import ModelConfig
from emodarts.model.dropout import BatchDropout, drop_path
from emodarts.model.partial_channels import (
    bypass,
    channel_shuffle,
    edge_weights,
    split_channels,
)
from emodarts.model.space import (
    CellGenotype,
    active_candidates,
    edge_stride,
    node_edges,
)
from emodarts.ops.backend import Backend


def _mixed_nodes(states: List[Tensor], edges: nn.ModuleList, active: Sequence[Tuple[int, str]], alpha: Tensor,
                 n_nodes: int, mixed_sum: Callable) -> List[Tensor]:
    """Append n_nodes mixed nodes to `states`, edge by edge; node i reads every earlier state through its edges."""
    for i in range(n_nodes):
        rows = node_edges(i)
        ys, index = [], []
        for j, h in enumerate(states[: rows.stop - rows.start]):
            ops = edges[rows.start + j]
            for cand, name in active:
                ys.append(ops[name](h))
                index.append((j, cand))
        states.append(mixed_sum(ys, alpha[rows], index))
    return states[2:]


def _partial_channel_nodes(states: List[Tensor], edges: nn.ModuleList, active: Sequence[Tuple[int, str]],
                           alpha: Tensor, beta: Tensor, n_nodes: int, partial_channels: int, reduction: bool,
                           mixed_sum: Callable) -> List[Tensor]:
    """PC-DARTS nodes, edge by edge as the paper writes them (the reference twin of the grouped path):
    each edge mixes its candidates on the first C/K channels, concatenates the bypassed rest, shuffles, and
    the node sums its edges weighted by softmax(beta) over them."""
    weights = edge_weights(beta, n_nodes)
    for i in range(n_nodes):
        rows, node = node_edges(i), None
        for j, h in enumerate(states[: rows.stop - rows.start]):
            part, rest = split_channels(h, partial_channels)
            e = rows.start + j
            ops = edges[e]
            mixed = mixed_sum([ops[name](part) for _, name in active], alpha[e : e + 1],
                              [(0, cand) for cand, _ in active])
            edge = channel_shuffle(torch.cat([mixed, bypass(rest, edge_stride(reduction, j))], dim=1),
                                   partial_channels)
            term = weights[e].to(edge.dtype) * edge
            node = term if node is None else node + term
        states.append(node)
    return states[2:]


class MixedCnnCell(nn.Module):
    def __init__(self, cfg: ModelConfig, plan):
        super().__init__()
        self.reduction = plan.reduction
        self.n_nodes = cfg.cnn_nodes
        self.partial_channels = cfg.partial_channels
        self.active = active_candidates(cfg.cnn_primitives)
        self.pre = cnn_preprocess(plan, affine=False)
        self.edges = nn.ModuleList()
        width = plan.c // self.partial_channels  # the channels that go through the candidates
        for i in range(cfg.cnn_nodes):
            edges = node_edges(i)
            for j in range(edges.stop - edges.start):
                stride = edge_stride(plan.reduction, j)
                self.edges.append(nn.ModuleDict({name: make_cnn_op(name, width, stride, affine=False)
                                                 for _, name in self.active}))
        self.dropout = BatchDropout(cfg.dropout)

    def forward(self, s0: Tensor, s1: Tensor, alpha: Tensor, backend: Backend, beta: Optional[Tensor] = None,
                grouped: bool = False) -> Tensor:
        if grouped:
            states = preprocess(self.pre, s0, s1, backend)
            nodes = grouped_cnn_nodes(states, self.edges, self.active, alpha, self.n_nodes, self.reduction,
                                      backend, self.partial_channels, beta)
        elif self.partial_channels > 1:
            nodes = _partial_channel_nodes([self.pre[0](s0), self.pre[1](s1)], self.edges, self.active, alpha,
                                           beta, self.n_nodes, self.partial_channels, self.reduction,
                                           backend.mixed_sum)
        else:
            nodes = _mixed_nodes([self.pre[0](s0), self.pre[1](s1)], self.edges, self.active, alpha, self.n_nodes,
                                 backend.mixed_sum)
        return self.dropout(torch.cat(nodes, dim=1))


class FixedCnnCell(nn.Module):
    def __init__(self, cell: CellGenotype, plan):
        super().__init__()
        self.reduction = plan.reduction
        self.pre = cnn_preprocess(plan, affine=True)
        self.sources = [[src for _, src in node] for node in cell.nodes]
        self.ops = nn.ModuleList(
            nn.ModuleList(make_cnn_op(op, plan.c, edge_stride(plan.reduction, src), affine=True)
                          for op, src in node)
            for node in cell.nodes
        )
        self.drop_path_prob = 0.0

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.pre[0](s0), self.pre[1](s1)]
        for sources, ops in zip(self.sources, self.ops):
            out = 0
            for src, op in zip(sources, ops):
                h = op(states[src])
                if not isinstance(op, Identity):
                    h = drop_path(h, self.drop_path_prob, self.training)
                out = out + h
            states.append(out)
        return torch.cat(states[2:], dim=1)
