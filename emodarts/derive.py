"""Alphas -> genotype: for each node keep the 2 strongest incoming edges (an edge's strength is the
weight of its best non-`none` candidate), and on each edge that best candidate."""
from typing import Sequence

import torch
from torch import Tensor

from .space import CellGenotype, Genotype


def derive_cell(alpha: Tensor, primitives: Sequence[str], n_nodes: int, keep: int = 2) -> CellGenotype:
    probs = torch.softmax(alpha.detach().float(), dim=-1)
    active = [k for k, p in enumerate(primitives) if p != "none"]
    nodes, offset = [], 0
    for i in range(n_nodes):
        n_in = 2 + i
        rows = probs[offset : offset + n_in][:, active]
        best_w, best_k = rows.max(dim=-1)
        # ties broken by the lower state index, so the result is deterministic
        order = sorted(range(n_in), key=lambda j: (-float(best_w[j]), j))[:keep]
        nodes.append(tuple((primitives[active[int(best_k[j])]], j) for j in sorted(order)))
        offset += n_in
    return CellGenotype(tuple(nodes))


def derive_genotype(model, meta=None) -> Genotype:
    cfg = model.cfg
    return Genotype(
        normal=derive_cell(model.alpha_normal, cfg.cnn_primitives, cfg.cnn_nodes),
        reduce=derive_cell(model.alpha_reduce, cfg.cnn_primitives, cfg.cnn_nodes),
        seq=derive_cell(model.alpha_seq, cfg.seq_primitives, cfg.seq_nodes),
        meta=dict(meta or {}),
    )
