"""The network derived from a genotype, trained from scratch (batch norm affine, drop-path on CNN ops)."""
import torch
from torch import Tensor, nn

from .backbone import FeatureNorm, Head, SequenceHandoff, cnn_cell_plan, cnn_preprocess, reduce_node_concat, stem
from .config import ModelConfig
from .distributed import BatchDropout
from .darts_cell import FixedDartsCell
from .ops.cnn import Identity, drop_path, make_cnn_op
from .ops.recurrent import make_seq_op
from .space import CellGenotype, Genotype, check_genotype_fits


class FixedCnnCell(nn.Module):
    def __init__(self, cell: CellGenotype, plan):
        super().__init__()
        self.reduction = plan.reduction
        self.pre = cnn_preprocess(plan, affine=True)
        self.sources = [[src for _, src in node] for node in cell.nodes]
        self.ops = nn.ModuleList(
            nn.ModuleList(make_cnn_op(op, plan.c, 2 if plan.reduction and src < 2 else 1, affine=True)
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


class FixedSeqCell(nn.Module):
    def __init__(self, cell: CellGenotype, hidden: int, dropout: float):
        super().__init__()
        self.sources = [[src for _, src in node] for node in cell.nodes]
        self.ops = nn.ModuleList(nn.ModuleList(make_seq_op(op, hidden) for op, _ in node) for node in cell.nodes)
        self.dropout = BatchDropout(dropout)

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [s0, s1]
        for sources, ops in zip(self.sources, self.ops):
            states.append(sum(op(states[src]) for src, op in zip(sources, ops)))
        return self.dropout(reduce_node_concat(states[2:]))


class DerivedNetwork(nn.Module):
    def __init__(self, cfg: ModelConfig, genotype: Genotype, n_features: int, n_classes: int):
        super().__init__()
        check_genotype_fits(genotype, cfg)
        self.cfg = cfg
        self.norm = FeatureNorm(n_features)
        self.stem = stem(cfg, affine=True)
        plan = cnn_cell_plan(cfg)
        self.cnn_cells = nn.ModuleList(
            FixedCnnCell(genotype.reduce if p.reduction else genotype.normal, p) for p in plan
        )
        self.cell_dropout = BatchDropout(cfg.dropout)
        last = plan[-1]
        self.handoff = SequenceHandoff(last.c_p, cfg.cnn_nodes * last.c, cfg.hidden)
        seq_cell = FixedDartsCell if cfg.seq_space == "darts" else FixedSeqCell
        self.seq_cells = nn.ModuleList(seq_cell(genotype.seq, cfg.hidden, cfg.dropout) for _ in range(cfg.seq_cells))
        self.head = Head(cfg.hidden, n_classes, cfg.dropout)

    def set_drop_path(self, prob: float) -> None:
        for cell in self.cnn_cells:
            cell.drop_path_prob = prob

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(self.norm(x))
        for cell in self.cnn_cells:
            s0, s1 = s1, self.cell_dropout(cell(s0, s1))
        q0, q1 = self.handoff(s0, s1)
        for cell in self.seq_cells:
            q0, q1 = q1, cell(q0, q1)
        return self.head(q1)
