"""The bilevel DARTS search loop: alpha and weight steps per epoch, the genotype per epoch, the best kept,
a checkpoint per epoch."""
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from emodarts.engine.architect import Architect
from emodarts.engine.checkpoint import rng_state, save_checkpoint, seed_everything
from emodarts.engine.config import RunConfig
from emodarts.engine.evaluation import evaluate_split
from emodarts.engine.losses import loss_class_weights, sharded_cross_entropy, summed_over_ranks, weight_step
from emodarts.engine.optim import weight_sgd
from emodarts.engine.resume import resume_from, truncate_logs
from emodarts.engine.run_data import RunData, batches, epoch_generator, feature_stats
from emodarts.model.derive import count_op, derive_genotype
from emodarts.model.space import Genotype, genotype_from_dict, save_genotype
from emodarts.model.supernet import Supernet
from emodarts.runtime.distributed import check_replicas, for_data_parallel
from emodarts.runtime.distributed import info as dist_info
from emodarts.engine.board import Board
from emodarts.runtime.files import append_jsonl
from emodarts.runtime.precision import autocast, prepare_input, prepare_model
from emodarts.runtime.progress import progress_bar, say

SEARCH_CHECKPOINT = "checkpoint.pt"


SEARCH_LOGS = ("genotypes.jsonl", "alphas.jsonl", "metrics.jsonl")


@dataclass
class _Search:
    """The supernet and what trains it: weight optimiser and its schedule, alpha optimiser, architect."""

    model: Supernet
    w_opt: torch.optim.SGD
    sched: torch.optim.lr_scheduler.CosineAnnealingLR
    a_opt: torch.optim.Adam
    architect: Architect
    class_weights: Optional[torch.Tensor] = None  # of the cross entropy (--class-weights), on the device

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """The optimisers under their keys in the search checkpoint."""
        return {"w_opt": self.w_opt, "a_opt": self.a_opt}


def _build_search(cfg: RunConfig, data: RunData) -> _Search:
    """The supernet, normalised by the search data's feature statistics, on cfg.device, with DARTS's
    optimisers: SGD on a cosine schedule for the weights, Adam for the alphas."""
    sc = cfg.search
    model = Supernet(cfg.model, data.n_features, len(data.classes), backend=cfg.backend)
    for_data_parallel(model)
    mean, std = feature_stats(torch.cat([data.search_w.x, data.search_a.x]))
    model.norm.set_stats(mean, std)
    prepare_model(model, cfg.device, cfg.channels_last)
    w_opt = weight_sgd(model.weights(), sc.w_lr, sc.w_momentum, sc.w_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, sc.epochs, eta_min=sc.w_lr_min)
    a_opt = torch.optim.Adam(model.arch_parameters(), sc.alpha_lr, betas=tuple(sc.alpha_betas), weight_decay=sc.alpha_weight_decay)
    weights = loss_class_weights(sc.class_weights, torch.cat([data.search_w.y, data.search_a.y]),
                                 len(data.classes))
    weights = weights.to(cfg.device) if weights is not None else None
    architect = Architect(model, w_opt, a_opt, second_order=sc.second_order, loss_fn=sharded_cross_entropy(weights))
    return _Search(model, w_opt, sched, a_opt, architect, weights)


def _search_epoch(cfg: RunConfig, search: _Search, data: RunData, epoch: int,
                  progress: bool) -> Tuple[float, float, int]:
    """One epoch of bilevel steps (an alpha step, then a weight step), cycling the shorter of the two
    search parts; returns the mean weight-step and alpha-step losses and the number of steps."""
    sc, device = cfg.search, cfg.device
    search.model.train()
    gen = epoch_generator(cfg.seed, epoch, 1)
    w_batches = list(batches(data.search_w, sc.batch_size, gen))
    a_batches = list(batches(data.search_a, sc.batch_size, gen))
    n_steps = max(len(w_batches), len(a_batches))
    train_loss, alpha_loss_sum = 0.0, 0.0
    steps = progress_bar(range(n_steps), progress, desc=f"epoch {epoch + 1}", leave=False)
    for step in steps:
        xw, yw = w_batches[step % len(w_batches)]
        xa, ya = a_batches[step % len(a_batches)]
        xw, xa = (prepare_input(t, device, cfg.channels_last) for t in (xw, xa))
        yw, ya = yw.to(device), ya.to(device)
        with autocast(device, cfg.amp):
            alpha_loss_sum += summed_over_ranks(search.architect.step(xw, yw, xa, ya))
            train_loss += weight_step(search.model, search.w_opt, xw, yw, sc.grad_clip, search.class_weights)
    return train_loss / n_steps, alpha_loss_sum / n_steps, n_steps


def _count_skip_streak(model: Supernet, cap: Optional[int], best: dict) -> int:
    """The normal cell's skip connections as derived without the cap; best["over_cap_epochs"] counts the
    epochs in a row above the cap (kept in the checkpoint, so a resumed run continues the streak)."""
    raw_skips = count_op(derive_genotype(model).normal, "skip_connect")
    over_cap = cap is not None and raw_skips > cap
    best["over_cap_epochs"] = best.get("over_cap_epochs", 0) + 1 if over_cap else 0
    return raw_skips


def _skip_patience_spent(cfg: RunConfig, best: dict) -> bool:
    """Whether the search should stop because the skip connections stayed over the cap for
    cfg.search.skip_patience epochs (the sign of DARTS's collapse); says so when it does."""
    sc = cfg.search
    if not (sc.skip_patience and best["over_cap_epochs"] >= sc.skip_patience):
        return False
    say(f"search stopped early: the normal cell kept more than {sc.max_skip_normal} skip connections "
        f"for {best['over_cap_epochs']} epochs in a row")
    return True


def _log_search_epoch(run_dir: Path, record: dict, genotype: Genotype, model: Supernet) -> None:
    """Append the epoch to metrics.jsonl, genotypes.jsonl and alphas.jsonl (rank 0 only)."""
    if not dist_info().is_main:
        return
    epoch = record["epoch"]
    append_jsonl(run_dir / "metrics.jsonl", record)
    append_jsonl(run_dir / "genotypes.jsonl", {"epoch": epoch, "genotype": genotype.to_dict()})
    append_jsonl(run_dir / "alphas.jsonl", {"epoch": epoch, **{k: v.tolist() for k, v in model.alpha_probs().items()}})


def _keep_if_best(best: dict, alpha_loss: float, epoch: int, genotype: Genotype, run_dir: Path) -> None:
    """The search's choice: the genotype of the epoch with the lowest alpha-split loss, in `best` and
    (rank 0) in genotype.json."""
    if alpha_loss < best["alpha_loss"]:
        best.update(alpha_loss=alpha_loss, epoch=epoch, genotype=genotype.to_dict())
        if dist_info().is_main:
            save_genotype(genotype, run_dir / "genotype.json")


def _save_search_checkpoint(path: Path, cfg: RunConfig, epoch: int, search: _Search, best: dict) -> None:
    """Everything an exact resume after `epoch` needs (rank 0 writes it)."""
    if dist_info().is_main:
        save_checkpoint(path, {
            "config": cfg.to_dict(), "epoch": epoch, "model": search.model.state_dict(),
            "w_opt": search.w_opt.state_dict(), "a_opt": search.a_opt.state_dict(),
            "sched": search.sched.state_dict(), "rng": rng_state(), "best": best,
        })


def run_search(cfg: RunConfig, data: RunData, run_dir: Path, resume: bool = False, progress: bool = True,
               stop_after: Optional[int] = None, tensorboard: bool = True) -> Genotype:
    """Bilevel DARTS search. Writes genotypes.jsonl, alphas.jsonl, metrics.jsonl, genotype.json (best by
    alpha-split loss), checkpoint.pt (each epoch) and, with `tensorboard`, RUN_DIR/tensorboard (board.py).
    Returns the best genotype."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sc = cfg.search
    seed_everything(cfg.seed)
    search = _build_search(cfg, data)
    ckpt_path = run_dir / SEARCH_CHECKPOINT
    start, best = resume_from(run_dir, ckpt_path, cfg, resume, search.model, search.optimizers(), search.sched,
                               sc.epochs, {"alpha_loss": float("inf"), "epoch": -1, "genotype": None})
    truncate_logs(run_dir, SEARCH_LOGS, "search", start)
    board = Board(run_dir, "search", tensorboard, start)
    candidates = {"normal": cfg.model.cnn_primitives, "reduce": cfg.model.cnn_primitives,
                  "seq": cfg.model.seq_primitives}
    try:
        return _search_loop(cfg, data, run_dir, search, start, best, progress, stop_after, board, candidates)
    finally:
        board.close()


def _search_loop(cfg: RunConfig, data: RunData, run_dir: Path, search: _Search, start: int, best: dict,
                 progress: bool, stop_after: Optional[int], board: Board, candidates: dict) -> Genotype:
    """The search's epochs from `start` (see run_search)."""
    sc = cfg.search
    ckpt_path = run_dir / SEARCH_CHECKPOINT
    for epoch in progress_bar(range(start, sc.epochs), progress, desc="search", initial=start, total=sc.epochs):
        t0 = time.time()
        train_loss, alpha_step_loss, n_steps = _search_epoch(cfg, search, data, epoch, progress)
        search.sched.step()
        check_replicas(list(search.model.named_parameters()))
        val = evaluate_split(search.model, data.search_a, len(data.classes), cfg.device, cfg.amp, cfg.channels_last)
        genotype = derive_genotype(search.model, meta={"epoch": epoch}, max_skip_normal=sc.max_skip_normal)
        raw_skips = _count_skip_streak(search.model, sc.max_skip_normal, best)
        elapsed = time.time() - t0
        record = {
            "phase": "search", "epoch": epoch, "train_loss": train_loss, "alpha_step_loss": alpha_step_loss,
            "alpha_loss": val["loss"], "alpha_ua": val["ua"], "lr": search.sched.get_last_lr()[0],
            "seconds": elapsed, "step_seconds": elapsed / n_steps, "normal_skips": raw_skips,
        }
        _log_search_epoch(run_dir, record, genotype, search.model)
        board.epoch(record, search.model.alpha_probs(), candidates)
        _keep_if_best(best, val["loss"], epoch, genotype, run_dir)
        _save_search_checkpoint(ckpt_path, cfg, epoch, search, best)
        say(f"search epoch {epoch + 1}/{sc.epochs}: train loss {train_loss:.3f}  "
            f"alpha-split loss {val['loss']:.3f} UA {val['ua']:.3f}  ({record['seconds']:.1f} s)")
        if _skip_patience_spent(cfg, best) or (stop_after is not None and epoch + 1 >= stop_after):
            break
    return genotype_from_dict(best["genotype"], where=str(ckpt_path))
