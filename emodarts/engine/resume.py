"""Continuing an interrupted run: optimisers, schedule and random state restored, logs cut back to the
checkpoint, so that a resumed run is the uninterrupted one."""
import json
import math
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn

from emodarts.engine.checkpoint import set_rng_state
from emodarts.engine.config import RunConfig
from emodarts.engine.legacy import load_run_checkpoint
from emodarts.runtime.distributed import info as dist_info
from emodarts.runtime.files import (
    atomic_write_text,
    read_jsonl,
    remove_stale_temps,
    torn_line_note,
)
from emodarts.runtime.progress import warn


def truncate_jsonl(path: Path, phase: str, before_epoch: int) -> None:
    """Drop records of `phase` from epoch `before_epoch` on (written after the checkpoint we resume from),
    and a last line cut off by the interruption (said on stderr: that epoch is run again)."""
    if not path.exists():
        return
    records, torn = read_jsonl(path, required=("epoch",))
    if torn:
        warn(torn_line_note(path))  # on stderr and in run.log
    keep = [r for r in records if r.get("phase", phase) != phase or r["epoch"] < before_epoch]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def open_for_resume(run_dir: Path) -> None:
    """Remove the temporary files of atomic writes that the interruption left behind (one writer per run
    folder: rank 0, which is here)."""
    if dist_info().is_main:
        remove_stale_temps(run_dir)


def resume_from(run_dir: Path, ckpt_path: Path, cfg: RunConfig, resume: bool, model: nn.Module,
                 optimizers: Dict[str, torch.optim.Optimizer], sched: torch.optim.lr_scheduler.CosineAnnealingLR,
                 epochs: int, best: dict) -> Tuple[int, dict]:
    """(first epoch to run, best so far): (0, `best`) for a fresh run; with `resume` and a checkpoint, the
    epoch after the checkpoint's and its best, with model, optimisers (by their key in the checkpoint),
    scheduler (stretched to `epochs`) and random state restored, so the run goes on as if never stopped."""
    if resume:
        open_for_resume(run_dir)
    if not (resume and ckpt_path.exists()):
        return 0, best
    state = load_run_checkpoint(ckpt_path, cfg)
    model.load_state_dict(state["model"])
    for key, opt in optimizers.items():
        opt.load_state_dict(state[key])
    sched.load_state_dict(state["sched"])
    stretch_cosine(sched, epochs)
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state["best"]


def truncate_logs(run_dir: Path, names: Tuple[str, ...], phase: str, start: int) -> None:
    """Cut the run's logs back to the checkpoint the run starts from (rank 0 writes them; see
    truncate_jsonl), so that a resumed run's logs hold every epoch once."""
    if dist_info().is_main:
        for name in names:
            truncate_jsonl(run_dir / name, phase, start)


def stretch_cosine(sched: torch.optim.lr_scheduler.CosineAnnealingLR, epochs: int) -> None:
    """A run resumed with another epoch count (--resume --epochs N) continues on the cosine schedule of an
    N-epoch run: T_max becomes N and the learning rate that of epoch `last_epoch` on that schedule (the
    restored scheduler would otherwise keep the old length and, past it, climb again)."""
    if sched.T_max == epochs:
        return
    sched.T_max = epochs
    e = sched.last_epoch
    lrs = [sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2 for base in sched.base_lrs]
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
