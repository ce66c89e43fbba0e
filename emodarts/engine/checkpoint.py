"""Checkpoints: state dicts, optimisers, schedulers and RNG states, written atomically.

A checkpoint remembers the configuration it was made with; resuming it under another
configuration is an error, not a silent restart.
"""
import random
import warnings
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from emodarts.runtime.errors import CheckpointError
from emodarts.runtime.files import atomic_write


def rng_state() -> Dict[str, Any]:
    """The CPU, numpy and Python generators' states, and every GPU's ('cuda', one state per device) when CUDA
    is initialised in this process (a GPU run's dropout and drop-path masks come from those)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore rng_state()'s generators. A saved GPU state is restored on as many devices as both the
    checkpoint and this machine have (a warning names a difference in count); without CUDA it cannot be
    restored, which is a warning, not an error (a GPU run may be resumed on the CPU; its random masks then
    differ from those of an uninterrupted run)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None:
        return
    if not torch.cuda.is_available():
        warnings.warn("the checkpoint holds the CUDA random state of a GPU run, but no CUDA device is visible: "
                      "it is not restored (the random masks after the resume differ from an uninterrupted run's)",
                      RuntimeWarning, stacklevel=2)
        return
    n = torch.cuda.device_count()
    if len(cuda) != n:
        warnings.warn(f"the checkpoint holds the CUDA random state of {len(cuda)} device(s), this machine has {n}: "
                      f"restored on the first {min(n, len(cuda))}", RuntimeWarning, stacklevel=2)
    for i, s in enumerate(cuda[:n]):
        torch.cuda.set_rng_state(s, device=i)


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
