"""The final training of a genotype's network from scratch; the epoch is chosen on the dev speakers."""
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from emodarts.engine.checkpoint import rng_state, save_checkpoint, seed_everything
from emodarts.engine.config import RunConfig
from emodarts.engine.evaluation import evaluate_split
from emodarts.engine.losses import loss_class_weights, weight_step
from emodarts.engine.optim import weight_sgd
from emodarts.engine.resume import resume_from, truncate_logs
from emodarts.engine.run_data import RunData, batches, epoch_generator, feature_stats
from emodarts.model.network import DerivedNetwork
from emodarts.model.space import Genotype
from emodarts.runtime.distributed import check_replicas, for_data_parallel
from emodarts.runtime.distributed import info as dist_info
from emodarts.engine.board import Board
from emodarts.runtime.files import append_jsonl
from emodarts.runtime.precision import autocast, prepare_input, prepare_model
from emodarts.runtime.progress import progress_bar, say


def build_final_network(cfg: RunConfig, genotype: Genotype, data: RunData) -> DerivedNetwork:
    """The network of `genotype`, with DARTS's auxiliary head when cfg.train.aux_weight > 0."""
    net = DerivedNetwork(cfg.model, genotype, data.n_features, len(data.classes), auxiliary=cfg.train.aux_weight > 0)
    net.norm.set_stats(*feature_stats(data.train.x))
    return net


def run_train(cfg: RunConfig, genotype: Genotype, data: RunData, run_dir: Path, resume: bool = False,
              progress: bool = True, stop_after: Optional[int] = None, tensorboard: bool = True) -> Dict[str, object]:
    """Train the derived network; keep the epoch with the best dev UA in model.pt (and, with `tensorboard`,
    the epochs in RUN_DIR/tensorboard). Returns its dev metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tc, device = cfg.train, cfg.device
    seed_everything(cfg.seed + 1)
    net = build_final_network(cfg, genotype, data)
    for_data_parallel(net)
    net = prepare_model(net, device, cfg.channels_last)
    opt = weight_sgd(net.parameters(), tc.lr, tc.momentum, tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tc.epochs, eta_min=tc.lr_min)
    weights = loss_class_weights(tc.class_weights, data.train.y, len(data.classes))
    weights = weights.to(device) if weights is not None else None
    ckpt_path = run_dir / "train_checkpoint.pt"
    start, best = resume_from(run_dir, ckpt_path, cfg, resume, net, {"opt": opt}, sched, tc.epochs,
                               {"ua": -1.0, "epoch": -1})
    truncate_logs(run_dir, ("metrics.jsonl",), "train", start)
    board = Board(run_dir, "train", tensorboard, start)
    try:
        return _train_loop(cfg, genotype, data, run_dir, net, opt, sched, weights, start, best, progress,
                           stop_after, board)
    finally:
        board.close()


def _train_loop(cfg: RunConfig, genotype: Genotype, data: RunData, run_dir: Path, net, opt, sched, weights,
                start: int, best: dict, progress: bool, stop_after: Optional[int], board: Board) -> dict:
    """The final training's epochs from `start` (see run_train)."""
    tc, device = cfg.train, cfg.device
    ckpt_path = run_dir / "train_checkpoint.pt"

    epochs = progress_bar(range(start, tc.epochs), progress, desc="train", initial=start, total=tc.epochs)
    for epoch in epochs:
        t0 = time.time()
        net.train()
        net.set_drop_path(tc.drop_path * epoch / tc.epochs)
        gen = epoch_generator(cfg.seed, epoch, 2)
        losses = []
        train_batches = list(batches(data.train, tc.batch_size, gen))
        for x, y in progress_bar(train_batches, progress, desc=f"epoch {epoch + 1}", leave=False):
            with autocast(device, cfg.amp):
                losses.append(weight_step(net, opt, prepare_input(x, device, cfg.channels_last), y.to(device),
                                          tc.grad_clip, weights, tc.aux_weight))
        sched.step()
        check_replicas(list(net.named_parameters()))
        dev = evaluate_split(net, data.dev, len(data.classes), device, cfg.amp, cfg.channels_last)
        elapsed = time.time() - t0
        record = {"phase": "train", "epoch": epoch, "train_loss": float(np.mean(losses)), "dev_loss": dev["loss"],
                  "dev_ua": dev["ua"], "dev_wa": dev["wa"], "lr": sched.get_last_lr()[0],
                  "seconds": elapsed, "step_seconds": elapsed / max(1, len(train_batches))}
        main = dist_info().is_main
        if main:
            append_jsonl(run_dir / "metrics.jsonl", record)
        board.epoch(record)
        if dev["ua"] > best["ua"]:
            best = {"ua": dev["ua"], "wa": dev["wa"], "epoch": epoch}
            if main:
                save_checkpoint(run_dir / "model.pt", {"config": cfg.to_dict(), "genotype": genotype.to_dict(),
                                                       "classes": data.classes, "epoch": epoch,
                                                       "model": net.state_dict()})
        if main:
            save_checkpoint(ckpt_path, {"config": cfg.to_dict(), "epoch": epoch, "model": net.state_dict(),
                                        "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": rng_state(),
                                        "best": best})
        say(f"train epoch {epoch + 1}/{tc.epochs}: loss {record['train_loss']:.3f}  dev UA {dev['ua']:.3f} "
                      f"WA {dev['wa']:.3f}  ({record['seconds']:.1f} s)")
        if stop_after is not None and epoch + 1 >= stop_after:
            break
    return best
