"""Alphas -> genotype: for each node keep the 2 strongest incoming edges (an edge's strength is the
weight of its best non-`none` candidate, times the edge's weight softmax(beta) under PC-DARTS'
--partial-channels K > 1, as PC-DARTS derives it), and on each edge that best candidate. A DARTS recurrent cell
keeps 1 edge per node (one predecessor and one activation), as the DARTS paper derives it."""
from typing import Optional, Sequence

import torch
from torch import Tensor

from emodarts.model.space import CellGenotype, Genotype, node_edges, seq_inputs


def _derive(probs: Tensor, primitives: Sequence[str], n_nodes: int, keep: int, n_inputs: int = 2,
            edge_weights: Optional[Tensor] = None):
    """(cell, [(alpha row, op) of every kept edge])."""
    active = [k for k, p in enumerate(primitives) if p != "none"]
    nodes, kept = [], []
    for i in range(n_nodes):
        edges = node_edges(i, n_inputs)
        n_in = edges.stop - edges.start
        best_w, best_k = probs[edges][:, active].max(dim=-1)
        if edge_weights is not None:
            best_w = best_w * edge_weights[edges]
        # ties broken by the lower state index, so the result is deterministic
        order = sorted(range(n_in), key=lambda j: (-float(best_w[j]), j))[:keep]
        node = tuple((primitives[active[int(best_k[j])]], j) for j in sorted(order))
        nodes.append(node)
        kept += [(edges.start + j, op) for op, j in node]
    return CellGenotype(tuple(nodes)), kept


def count_op(cell: CellGenotype, op: str) -> int:
    return sum(name == op for node in cell.nodes for name, _ in node)


def derive_cell(alpha: Tensor, primitives: Sequence[str], n_nodes: int, keep: int = 2,
                max_skip: Optional[int] = None, n_inputs: int = 2,
                edge_weights: Optional[Tensor] = None) -> CellGenotype:
    """With `max_skip` (P-DARTS' guard against collapse into parameter-free cells), while the cell keeps
    more skip connections than that, the kept skip edge with the lowest skip weight loses its skip
    candidate and the cell is derived again."""
    probs = torch.softmax(alpha.detach().float(), dim=-1)
    cell, kept = _derive(probs, primitives, n_nodes, keep, n_inputs, edge_weights)
    if max_skip is None or "skip_connect" not in primitives:
        return cell
    skip = list(primitives).index("skip_connect")
    while count_op(cell, "skip_connect") > max_skip:
        rows = [r for r, op in kept if op == "skip_connect" and float(probs[r, skip]) >= 0]
        if not rows:  # every kept skip edge has no other candidate: the cap cannot be met
            break
        probs[min(rows, key=lambda r: float(probs[r, skip])), skip] = -1.0
        cell, kept = _derive(probs, primitives, n_nodes, keep, n_inputs, edge_weights)
    return cell


def derive_genotype(model, meta=None, max_skip_normal: Optional[int] = None) -> Genotype:
    cfg = model.cfg
    darts = cfg.seq_space == "darts"
    return Genotype(
        normal=derive_cell(model.alpha_normal, cfg.cnn_primitives, cfg.cnn_nodes, max_skip=max_skip_normal,
                           edge_weights=model.edge_weights("normal")),
        reduce=derive_cell(model.alpha_reduce, cfg.cnn_primitives, cfg.cnn_nodes,
                           edge_weights=model.edge_weights("reduce")),
        seq=derive_cell(model.alpha_seq, cfg.seq_primitives, cfg.seq_nodes, keep=1 if darts else 2,
                        n_inputs=seq_inputs(cfg.seq_space)),
        meta=dict(meta or {}),
        seq_space=cfg.seq_space,
    )
