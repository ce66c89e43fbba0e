"""Checkpoints: state dicts, optimisers, schedulers and RNG states, written atomically.

A checkpoint remembers the configuration it was made with; resuming it under another
configuration is an error, not a silent restart.
"""
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from .errors import CheckpointError
from .io import atomic_write


def rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, config: Dict[str, Any]) -> Dict[str, Any]:
    """Load and check that the checkpoint was written under `config` (ignoring the epoch counts)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable emodarts checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path}: not an emodarts checkpoint (no 'config' entry)")
    diff = _config_diff(state["config"], config)
    if diff:
        raise CheckpointError(f"{path}: written under another configuration; differs in {', '.join(diff)}")
    return state


_RESUMABLE = {"epochs", "device", "backend", "amp", "channels_last"}


def _config_diff(a: Any, b: Any, prefix: str = "") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in _RESUMABLE:
                continue
            out += _config_diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return [] if norm(a) == norm(b) else [prefix.rstrip(".")]
