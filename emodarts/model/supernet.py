"""The search network: mixed CNN cells -> sequence hand-off -> mixed sequential cells -> head.

Every edge is a mixed operation; one node sums all its incoming edges' candidates in a single
`mixed_sum` call of the backend. `none` is never computed: it only holds softmax mass.
"""
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from emodarts.model.backbone import (
    FeatureNorm,
    Head,
    SequenceHandoff,
    cnn_cell_plan,
    cnn_preprocess,
    reduce_node_concat,
    stem,
)
from emodarts.model.cnn_grouped import grouped_cnn_nodes, preprocess
from emodarts.model.cnn_ops import make_cnn_op
from emodarts.model.config import ModelConfig
from emodarts.model.darts_cell import MixedDartsCell
from emodarts.model.dropout import BatchDropout
from emodarts.model.partial_channels import (
    bypass,
    channel_shuffle,
    check_partial_channels,
    edge_weights,
    split_channels,
)
from emodarts.model.seq_ops import AttentiveRecurrentOp, make_seq_op
from emodarts.model.space import n_edges, seq_inputs
from emodarts.ops.backend import Backend, get_backend

ALPHA_NAMES = ("alpha_normal", "alpha_reduce", "alpha_seq")
BETA_NAMES = ("beta_normal", "beta_reduce")  # PC-DARTS edge normalisation, only with --partial-channels K > 1


def _active(primitives: Sequence[str]) -> List[Tuple[int, str]]:
    return [(k, p) for k, p in enumerate(primitives) if p != "none"]


def _mixed_nodes(states: List[Tensor], edges: nn.ModuleList, active, alpha: Tensor, n_nodes: int,
                 mixed_sum: Callable) -> List[Tensor]:
    """Append n_nodes mixed nodes to `states`; node i reads every earlier state through its edges."""
    offset = 0
    for _ in range(n_nodes):
        n_in = len(states)
        ys, index = [], []
        for j, h in enumerate(states):
            ops = edges[offset + j]
            for k, name in active:
                ys.append(ops[name](h))
                index.append((j, k))
        states.append(mixed_sum(ys, alpha[offset : offset + n_in], index))
        offset += n_in
    return states[2:]


def _partial_channel_nodes(states: List[Tensor], edges: nn.ModuleList, active, alpha: Tensor, beta: Tensor,
                           n_nodes: int, k: int, reduction: bool, mixed_sum: Callable) -> List[Tensor]:
    """PC-DARTS nodes, edge by edge as the paper writes them (the reference twin of the grouped path):
    each edge mixes its candidates on the first C/K channels, concatenates the bypassed rest, shuffles, and
    the node sums its edges weighted by softmax(beta) over them."""
    weights = edge_weights(beta, n_nodes)
    offset = 0
    for _ in range(n_nodes):
        n_in, node = len(states), None
        for j, h in enumerate(states):
            part, rest = split_channels(h, k)
            ops = edges[offset + j]
            mixed = mixed_sum([ops[name](part) for _, name in active], alpha[offset + j : offset + j + 1],
                              [(0, kk) for kk, _ in active])
            stride = 2 if reduction and j < 2 else 1
            edge = channel_shuffle(torch.cat([mixed, bypass(rest, stride)], dim=1), k)
            term = weights[offset + j].to(edge.dtype) * edge
            node = term if node is None else node + term
        states.append(node)
        offset += n_in
    return states[2:]


class MixedCnnCell(nn.Module):
    def __init__(self, cfg: ModelConfig, plan):
        super().__init__()
        self.reduction = plan.reduction
        self.n_nodes = cfg.cnn_nodes
        self.k = cfg.partial_channels
        self.active = _active(cfg.cnn_primitives)
        self.pre = cnn_preprocess(plan, affine=False)
        self.edges = nn.ModuleList()
        for i in range(cfg.cnn_nodes):
            for j in range(2 + i):
                stride = 2 if plan.reduction and j < 2 else 1
                self.edges.append(
                    nn.ModuleDict({name: make_cnn_op(name, plan.c // self.k, stride, affine=False)
                                   for _, name in self.active})
                )
        self.dropout = BatchDropout(cfg.dropout)

    def forward(self, s0: Tensor, s1: Tensor, alpha: Tensor, backend: Backend, beta: Optional[Tensor] = None) -> Tensor:
        states = preprocess(self.pre, s0, s1, backend) if backend.group_cnn else [self.pre[0](s0), self.pre[1](s1)]
        if backend.group_cnn:
            nodes = grouped_cnn_nodes(states, self.edges, self.active, alpha, self.n_nodes, self.reduction,
                                      backend, self.k, beta)
        elif self.k > 1:
            nodes = _partial_channel_nodes(states, self.edges, self.active, alpha, beta, self.n_nodes, self.k,
                                           self.reduction, backend.mixed_sum)
        else:
            nodes = _mixed_nodes(states, self.edges, self.active, alpha, self.n_nodes, backend.mixed_sum)
        return self.dropout(torch.cat(nodes, dim=1))


def _grouped_seq_nodes(cell: "MixedSeqCell", s0: Tensor, s1: Tensor, alpha: Tensor, backend: Backend) -> List[Tensor]:
    """The sequential cell's mixed nodes, with every recurrent candidate on every edge leaving one state run
    in one grouped call (design.md); nodes are summed in the same order as `_mixed_nodes`."""
    n = cell.n_nodes
    first_edge = [n_edges(i) for i in range(n)]  # index of node i's first incoming edge
    pending: List[list] = [[] for _ in range(n)]  # node i -> [(source j, candidate k, y)]

    def run_source(j: int, h: Tensor) -> None:
        calls, rnns = [], []
        for i in range(max(0, j - 1), n):  # node i reads states 0 .. i + 1
            ops = cell.edges[first_edge[i] + j]
            for k, name in cell.active:
                op = ops[name]
                rnn = getattr(op, "rnn", None)
                calls.append((i, k, op, len(rnns) if rnn is not None else None))
                if rnn is not None:
                    rnns.append(rnn)
        outs = backend.grouped_recurrent(h, rnns) if rnns else []
        for i, k, op, r in calls:
            y = op(h) if r is None else (op.attend(outs[r]) if isinstance(op, AttentiveRecurrentOp) else outs[r])
            pending[i].append((j, k, y))

    states = [s0, s1]
    run_source(0, s0)
    run_source(1, s1)
    for i in range(n):
        entries = sorted(pending[i], key=lambda e: (e[0], e[1]))
        node = backend.mixed_sum([e[2] for e in entries], alpha[first_edge[i] : first_edge[i] + 2 + i],
                                 [(e[0], e[1]) for e in entries])
        states.append(node)
        if i + 1 < n:
            run_source(2 + i, node)
    return states[2:]


class MixedSeqCell(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_nodes = cfg.seq_nodes
        self.active = _active(cfg.seq_primitives)
        self.edges = nn.ModuleList(
            nn.ModuleDict({name: make_seq_op(name, cfg.hidden) for _, name in self.active})
            for _ in range(n_edges(cfg.seq_nodes))
        )
        self.dropout = BatchDropout(cfg.dropout)

    def forward(self, s0: Tensor, s1: Tensor, alpha: Tensor, backend: Backend) -> Tensor:
        nodes = _grouped_seq_nodes(self, s0, s1, alpha, backend)
        return self.dropout(reduce_node_concat(nodes))


class Supernet(nn.Module):
    """Holds the weights w (every candidate) and the architecture parameters alpha (three matrices)."""

    def __init__(self, cfg: ModelConfig, n_features: int, n_classes: int, backend: str = "reference"):
        super().__init__()
        check_partial_channels(cfg.partial_channels, cfg.cnn_channels)
        self.cfg = cfg
        self.backend: Backend = get_backend(backend)
        self.norm = FeatureNorm(n_features)
        self.stem = stem(cfg, affine=False)
        plan = cnn_cell_plan(cfg)
        self.cnn_cells = nn.ModuleList(MixedCnnCell(cfg, p) for p in plan)
        last = plan[-1]
        self.handoff = SequenceHandoff(last.c_p, cfg.cnn_nodes * last.c, cfg.hidden)
        seq_cell = MixedDartsCell if cfg.seq_space == "darts" else MixedSeqCell
        self.seq_cells = nn.ModuleList(seq_cell(cfg) for _ in range(cfg.seq_cells))
        self.head = Head(cfg.hidden, n_classes, cfg.dropout)
        n_cnn, n_seq = len(cfg.cnn_primitives), len(cfg.seq_primitives)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(n_edges(cfg.cnn_nodes), n_cnn))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(n_edges(cfg.cnn_nodes), n_cnn))
        self.alpha_seq = nn.Parameter(1e-3 * torch.randn(n_edges(cfg.seq_nodes, seq_inputs(cfg.seq_space)), n_seq))
        # drawn after the alphas, and only for K > 1, so that K = 1 draws exactly what plain DARTS draws
        self.arch_names = ALPHA_NAMES + (BETA_NAMES if cfg.partial_channels > 1 else ())
        if cfg.partial_channels > 1:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(n_edges(cfg.cnn_nodes)))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(n_edges(cfg.cnn_nodes)))

    def set_backend(self, name: str) -> None:
        self.backend = get_backend(name)

    def alphas(self) -> List[nn.Parameter]:
        """Every architecture parameter: the three alphas, and the PC-DARTS betas when K > 1."""
        return [getattr(self, n) for n in self.arch_names]

    def named_weights(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if n not in self.arch_names)

    def weights(self) -> List[nn.Parameter]:
        return [p for _, p in self.named_weights()]

    def edge_weights(self, kind: str) -> Optional[Tensor]:
        """softmax(beta) over each node's incoming edges of the `normal` or `reduce` cell (None when K = 1)."""
        if self.cfg.partial_channels == 1:
            return None
        return edge_weights(getattr(self, f"beta_{kind}").detach(), self.cfg.cnn_nodes)

    def alpha_probs(self) -> Dict[str, Tensor]:
        """The candidates' softmax weights per edge, and with K > 1 the edges' weights per node (betas)."""
        probs = {n: torch.softmax(getattr(self, n).detach(), dim=-1) for n in ALPHA_NAMES}
        for n in self.arch_names[len(ALPHA_NAMES):]:
            probs[n] = self.edge_weights(n[len("beta_"):])
        return probs

    def cnn_part(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Features -> the last two CNN cells' maps."""
        s0 = s1 = self.stem(self.norm(x))
        for cell in self.cnn_cells:
            kind = "reduce" if cell.reduction else "normal"
            beta = getattr(self, f"beta_{kind}") if cell.k > 1 else None
            s0, s1 = s1, cell(s0, s1, getattr(self, f"alpha_{kind}"), self.backend, beta)
        return s0, s1

    def seq_part(self, s0: Tensor, s1: Tensor) -> Tensor:
        """The last two CNN maps -> logits (hand-off, sequential cells, head)."""
        q0, q1 = self.handoff(s0, s1)
        for cell in self.seq_cells:
            q0, q1 = q1, cell(q0, q1, self.alpha_seq, self.backend)
        return self.head(q1)

    def forward(self, x: Tensor) -> Tensor:
        return self.seq_part(*self.cnn_part(x))
