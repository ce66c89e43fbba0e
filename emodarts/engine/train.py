"""Search loop, final-training loop and evaluation, with per-epoch checkpoints and exact resume."""
import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from emodarts.engine.architect import Architect
from emodarts.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from emodarts.engine.config import RunConfig
from emodarts.runtime.errors import CheckpointError
from emodarts.model.derive import count_op, derive_genotype
from emodarts.runtime.distributed import info as dist_info
from emodarts.runtime.distributed import check_replicas, global_batch, sum_gradients, use_global_batch_norm
from emodarts.runtime.files import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, remove_stale_temps, torn_line_note
from emodarts.engine.metrics import classification_metrics
from emodarts.model.network import DerivedNetwork, has_auxiliary_head
from emodarts.runtime.precision import autocast, prepare_input, prepare_model
from emodarts.runtime.progress import progress_bar, say
from emodarts.engine.run_data import RunData, TensorSplit  # re-exported: their home before run_data.py
from emodarts.model.space import Genotype, genotype_from_dict, save_genotype
from emodarts.model.supernet import Supernet


def feature_stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-feature-row mean and std over utterances and time: (F,), (F,)."""
    return x.mean(dim=(0, 1, 3)), x.std(dim=(0, 1, 3))


def batches(split: TensorSplit, batch_size: int, generator: Optional[torch.Generator]) -> Iterator[Tuple[Tensor, Tensor]]:
    """Shuffled (when a generator is given) batches; the last short batch is kept."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


@torch.no_grad()
def predict(model: nn.Module, split: TensorSplit, device: str, batch_size: int = 64, amp: str = "none",
            channels_last: bool = False) -> Tuple[np.ndarray, float]:
    """Predicted classes and mean cross-entropy over a split (eval mode)."""
    model.eval()
    preds, loss_sum = [], 0.0
    for x, y in batches(split, batch_size, None):
        with autocast(device, amp):
            logits = model(prepare_input(x, device, channels_last)).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y.to(device), reduction="sum"))
        preds.append(logits.argmax(dim=-1).cpu())
    return torch.cat(preds).numpy(), loss_sum / max(len(split), 1)


def evaluate_split(model: nn.Module, split: TensorSplit, n_classes: int, device: str, amp: str = "none",
                   channels_last: bool = False) -> Dict[str, object]:
    pred, loss = predict(model, split, device, amp=amp, channels_last=channels_last)
    out = classification_metrics(split.y.numpy(), pred, n_classes)
    out["loss"] = loss
    return out


def _truncate_jsonl(path: Path, phase: str, before_epoch: int) -> None:
    """Drop records of `phase` from epoch `before_epoch` on (written after the checkpoint we resume from),
    and a last line cut off by the interruption (said on stderr: that epoch is run again)."""
    if not path.exists():
        return
    records, torn = read_jsonl(path, required=("epoch",))
    if torn:
        _warn(torn_line_note(path))
    keep = [r for r in records if r.get("phase", phase) != phase or r["epoch"] < before_epoch]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def _warn(line: str) -> None:
    """One line on stderr, without breaking the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def _open_for_resume(run_dir: Path) -> None:
    """Remove the temporary files of atomic writes that the interruption left behind (one writer per run
    folder: rank 0, which is here)."""
    if dist_info().is_main:
        remove_stale_temps(run_dir)


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


# ------------------------------------------------------------------------------ resume and logs
def _resume_from(run_dir: Path, ckpt_path: Path, cfg: RunConfig, resume: bool, model: nn.Module,
                 optimizers: Dict[str, torch.optim.Optimizer], sched: torch.optim.lr_scheduler.CosineAnnealingLR,
                 epochs: int, best: dict) -> Tuple[int, dict]:
    """(first epoch to run, best so far): (0, `best`) for a fresh run; with `resume` and a checkpoint, the
    epoch after the checkpoint's and its best, with model, optimisers (by their key in the checkpoint),
    scheduler (stretched to `epochs`) and random state restored, so the run goes on as if never stopped."""
    if resume:
        _open_for_resume(run_dir)
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


def _truncate_logs(run_dir: Path, names: Tuple[str, ...], phase: str, start: int) -> None:
    """Cut the run's logs back to the checkpoint the run starts from (rank 0 writes them; see
    _truncate_jsonl), so that a resumed run's logs hold every epoch once."""
    if dist_info().is_main:
        for name in names:
            _truncate_jsonl(run_dir / name, phase, start)


# --------------------------------------------------------------------------- data parallelism
def _for_data_parallel(model: nn.Module) -> None:
    """Under torchrun, batch norm normalises over the global batch, as the single process does."""
    if dist_info().active:
        use_global_batch_norm(model)


def _summed_over_ranks(loss: Tensor) -> float:
    """A loss of this rank's shard of a global batch, summed over the ranks: the global batch's loss."""
    return float(sum_gradients([loss])[0])


# ----------------------------------------------------------------------------------------- search
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

    def optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """The optimisers under their keys in the search checkpoint."""
        return {"w_opt": self.w_opt, "a_opt": self.a_opt}


def _build_search(cfg: RunConfig, data: RunData) -> _Search:
    """The supernet, normalised by the search data's feature statistics, on cfg.device, with DARTS's
    optimisers: SGD on a cosine schedule for the weights, Adam for the alphas."""
    sc = cfg.search
    model = Supernet(cfg.model, data.n_features, len(data.classes), backend=cfg.backend)
    _for_data_parallel(model)
    mean, std = feature_stats(torch.cat([data.search_w.x, data.search_a.x]))
    model.norm.set_stats(mean, std)
    prepare_model(model, cfg.device, cfg.channels_last)
    w_opt = torch.optim.SGD(model.weights(), sc.w_lr, momentum=sc.w_momentum, weight_decay=sc.w_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, sc.epochs, eta_min=sc.w_lr_min)
    a_opt = torch.optim.Adam(model.alphas(), sc.alpha_lr, betas=tuple(sc.alpha_betas), weight_decay=sc.alpha_weight_decay)
    architect = Architect(model, w_opt, a_opt, second_order=sc.second_order, loss_fn=sharded_cross_entropy())
    return _Search(model, w_opt, sched, a_opt, architect)


def _search_epoch(cfg: RunConfig, search: _Search, data: RunData, epoch: int, progress: bool) -> Tuple[float, float]:
    """One epoch of bilevel steps (an alpha step, then a weight step), cycling the shorter of the two
    search parts; returns the mean weight-step and alpha-step losses."""
    sc, device = cfg.search, cfg.device
    search.model.train()
    gen = _epoch_generator(cfg.seed, epoch, 1)
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
            alpha_loss_sum += _summed_over_ranks(search.architect.step(xw, yw, xa, ya))
            train_loss += weight_step(search.model, search.w_opt, xw, yw, sc.grad_clip)
    return train_loss / n_steps, alpha_loss_sum / n_steps


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
               stop_after: Optional[int] = None) -> Genotype:
    """Bilevel DARTS search. Writes genotypes.jsonl, alphas.jsonl, metrics.jsonl, genotype.json (best by
    alpha-split loss) and checkpoint.pt (each epoch). Returns the best genotype."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sc = cfg.search
    seed_everything(cfg.seed)
    search = _build_search(cfg, data)
    ckpt_path = run_dir / SEARCH_CHECKPOINT
    start, best = _resume_from(run_dir, ckpt_path, cfg, resume, search.model, search.optimizers(), search.sched,
                               sc.epochs, {"alpha_loss": float("inf"), "epoch": -1, "genotype": None})
    _truncate_logs(run_dir, SEARCH_LOGS, "search", start)

    for epoch in progress_bar(range(start, sc.epochs), progress, desc="search", initial=start, total=sc.epochs):
        t0 = time.time()
        train_loss, alpha_step_loss = _search_epoch(cfg, search, data, epoch, progress)
        search.sched.step()
        check_replicas(list(search.model.named_parameters()))
        val = evaluate_split(search.model, data.search_a, len(data.classes), cfg.device, cfg.amp, cfg.channels_last)
        genotype = derive_genotype(search.model, meta={"epoch": epoch}, max_skip_normal=sc.max_skip_normal)
        raw_skips = _count_skip_streak(search.model, sc.max_skip_normal, best)
        record = {
            "phase": "search", "epoch": epoch, "train_loss": train_loss, "alpha_step_loss": alpha_step_loss,
            "alpha_loss": val["loss"], "alpha_ua": val["ua"], "lr": search.sched.get_last_lr()[0],
            "seconds": time.time() - t0, "normal_skips": raw_skips,
        }
        _log_search_epoch(run_dir, record, genotype, search.model)
        _keep_if_best(best, val["loss"], epoch, genotype, run_dir)
        _save_search_checkpoint(ckpt_path, cfg, epoch, search, best)
        say(f"search epoch {epoch + 1}/{sc.epochs}: train loss {train_loss:.3f}  "
            f"alpha-split loss {val['loss']:.3f} UA {val['ua']:.3f}  ({record['seconds']:.1f} s)")
        if _skip_patience_spent(cfg, best) or (stop_after is not None and epoch + 1 >= stop_after):
            break
    return genotype_from_dict(best["genotype"], where=str(ckpt_path))


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


def sharded_cross_entropy(class_weights: Optional[Tensor] = None, aux_weight: float = 0.0):
    """loss_fn(model, x, y) over a global batch: this rank's shard of it, summed and divided by the global
    batch's denominator, so that summing gradients across ranks gives the single-process gradient (with
    one process it is the plain mean cross entropy).

    With aux_weight > 0 and a model with an auxiliary head (DerivedNetwork in training mode), the loss is
    CE(logits) + aux_weight * CE(auxiliary logits), as DARTS trains. A global batch of one utterance
    (a last short batch) skips the head: its batch norm after the 2x2 convolution would see one value per
    channel."""

    def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        aux = None
        with global_batch(len(y)) as part:  # dropout masks drawn as one process draws them
            if aux_weight and len(y) > 1 and getattr(model, "aux_head", None) is not None:
                logits, aux = model.forward_with_aux(x[part])
            else:
                logits = model(x[part])
        total = nn.functional.cross_entropy(logits, y[part], weight=class_weights, reduction="sum")
        if aux is not None:
            total = total + aux_weight * nn.functional.cross_entropy(aux, y[part], weight=class_weights,
                                                                     reduction="sum")
        denominator = class_weights[y].sum() if class_weights is not None else y.new_tensor(len(y), dtype=total.dtype)
        return total / denominator

    return loss_fn


def weight_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, clip: float,
                class_weights: Optional[Tensor] = None, aux_weight: float = 0.0) -> float:
    """One SGD step on the weights only (alphas, if any, get no gradient), from a global batch; with
    aux_weight, the auxiliary head's loss is added (see sharded_cross_entropy)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss = sharded_cross_entropy(class_weights, aux_weight)(model, x, y)
    grads = sum_gradients(torch.autograd.grad(loss, params, allow_unused=True))
    for p, g in zip(params, grads):
        p.grad = g
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return _summed_over_ranks(loss.detach())


# ----------------------------------------------------------------------------------- final training
def class_weights(y: Tensor, n_classes: int) -> Tensor:
    """Inverse class frequency, normalised so that a balanced set gets weight 1."""
    counts = torch.bincount(y, minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


def build_final_network(cfg: RunConfig, genotype: Genotype, data: RunData) -> DerivedNetwork:
    """The network of `genotype`, with DARTS's auxiliary head when cfg.train.aux_weight > 0."""
    net = DerivedNetwork(cfg.model, genotype, data.n_features, len(data.classes), auxiliary=cfg.train.aux_weight > 0)
    net.norm.set_stats(*feature_stats(data.train.x))
    return net


def run_train(cfg: RunConfig, genotype: Genotype, data: RunData, run_dir: Path, resume: bool = False,
              progress: bool = True, stop_after: Optional[int] = None) -> Dict[str, object]:
    """Train the derived network; keep the epoch with the best dev UA in model.pt. Returns its dev metrics."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tc, device = cfg.train, cfg.device
    seed_everything(cfg.seed + 1)
    net = build_final_network(cfg, genotype, data)
    _for_data_parallel(net)
    net = prepare_model(net, device, cfg.channels_last)
    opt = torch.optim.SGD(net.parameters(), tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tc.epochs, eta_min=tc.lr_min)
    weights = class_weights(data.train.y, len(data.classes)).to(device)
    ckpt_path = run_dir / "train_checkpoint.pt"
    start, best = _resume_from(run_dir, ckpt_path, cfg, resume, net, {"opt": opt}, sched, tc.epochs,
                               {"ua": -1.0, "epoch": -1})
    _truncate_logs(run_dir, ("metrics.jsonl",), "train", start)

    epochs = progress_bar(range(start, tc.epochs), progress, desc="train", initial=start, total=tc.epochs)
    for epoch in epochs:
        t0 = time.time()
        net.train()
        net.set_drop_path(tc.drop_path * epoch / tc.epochs)
        gen = _epoch_generator(cfg.seed, epoch, 2)
        losses = []
        for x, y in progress_bar(list(batches(data.train, tc.batch_size, gen)), progress, desc=f"epoch {epoch + 1}", leave=False):
            with autocast(device, cfg.amp):
                losses.append(weight_step(net, opt, prepare_input(x, device, cfg.channels_last), y.to(device),
                                          tc.grad_clip, weights, tc.aux_weight))
        sched.step()
        check_replicas(list(net.named_parameters()))
        dev = evaluate_split(net, data.dev, len(data.classes), device, cfg.amp, cfg.channels_last)
        record = {"phase": "train", "epoch": epoch, "train_loss": float(np.mean(losses)), "dev_loss": dev["loss"],
                  "dev_ua": dev["ua"], "dev_wa": dev["wa"], "seconds": time.time() - t0}
        main = dist_info().is_main
        if main:
            append_jsonl(run_dir / "metrics.jsonl", record)
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


def load_final_network(run_dir: Path, cfg: RunConfig, data: RunData) -> DerivedNetwork:
    """RUN_DIR/model.pt's network (with its auxiliary head when it was trained with one: the head is kept
    in the file but never used outside training)."""
    state = load_run_checkpoint(Path(run_dir) / "model.pt", cfg)
    genotype = genotype_from_dict(state["genotype"], where=str(Path(run_dir) / "model.pt"))
    net = DerivedNetwork(cfg.model, genotype, data.n_features, len(data.classes),
                         auxiliary=has_auxiliary_head(state["model"]))
    net.load_state_dict(state["model"])
    return prepare_model(net, cfg.device, cfg.channels_last)


def run_evaluate(cfg: RunConfig, data: RunData, run_dir: Path) -> Dict[str, object]:
    """Evaluate the selected final network on the test split, once; writes metrics.json."""
    run_dir = Path(run_dir)
    net = load_final_network(run_dir, cfg, data)
    metrics = evaluate_split(net, data.test, len(data.classes), cfg.device, cfg.amp, cfg.channels_last)
    metrics["classes"] = list(data.classes)
    if dist_info().is_main:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
