"""The search network: mixed CNN cells -> sequence hand-off -> mixed sequential cells -> head.

Every edge is a mixed operation; one node sums all its incoming edges' candidates in a single
`mixed_sum` call of the backend. `none` is never computed: it only holds softmax mass.
"""
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from emodarts.model.backbone import (
    FeatureNorm,
    Head,
    SequenceHandoff,
    cnn_cell_plan,
    stem,
)
from emodarts.model.cells.cnn import MixedCnnCell
from emodarts.model.cells.darts import MixedDartsCell
from emodarts.model.cells.seq import MixedSeqCell
from emodarts.model.config import ModelConfig
from emodarts.model.partial_channels import check_partial_channels, edge_weights
from emodarts.model.space import n_edges, seq_inputs
from emodarts.ops.backend import Backend, get_backend

ALPHA_NAMES = ("alpha_normal", "alpha_reduce", "alpha_seq")
BETA_NAMES = ("beta_normal", "beta_reduce")  # PC-DARTS edge normalisation, only with --partial-channels K > 1


class Supernet(nn.Module):
    """Holds the weights w (every candidate) and the architecture parameters alpha (three matrices)."""

    def __init__(self, cfg: ModelConfig, n_features: int, n_classes: int, backend: str = "reference"):
        super().__init__()
        check_partial_channels(cfg.partial_channels, cfg.cnn_channels)
        self.cfg = cfg
        self.set_backend(backend)
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
        """The kernels (reference or fused) and how the CNN cells run: grouped by source state with the fused
        kernels, which pay off only when a state's candidates are computed together; edge by edge otherwise."""
        self.backend: Backend = get_backend(name)
        self.grouped_cnn = name == "fused"

    def arch_parameters(self) -> List[nn.Parameter]:
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
            beta = getattr(self, f"beta_{kind}") if cell.partial_channels > 1 else None
            s0, s1 = s1, cell(s0, s1, getattr(self, f"alpha_{kind}"), self.backend, beta, self.grouped_cnn)
        return s0, s1

    def seq_part(self, s0: Tensor, s1: Tensor) -> Tensor:
        """The last two CNN maps -> logits (hand-off, sequential cells, head)."""
        q0, q1 = self.handoff(s0, s1)
        for cell in self.seq_cells:
            q0, q1 = q1, cell(q0, q1, self.alpha_seq, self.backend)
        return self.head(q1)

    def forward(self, x: Tensor) -> Tensor:
        return self.seq_part(*self.cnn_part(x))
