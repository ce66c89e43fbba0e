"""The emoDARTS sequential cells: the supernet's mixed cell, whose recurrent candidates on every edge leaving one
state run in one grouped call of the backend, and the derived network's fixed cell."""
from typing import Dict, List

from torch import Tensor, nn

from emodarts.model.backbone import reduce_node_concat
from emodarts.model.cells.schedule import Entry, nodes_by_source
from emodarts.model.config import ModelConfig
from emodarts.model.dropout import BatchDropout
from emodarts.model.seq_ops import AttentiveRecurrentOp, make_seq_op
from emodarts.model.space import CellGenotype, active_candidates, n_edges, node_edges
from emodarts.ops.backend import Backend


def _grouped_seq_nodes(cell: "MixedSeqCell", s0: Tensor, s1: Tensor, alpha: Tensor, backend: Backend) -> List[Tensor]:
    """The cell's mixed nodes, with every recurrent candidate on every edge leaving one state run in one grouped
    call (schedule.nodes_by_source)."""

    def run_source(j: int, h: Tensor, nodes: range) -> Dict[int, List[Entry]]:
        calls, rnns = [], []
        for i in nodes:
            ops = cell.edges[node_edges(i).start + j]
            for cand, name in cell.active:
                op = ops[name]
                rnn = getattr(op, "rnn", None)
                calls.append((i, cand, op, len(rnns) if rnn is not None else None))
                if rnn is not None:
                    rnns.append(rnn)
        outs = backend.grouped_recurrent(h, rnns) if rnns else []
        found: Dict[int, List[Entry]] = {i: [] for i in nodes}
        for i, cand, op, r in calls:
            y = op(h) if r is None else (op.attend(outs[r]) if isinstance(op, AttentiveRecurrentOp) else outs[r])
            found[i].append((j, cand, y))
        return found

    def make_node(i: int, entries: List[Entry]) -> Tensor:
        return backend.mixed_sum([e[2] for e in entries], alpha[node_edges(i)], [(e[0], e[1]) for e in entries])

    return nodes_by_source([s0, s1], cell.n_nodes, run_source, make_node)


class MixedSeqCell(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_nodes = cfg.seq_nodes
        self.active = active_candidates(cfg.seq_primitives)
        self.edges = nn.ModuleList(
            nn.ModuleDict({name: make_seq_op(name, cfg.hidden) for _, name in self.active})
            for _ in range(n_edges(cfg.seq_nodes))
        )
        self.dropout = BatchDropout(cfg.dropout)

    def forward(self, s0: Tensor, s1: Tensor, alpha: Tensor, backend: Backend) -> Tensor:
        nodes = _grouped_seq_nodes(self, s0, s1, alpha, backend)
        return self.dropout(reduce_node_concat(nodes))


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
