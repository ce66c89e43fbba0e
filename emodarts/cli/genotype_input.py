"""A genotype given to `train` or `cv --genotype`: read (a missing or malformed file names itself), its shape
filled into the options, and the configuration fitted to it."""
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from emodarts.engine.config import RunConfig
from emodarts.model.space import CNN_PRIMITIVES, seq_primitives_of
from emodarts.runtime.errors import EmodartsError


def read_genotype(path: Path):
    """The genotype in `path`; a missing or malformed file is an error naming it."""
    from emodarts.model.space import load_genotype

    if not Path(path).exists():
        raise EmodartsError(f"{path}: genotype file not found")
    return load_genotype(path)


def genotype_shape(genotype, options: Mapping[str, Any]) -> Dict[str, Any]:
    """`options` for training `genotype`: the CNN and sequential node counts and the sequential space it
    determines fill in what the user did not give (what they gave is checked by fit_genotype)."""
    shape = {"cnn_nodes": options.get("cnn_nodes") or len(genotype.normal.nodes),
             "seq_nodes": options.get("seq_nodes") or len(genotype.seq.nodes),
             "seq_space": options.get("seq_space") or genotype.seq_space}
    explicit = options.get("_explicit")
    return {**options, **shape, **({"_explicit": set(explicit) | set(shape)} if explicit is not None else {})}


def fit_genotype(cfg: RunConfig, genotype, path: Path, seq_candidates: Optional[str] = None) -> RunConfig:
    """`cfg` for training `genotype`: its candidate lists admit every operation of the genotype's space
    (a derived network needs none, and a preset's narrower list would refuse a genotype searched with
    more), unless --seq-candidates chose one. A genotype that does not fit is refused, naming the file."""
    from emodarts.model.space import check_genotype_fits

    model = replace(cfg.model, cnn_primitives=CNN_PRIMITIVES)
    if not seq_candidates:
        model = replace(model, seq_primitives=seq_primitives_of(model.seq_space))
    check_genotype_fits(genotype, model, where=str(path))
    return replace(cfg, model=model)


__all__ = ["read_genotype", "genotype_shape", "fit_genotype"]
