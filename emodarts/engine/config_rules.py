"""What each configuration value may be: one rule per field (a range, or a set of choices), checked on every
configuration a run starts from, whether its values came from a preset, a config file, options or --set."""
from dataclasses import asdict
from typing import Any, Callable, Dict, Optional, Tuple

from emodarts.data.labels import LABELS_HELP, labels_problem
from emodarts.engine.config import CLASS_WEIGHTS
from emodarts.features.config import FEATURE_KINDS
from emodarts.model.space import CNN_PRIMITIVES, DARTS_SEQ_PRIMITIVES, SEQ_SPACES, SEQ_SUBSETS

Rule = Tuple[Callable[[Any], bool], str]  # (holds for the value, what the field accepts)


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low), f"a number >= {low:g}"


def _positive() -> Rule:
    return (lambda v: v > 0), "a number > 0"


def _fraction() -> Rule:
    return (lambda v: 0.0 <= v < 1.0), "a number in [0, 1)"


def _one_of(choices) -> Rule:
    return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


def _optional(rule: Rule) -> Rule:
    return (lambda v: v is None or rule[0](v)), rule[1] + " or null"


COUNT = _at_least(1)
SEQ_CANDIDATES = tuple(dict.fromkeys(SEQ_SUBSETS["all"] + DARTS_SEQ_PRIMITIVES))  # of either sequential space
RULES: Dict[str, Rule] = {
    "fold": _at_least(0),
    "min_duration": _optional(_at_least(0)),
    "features": _one_of(FEATURE_KINDS),
    "labels": ((lambda v: labels_problem(v) is None), LABELS_HELP),
    "backend": _one_of(("reference", "fused")),
    "amp": _one_of(("none", "bf16")),
    "model.cnn_layers": COUNT, "model.cnn_channels": COUNT, "model.cnn_nodes": COUNT,
    "model.stem_multiplier": COUNT, "model.seq_cells": COUNT, "model.seq_nodes": COUNT, "model.hidden": COUNT,
    "model.partial_channels": COUNT,
    "model.dropout": _fraction(),
    "model.seq_space": _one_of(SEQ_SPACES),
    "model.cnn_primitives": ((lambda v: len(v) > 0 and set(v) <= set(CNN_PRIMITIVES)),
                             "a non-empty list of " + ", ".join(CNN_PRIMITIVES)),
    "model.seq_primitives": ((lambda v: len(v) > 0 and set(v) <= set(SEQ_CANDIDATES)),
                             "a non-empty list of " + ", ".join(SEQ_CANDIDATES)),
    "search.epochs": COUNT, "search.batch_size": COUNT,
    "search.w_lr": _positive(), "search.w_lr_min": _at_least(0), "search.w_momentum": _fraction(),
    "search.w_weight_decay": _at_least(0), "search.grad_clip": _positive(),
    "search.alpha_lr": _positive(), "search.alpha_weight_decay": _at_least(0),
    "search.alpha_betas": ((lambda v: all(0.0 <= b < 1.0 for b in v)), "two numbers in [0, 1)"),
    "search.alpha_split": ((lambda v: 0.0 < v < 1.0), "a number strictly between 0 and 1"),
    "search.max_skip_normal": _optional(_at_least(0)),
    "search.skip_patience": _at_least(0),
    "search.class_weights": _one_of(CLASS_WEIGHTS), "train.class_weights": _one_of(CLASS_WEIGHTS),
    "train.epochs": COUNT, "train.batch_size": COUNT,
    "train.lr": _positive(), "train.lr_min": _at_least(0), "train.momentum": _fraction(),
    "train.weight_decay": _at_least(0), "train.grad_clip": _positive(), "train.drop_path": _fraction(),
    "train.aux_weight": _at_least(0),
}


def flatten(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"search": {"w_lr": 0.1}} -> {"search.w_lr": 0.1}."""
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def value_problem(cfg) -> Optional[Tuple[str, str]]:
    """(dotted field, "field 'x' is v; expected ...") for the first value of `cfg` (a RunConfig) that its rule
    refuses, or None."""
    values = flatten(asdict(cfg))
    for key, (holds, accepts) in RULES.items():
        value = values[key]
        if not holds(value):
            shown = list(value) if isinstance(value, tuple) else value
            return key, f"field '{key}' is {shown!r}; expected {accepts}"
    return None


__all__ = ["RULES", "flatten", "value_problem"]
