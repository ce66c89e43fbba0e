"""Search-space vocabulary (candidate names) and the genotype: dataclass <-> validated JSON.

A genotype lists, for every intermediate node of a cell, the incoming edges it keeps as
(operation, input state) pairs. States 0 and 1 are the cell's two inputs; node i is state i + 2.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from emodarts.runtime.errors import GenotypeError

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

# The DARTS recurrent cell (`--seq-space darts`): every edge mixes activations of one shared GEMM.
DARTS_SEQ_PRIMITIVES: Tuple[str, ...] = ("none", "tanh", "relu", "sigmoid", "identity")

SEQ_SPACES: Tuple[str, ...] = ("emodarts", "darts")

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


def n_edges(n_nodes: int, n_inputs: int = 2) -> int:
    """Number of mixed edges in a cell with `n_inputs` inputs and `n_nodes` intermediate nodes (node i reads
    the inputs and every earlier node). emoDARTS and CNN cells have two inputs; the DARTS recurrent cell has
    one (its initial state s0)."""
    return sum(n_inputs + i for i in range(n_nodes))


def active_candidates(primitives: Sequence[str]) -> List[Tuple[int, str]]:
    """(column, name) of every candidate that is computed: all but `none`, which only holds softmax mass."""
    return [(k, p) for k, p in enumerate(primitives) if p != "none"]


def node_edges(node: int, n_inputs: int = 2) -> slice:
    """The rows of node `node`'s incoming edges in a cell's alpha (and in its edge list): node i reads the
    cell's inputs and every earlier node, in state order."""
    start = n_edges(node, n_inputs)
    return slice(start, start + n_inputs + node)


def readers(source: int, n_nodes: int, n_inputs: int = 2) -> range:
    """The nodes that read state `source`: every node reads the inputs; node i's output (state n_inputs + i)
    is read by the nodes after it."""
    return range(max(0, source - n_inputs + 1), n_nodes)


def edge_stride(reduction: bool, source: int) -> int:
    """A reduction cell's edges from its two inputs halve the map (stride 2); every other edge keeps it."""
    return 2 if reduction and source < 2 else 1


def seq_inputs(seq_space: str) -> int:
    """States a sequential cell starts from: two cell inputs (emodarts) or the initial state s0 (darts)."""
    return 1 if seq_space == "darts" else 2


def seq_primitives_of(seq_space: str) -> Tuple[str, ...]:
    return DARTS_SEQ_PRIMITIVES if seq_space == "darts" else SEQ_PRIMITIVES


@dataclass(frozen=True)
class CellGenotype:
    """Kept edges of one cell: nodes[i] is a list of (op, input state) pairs. In a DARTS recurrent cell
    each node keeps one pair (activation, predecessor): state 0 is s0 and node i is state i + 1."""

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
    seq_space: str = "emodarts"

    def to_dict(self) -> dict:
        return {
            "format": GENOTYPE_FORMAT,
            "seq_space": self.seq_space,
            "normal": self.normal.to_json(),
            "reduce": self.reduce.to_json(),
            "seq": self.seq.to_json(),
            "meta": dict(self.meta),
        }

    def cell(self, kind: str) -> CellGenotype:
        return getattr(self, kind)


def _parse_cell(kind: str, raw: object, where: str, seq_space: str = "emodarts") -> CellGenotype:
    if not isinstance(raw, list) or not raw:
        raise GenotypeError(f"{where}: field '{kind}' must be a non-empty list of nodes")
    nodes = []
    darts = kind == "seq" and seq_space == "darts"
    allowed = CNN_PRIMITIVES if kind in ("normal", "reduce") else seq_primitives_of(seq_space)
    n_inputs = 1 if darts else 2
    for i, node in enumerate(raw):
        if not isinstance(node, list) or not node:
            raise GenotypeError(f"{where}: field '{kind}[{i}]' must be a non-empty list of [op, input] pairs")
        if darts and len(node) != 1:
            raise GenotypeError(
                f"{where}: field '{kind}[{i}]' has {len(node)} pairs; a DARTS recurrent node keeps exactly one "
                "[activation, predecessor] pair"
            )
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
            if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < i + n_inputs:
                raise GenotypeError(
                    f"{where}: field '{name}' has input state {src!r}; node {i} may read states "
                    f"0..{i + n_inputs - 1}"
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
    seq_space = data.get("seq_space", "emodarts")
    if seq_space not in SEQ_SPACES:
        raise GenotypeError(f"{where}: field 'seq_space' is {seq_space!r}; expected one of {', '.join(SEQ_SPACES)}")
    cells = {kind: _parse_cell(kind, data[kind], where, seq_space) for kind in CELL_KINDS}
    return Genotype(meta=meta, seq_space=seq_space, **cells)


def save_genotype(genotype: Genotype, path: Union[str, Path]) -> None:
    from emodarts.runtime.files import atomic_write_text

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
    if genotype.seq_space != cfg.seq_space:
        raise GenotypeError(
            f"{where}: field 'seq_space' is {genotype.seq_space!r}; this configuration searches the "
            f"{cfg.seq_space!r} sequential space (--seq-space {cfg.seq_space})"
        )
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
