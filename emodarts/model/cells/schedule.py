"""The one node scheduler of the mixed cells that run grouped by source state (design: every candidate on every
edge leaving one state runs in one call)."""
from typing import Callable, Dict, List, Sequence, Tuple

from torch import Tensor

from emodarts.model.space import readers

Entry = Tuple[int, int, Tensor]  # (source state, candidate index, output)


def nodes_by_source(inputs: Sequence[Tensor], n_nodes: int,
                    run_source: Callable[[int, Tensor, range], Dict[int, List[Entry]]],
                    make_node: Callable[[int, List[Entry]], Tensor]) -> List[Tensor]:
    """A mixed cell's nodes. run_source(j, h, nodes) computes every candidate of every edge from state j to
    the `nodes` that read it and returns {node: its entries}; once node i has heard from all its sources,
    make_node(i, entries in (source, candidate) order, the order of the per-edge reference) computes it, and
    it becomes a source in turn."""
    pending: List[List[Entry]] = [[] for _ in range(n_nodes)]

    def visit(j: int, h: Tensor) -> None:
        for i, entries in run_source(j, h, readers(j, n_nodes, len(inputs))).items():
            pending[i].extend(entries)

    for j, h in enumerate(inputs):
        visit(j, h)
    nodes: List[Tensor] = []
    for i in range(n_nodes):
        nodes.append(make_node(i, sorted(pending[i], key=lambda e: (e[0], e[1]))))
        if i + 1 < n_nodes:
            visit(len(inputs) + i, nodes[-1])
    return nodes
