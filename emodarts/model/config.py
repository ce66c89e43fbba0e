"""The model's configuration: the shape of the supernet and of the network derived from it."""
from dataclasses import dataclass
from typing import Tuple

from emodarts.model.space import CNN_PRIMITIVES, SEQ_SUBSETS


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the supernet and of the network derived from it."""

    cnn_layers: int = 4
    cnn_channels: int = 8
    cnn_nodes: int = 4
    stem_multiplier: int = 3
    seq_cells: int = 4
    seq_nodes: int = 4
    hidden: int = 128
    cnn_primitives: Tuple[str, ...] = CNN_PRIMITIVES
    seq_primitives: Tuple[str, ...] = SEQ_SUBSETS["all"]
    dropout: float = 0.3
    seq_space: str = "emodarts"  # "darts": the DARTS recurrent cell (seq_nodes steps, one predecessor each)
    partial_channels: int = 1  # PC-DARTS K: 1/K of each CNN edge's channels go through the candidates, with
