"""Search-space vocabulary (candidate names) and the genotype: dataclass <-> validated JSON.

A genotype lists, for every intermediate node of a cell, the incoming edges it keeps as
(operation, input state) pairs. States 0 and 1 are the cell's two inputs; node i is state i + 2.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

from .errors import GenotypeError

CNN_PRIMITIVES: Tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

RECURRENT_PRIMITIVES: Tuple[str, ...] = (
    "lstm_1", "lstm_2", "lstm_3", "lstm_4",
    "rnn_1", "rnn_2", "rnn_3", "rnn_4",
    "lstm_att_1", "lstm_att_2", "rnn_att_1", "rnn_att_2",
)  # fmt: skip

SEQ_PRIMITIVES: Tuple[str, ...] = ("none", "skip_connect") + RECURRENT_PRIMITIVES

SEQ_SUBSETS: Dict[str, Tuple[str, ...]] = {
    "all": SEQ_PRIMITIVES,
    "lstm": ("none", "skip_connect", "lstm_1", "lstm_2", "lstm_3", "lstm_4"),
    "rnn": ("none", "skip_connect", "rnn_1", "rnn_2", "rnn_3", "rnn_4"),
    "lstm_att": ("none", "skip_connect", "lstm_att_1", "lstm_att_2"),
    "rnn_att": ("none", "skip_connect", "rnn_att_1", "rnn_att_2"),
}

GENOTYPE_FORMAT = "emodarts-genotype/1"
CELL_KINDS = ("normal", "reduce", "seq")

Edge = Tuple[str, int]


def n_edges(n_nodes: int) -> int:
    """Number of mixed edges in a cell with two inputs and `n_nodes` intermediate nodes."""
    return sum(2 + i for i in range(n_nodes))


@dataclass(frozen=True)
class CellGenotype:
    """Kept edges of one cell: nodes[i] is a list of (op, input state) pairs."""

    nodes: Tuple[Tuple[Edge, ...], ...]

    @property
    def concat(self) -> List[int]:
        return list(range(2, 2 + len(self.nodes)))

    def to_json(self) -> list:
        return [[[op, int(src)] for op, src in node] for node in self.nodes]


@dataclass(frozen=True)
class Genotype:
    normal: CellGenotype
    reduce: CellGenotype
    seq: CellGenotype
    meta: Dict[str, object] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {
            "format": GENOTYPE_FORMAT,
            "normal": self.normal.to_json(),
            "reduce": self.reduce.to_json(),
            "seq": self.seq.to_json(),
            "meta": dict(self.meta),
        }

    def cell(self, kind: str) -> CellGenotype:
        return getattr(self, kind)


def _allowed(kind: str) -> Tuple[str, ...]:
    return CNN_PRIMITIVES if kind in ("normal", "reduce") else SEQ_PRIMITIVES


def _parse_cell(kind: str, raw: object, where: str) -> CellGenotype:
    if not isinstance(raw, list) or not raw:
        raise GenotypeError(f"{where}: field '{kind}' must be a non-empty list of nodes")
    nodes = []
    allowed = _allowed(kind)
    for i, node in enumerate(raw):
        if not isinstance(node, list) or not node:
            raise GenotypeError(f"{where}: field '{kind}[{i}]' must be a non-empty list of [op, input] pairs")
        edges = []
        for j, edge in enumerate(node):
            name = f"{kind}[{i}][{j}]"
            if not (isinstance(edge, (list, tuple)) and len(edge) == 2):
                raise GenotypeError(f"{where}: field '{name}' must be a pair [op, input_state]")
            op, src = edge
            if not isinstance(op, str) or op not in allowed or op == "none":
                raise GenotypeError(
                    f"{where}: field '{name}' has operation {op!r}; expected one of "
                    f"{', '.join(p for p in allowed if p != 'none')}"
                )
            if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < i + 2:
                raise GenotypeError(
                    f"{where}: field '{name}' has input state {src!r}; node {i} may read states 0..{i + 1}"
                )
            edges.append((op, src))
        nodes.append(tuple(edges))
    return CellGenotype(tuple(nodes))


def genotype_from_dict(data: object, where: str = "genotype") -> Genotype:
    """Validate and build a Genotype; errors name the offending field."""
    if not isinstance(data, dict):
        raise GenotypeError(f"{where}: expected a JSON object with fields {', '.join(CELL_KINDS)}")
    fmt = data.get("format", GENOTYPE_FORMAT)
    if fmt != GENOTYPE_FORMAT:
        raise GenotypeError(f"{where}: field 'format' is {fmt!r}; expected {GENOTYPE_FORMAT!r}")
    for kind in CELL_KINDS:
        if kind not in data:
            raise GenotypeError(f"{where}: missing field '{kind}'")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise GenotypeError(f"{where}: field 'meta' must be an object")
    cells = {kind: _parse_cell(kind, data[kind], where) for kind in CELL_KINDS}
    return Genotype(meta=meta, **cells)


def save_genotype(genotype: Genotype, path: Union[str, Path]) -> None:
    from .io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(genotype.to_dict(), indent=2) + "\n")


def load_genotype(path: Union[str, Path]) -> Genotype:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GenotypeError(f"{path}: cannot read genotype file ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    return genotype_from_dict(data, where=str(path))


def check_genotype_fits(genotype: Genotype, cfg, where: str = "genotype") -> None:
    """Reject a genotype whose node counts or operations do not match the model configuration `cfg`."""
    for kind in CELL_KINDS:
        seq = kind == "seq"
        allowed = cfg.seq_primitives if seq else cfg.cnn_primitives
        want = cfg.seq_nodes if seq else cfg.cnn_nodes
        nodes = genotype.cell(kind).nodes
        if len(nodes) != want:
            raise GenotypeError(
                f"{where}: field '{kind}' has {len(nodes)} nodes; this configuration has "
                f"{want} ({'seq_nodes' if seq else 'cnn_nodes'})"
            )
        for i, node in enumerate(nodes):
            for j, (op, _) in enumerate(node):
                if op not in allowed:
                    raise GenotypeError(
                        f"{where}: field '{kind}[{i}][{j}]' uses {op!r}, which is not a candidate of this "
                        f"configuration ({', '.join(allowed)})"
                    )
