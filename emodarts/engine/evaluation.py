"""Evaluation: predictions and metrics of a network on a split, and the run's one look at its test speakers."""
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from emodarts.engine.config import RunConfig
from emodarts.engine.legacy import load_run_checkpoint
from emodarts.engine.metrics import classification_metrics
from emodarts.engine.run_data import RunData, TensorSplit, batches
from emodarts.model.network import DerivedNetwork, has_auxiliary_head
from emodarts.model.space import genotype_from_dict
from emodarts.runtime.distributed import info as dist_info
from emodarts.runtime.files import atomic_write_json
from emodarts.runtime.precision import autocast, prepare_input, prepare_model


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


def load_final_network(run_dir: Path, cfg: RunConfig, data: RunData) -> DerivedNetwork:
    """RUN_DIR/model.pt's network (with its auxiliary head when it was trained with one: the head is kept
    in the file but never used outside training)."""
    state = load_run_checkpoint(Path(run_dir) / "model.pt", cfg)
    genotype = genotype_from_dict(state["genotype"], where=str(Path(run_dir) / "model.pt"))
    net = DerivedNetwork(cfg.model, genotype, data.n_features, len(data.classes),
                         auxiliary=has_auxiliary_head(state["model"]))
    net.load_state_dict(state["model"])
    return prepare_model(net, cfg.device, cfg.channels_last)


def evaluate_run_folder(run_dir: Path, cfg: RunConfig, progress: bool = True) -> Dict[str, object]:
    """`emodarts evaluate` and `emodarts.evaluate`: the run folder's data (its recorded classes) and its
    selected network on the test split, once; writes metrics.json."""
    from emodarts.engine.pipeline import prepare_data

    return run_evaluate(cfg, prepare_data(cfg, progress, run_dir=run_dir, resuming=True), run_dir)


def run_evaluate(cfg: RunConfig, data: RunData, run_dir: Path) -> Dict[str, object]:
    """Evaluate the selected final network on the test split, once; writes metrics.json."""
    run_dir = Path(run_dir)
    net = load_final_network(run_dir, cfg, data)
    metrics = evaluate_split(net, data.test, len(data.classes), cfg.device, cfg.amp, cfg.channels_last)
    metrics["classes"] = list(data.classes)
    if dist_info().is_main:
        atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
