"""TensorBoard logs of a run (RUN_DIR/tensorboard/search and /train, two TensorBoard runs; `tensorboard --logdir
runs/`): every number of an epoch's
metrics.jsonl record under `<phase>/<name>` (losses, UA/WA, learning rate, epoch and step time), the
softmax of every edge's alphas (a scalar per candidate, and a heatmap image per cell kind and epoch) and,
with partial channels, the betas. Written by rank 0; off with `--no-tensorboard`, or where the tensorboard
package is missing (said once)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
from torch import Tensor

from emodarts.runtime.distributed import info
from emodarts.runtime.progress import say

FOLDER = "tensorboard"
SKIPPED = ("phase", "epoch")  # the record's keys that are no measurement


def heatmap(probs: np.ndarray, cell: int = 12) -> np.ndarray:
    """An edges x candidates grid of probabilities as a (3, H, W) uint8 image: dark blue (0) to yellow (1),
    each value a `cell` x `cell` square."""
    v = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    low, high = np.array([0.15, 0.1, 0.4]), np.array([1.0, 0.9, 0.1])
    rgb = (low[:, None, None] + (high - low)[:, None, None] * v[None]) * 255
    return np.repeat(np.repeat(rgb, cell, axis=1), cell, axis=2).astype(np.uint8)


class Board:
    """The run's TensorBoard writer, or a no-op."""

    def __init__(self, run_dir: Path, phase: str, enabled: bool = True, start: int = 0):
        self.writer = None
        if not (enabled and info().is_main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            say("tensorboard logs: off (the tensorboard package is not installed; --no-tensorboard hides this)")
            return
        # a resumed run drops what the interrupted one logged after its checkpoint (purge_step)
        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER / phase), purge_step=start if start else None)

    def epoch(self, record: dict, arch: Optional[Dict[str, Tensor]] = None,
              candidates: Optional[Dict[str, tuple]] = None) -> None:
        """One epoch: the record's numbers and, for the search, the architecture weights (`arch`: name ->
        edges x candidates probabilities, or nodes' edge weights for betas; `candidates`: cell kind -> the
        candidates' names)."""
        if self.writer is None:
            return
        step, phase = int(record["epoch"]), record["phase"]
        for key, value in record.items():
            if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{phase}/{key}", value, step)
        for name, probs in (arch or {}).items():
            p = probs.detach().float().cpu().numpy()
            if name.startswith("beta_"):
                for j, w in enumerate(p.reshape(-1)):
                    self.writer.add_scalar(f"betas/{name[5:]}/edge_{j}", float(w), step)
                continue
            kind = name.removeprefix("alpha_")
            names = (candidates or {}).get(kind) or [str(k) for k in range(p.shape[-1])]
            for j, row in enumerate(p):
                for cand, w in zip(names, row):
                    self.writer.add_scalar(f"alphas/{kind}/edge_{j}/{cand}", float(w), step)
            self.writer.add_image(f"alphas/{kind}", heatmap(p), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = ["Board", "FOLDER", "heatmap"]
