"""Every older form of a run's configuration, read in one place: config.json and checkpoints written by
earlier versions (`search.weight_fraction`, no `train.aux_weight`, no `fold`), and cv fold folders without
a config.json of their own."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from emodarts.engine.checkpoint import load_checkpoint
from emodarts.runtime.errors import CheckpointError, EmodartsError

if TYPE_CHECKING:
    from emodarts.engine.config import RunConfig


def upgrade_config_dict(data: Any) -> Any:
    """A configuration dict of an older version in today's form (a copy; anything else is returned as it is):
    `search.weight_fraction` (the share that trained w) becomes `search.alpha_split` (the share that trains
    alpha). Fields that did not exist yet (train.aux_weight, fold) take their defaults, which are what those
    runs did (no auxiliary head, fold 0)."""
    if not isinstance(data, dict) or not isinstance(data.get("search"), dict) or "weight_fraction" not in data["search"]:
        return data
    fraction = data["search"]["weight_fraction"]
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        return data  # left for config_problem to name
    search = {k: v for k, v in data["search"].items() if k != "weight_fraction"}
    search.setdefault("alpha_split", round(1.0 - float(fraction), 12))
    return {**data, "search": search}


def legacy_class_order(classes: List[str]) -> List[str]:
    """The label order of runs made before config.json recorded the classes: angry, happy, neutral, sad
    (those present), then the other classes sorted. A resumed or evaluated old run keeps it."""
    four = ("angry", "happy", "neutral", "sad")
    return [c for c in four if c in classes] + sorted(set(classes) - set(four))


def run_config_dicts(cfg: RunConfig) -> List[dict]:
    """cfg.to_dict(), then the forms in which older versions wrote the same run's configuration into its
    checkpoints: `search.weight_fraction` (1 - alpha_split) instead of `search.alpha_split`, no
    `train.aux_weight` (there was no auxiliary head) and no `fold` (a `cv` fold's checkpoints held the cv
    run's configuration, whose protocol may be "" for the corpus's default one)."""
    d = cfg.to_dict()
    out = [d]
    if cfg.train.aux_weight == 0:
        old = copy.deepcopy(d)
        old.pop("fold")
        old["train"].pop("aux_weight")
        old["search"]["weight_fraction"] = round(1.0 - old["search"].pop("alpha_split"), 12)
        out.append(old)
        if old["protocol"]:
            out.append({**old, "protocol": ""})
    return out


def load_run_checkpoint(path: Path, cfg: RunConfig) -> Dict[str, object]:
    """load_checkpoint for a checkpoint written under `cfg`, by this version or an older one (see
    run_config_dicts); the error is the one against today's form."""
    forms = run_config_dicts(cfg)
    try:
        return load_checkpoint(path, forms[0])
    except CheckpointError as exc:
        error = exc
    if Path(path).exists():
        for form in forms[1:]:
            try:
                return load_checkpoint(path, form)
            except CheckpointError:
                continue
    raise error


def legacy_fold_config(run_dir: Path) -> Optional[RunConfig]:
    """For a fold folder written by `cv` of an older version (fold.json, but no config.json of its own):
    the cv run's configuration (../config.json) with the protocol of ../cv.json and the fold of fold.json.
    None for any other folder."""
    from emodarts.engine.config import load_config
    from emodarts.engine.cv import CV_STATE, fold_config

    run_dir = Path(run_dir)
    parent = run_dir.parent
    if (run_dir / "config.json").exists() or not (run_dir / "fold.json").is_file():
        return None
    if not (parent / "config.json").is_file() or not (parent / CV_STATE).is_file():
        return None
    try:
        k = int(json.loads((run_dir / "fold.json").read_text())["fold"])
        protocol = str(json.loads((parent / CV_STATE).read_text())["protocol"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmodartsError(f"{run_dir}: a cv fold folder whose fold.json or ../{CV_STATE} is unreadable ({exc})") from exc
    return fold_config(load_config(parent / "config.json"), protocol, k)
