"""Reference mode for correctness: run the same search steps with the reference and the fused backend
from one seed and one initial state, and report how far every quantity drifts apart."""
import copy
from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import Tensor, nn

from .architect import Architect
from .checkpoint import seed_everything
from .config import RunConfig
from .derive import derive_genotype
from .supernet import Supernet
from .train import TensorSplit, batches

# quantity -> default relative tolerance (max |fused - ref| / max |ref|), float32 on CPU or CUDA
DEFAULT_RTOL = {"loss": 1e-5, "logits": 1e-5, "weight_grad": 1e-4, "alpha_grad": 1e-4, "alpha": 1e-5}


@dataclass
class Trace:
    """Everything one backend produced over the compared steps."""

    loss: List[Tensor]
    logits: List[Tensor]
    weight_grad: Dict[str, List[Tensor]]
    alpha_grad: Dict[str, List[Tensor]]
    alpha: Dict[str, Tensor]
    genotype: dict


def random_batches(cfg: RunConfig, n_features: int, n_frames: int, n_classes: int, steps: int) -> List[TensorSplit]:
    """Fresh random inputs shaped like the preset's features, one (w, alpha) pair of batches per step."""
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    b = cfg.search.batch_size
    out = []
    for _ in range(2 * steps):
        out.append(TensorSplit(torch.randn(b, 1, n_features, n_frames, generator=g),
                               torch.randint(0, n_classes, (b,), generator=g)))
    return out


def run_trace(cfg: RunConfig, backend: str, init_state: dict, data: List[TensorSplit], n_features: int,
              n_classes: int) -> Trace:
    """N search steps (alpha step then weight step, as the search does) from `init_state`."""
    device, sc = cfg.device, cfg.search
    model = Supernet(cfg.model, n_features, n_classes, backend=backend)
    model.load_state_dict(init_state)
    model.to(device)
    w_opt = torch.optim.SGD(model.weights(), sc.w_lr, momentum=sc.w_momentum, weight_decay=sc.w_weight_decay)
    a_opt = torch.optim.Adam(model.alphas(), sc.alpha_lr, betas=tuple(sc.alpha_betas), weight_decay=sc.alpha_weight_decay)
    architect = Architect(model, w_opt, a_opt, second_order=sc.second_order)
    trace = Trace([], [], {n: [] for n, _ in model.named_weights()}, {n: [] for n in ("alpha_normal", "alpha_reduce", "alpha_seq")}, {}, {})
    seed_everything(cfg.seed)  # same dropout masks for both backends
    model.train()
    for step in range(len(data) // 2):
        xw, yw = data[2 * step].x.to(device), data[2 * step].y.to(device)
        xa, ya = data[2 * step + 1].x.to(device), data[2 * step + 1].y.to(device)
        trace.loss.append(architect.step(xw, yw, xa, ya).detach().cpu())
        for name, a in zip(trace.alpha_grad, model.alphas()):
            trace.alpha_grad[name].append(a.grad.detach().cpu().clone())
        logits = model(xw)
        loss = nn.functional.cross_entropy(logits, yw)
        weights = model.weights()
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        for (name, _), g, w in zip(model.named_weights(), grads, weights):
            trace.weight_grad[name].append(torch.zeros_like(w).cpu() if g is None else g.detach().cpu())
            w.grad = g
        nn.utils.clip_grad_norm_(weights, sc.grad_clip)
        w_opt.step()
        trace.loss.append(loss.detach().cpu())
        trace.logits.append(logits.detach().cpu())
    trace.alpha = {n: getattr(model, n).detach().cpu().clone() for n in trace.alpha_grad}
    trace.genotype = derive_genotype(model).to_dict()
    return trace


def _diff(ref: List[Tensor], fused: List[Tensor]) -> Dict[str, float]:
    abs_diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, fused)), default=0.0)
    scale = max((float(b.double().abs().max()) for b in ref), default=0.0)
    return {"max_abs": abs_diff, "max_rel": abs_diff / scale if scale > 0 else abs_diff}


def compare_backends(cfg: RunConfig, steps: int, n_features: int, n_frames: int, n_classes: int = 4,
                     rtol: Dict[str, float] = None) -> dict:
    """Run both backends and return a report: per quantity the largest absolute and relative
    difference, the tolerance and whether it holds, and whether the derived genotypes agree."""
    rtol = {**DEFAULT_RTOL, **(rtol or {})}
    seed_everything(cfg.seed)
    init = copy.deepcopy(Supernet(cfg.model, n_features, n_classes).state_dict())
    data = random_batches(cfg, n_features, n_frames, n_classes, steps)
    ref = run_trace(cfg, "reference", init, data, n_features, n_classes)
    fused = run_trace(cfg, "fused", init, data, n_features, n_classes)
    rows = {
        "loss": _diff(ref.loss, fused.loss),
        "logits": _diff(ref.logits, fused.logits),
        "weight_grad": _diff([t for v in ref.weight_grad.values() for t in v],
                             [t for v in fused.weight_grad.values() for t in v]),
        "alpha_grad": _diff([t for v in ref.alpha_grad.values() for t in v],
                            [t for v in fused.alpha_grad.values() for t in v]),
        "alpha": _diff(list(ref.alpha.values()), list(fused.alpha.values())),
    }
    worst_weight = max(ref.weight_grad, key=lambda n: _diff(ref.weight_grad[n], fused.weight_grad[n])["max_rel"])
    for name, row in rows.items():
        row["rtol"] = rtol[name]
        row["ok"] = row["max_rel"] <= rtol[name]
    genotypes_agree = ref.genotype == fused.genotype
    return {
        "device": cfg.device, "steps": steps, "second_order": cfg.search.second_order, "seed": cfg.seed,
        "rows": rows, "worst_weight_grad": worst_weight, "genotypes_agree": genotypes_agree,
        "ok": all(r["ok"] for r in rows.values()),
    }


def format_report(report: dict) -> str:
    lines = [f"{'quantity':<12} {'max abs diff':>13} {'max rel diff':>13} {'rtol':>9}  ok",
             "-" * 54]
    for name, row in report["rows"].items():
        lines.append(f"{name:<12} {row['max_abs']:>13.3e} {row['max_rel']:>13.3e} {row['rtol']:>9.1e}  "
                     f"{'yes' if row['ok'] else 'NO'}")
    lines.append(f"genotypes agree: {'yes' if report['genotypes_agree'] else 'no'}; "
                 f"worst weight gradient: {report['worst_weight_grad']}")
    order = "second" if report["second_order"] else "first"
    lines.append(f"{report['steps']} {order}-order search steps on {report['device']}: "
                 f"{'within tolerance' if report['ok'] else 'BEYOND TOLERANCE'}")
    return "\n".join(lines)
