"""Checkpoints: state dicts, optimisers, schedulers and RNG states, written atomically.

A checkpoint remembers the configuration it was made with; resuming it under another
configuration is an error, not a silent restart. Checkpoints and model.pt hold only tensors and plain
containers, and are read with torch.load(weights_only=True): no code in a run folder runs when it is loaded.
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
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # no numpy array: weights_only
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore rng_state()'s generators. A saved GPU state is restored on as many devices as both the
    checkpoint and this machine have (a warning names a difference in count); without CUDA it cannot be
    restored, which is a warning, not an error (a GPU run may be resumed on the CPU; its random masks then
    differ from those of an uninterrupted run)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)  # a tuple with an array in checkpoints of older versions
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
    state = read_state(path)
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path}: not an emodarts checkpoint (no 'config' entry)")
    diff = _config_diff(state["config"], config)
    if diff:
        raise CheckpointError(f"{path}: written under another configuration; differs in {', '.join(diff)}")
    return state


def _numpy_array_globals() -> list:
    """What unpickling a numpy array needs: checkpoints of older versions held numpy's generator state as one."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_state(path: Path) -> Any:
    """A checkpoint or model.pt, read with weights_only=True (tensors, plain containers and, for files of
    older versions, numpy arrays; never code). CheckpointError naming the file when it is damaged, foreign,
    or holds anything else."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file, or one that would run code when unpickled
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Unsupported global" in str(exc) or "weights_only" in str(exc):
            reason = "it holds objects other than tensors and plain containers, which are not loaded"
        raise CheckpointError(f"{path}: not a readable emodarts checkpoint ({reason})") from exc


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
