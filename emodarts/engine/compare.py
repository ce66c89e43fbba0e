"""Reference mode for correctness: run the same search steps with the reference and the fused backend
from one seed and one initial state, and report how far every quantity drifts apart."""
import copy
from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import Tensor, nn

from emodarts.engine.architect import Architect
from emodarts.engine.checkpoint import seed_everything
from emodarts.engine.config import RunConfig
from emodarts.engine.optim import clipped_step, weight_sgd
from emodarts.engine.run_data import TensorSplit
from emodarts.model.derive import derive_genotype
from emodarts.model.supernet import Supernet

# quantity -> relative error against float64 that always passes (max |x - x64| / max |x64|); above it, the
# fused error must stay within SLACK times the float32 reference's own error. The floors allow for the
# trajectory itself: Adam's near-sign first steps turn float32 rounding in small alpha-gradient components
# into alpha differences of that order (3 tiny-preset steps: ~3e-5 for either float32 run).
DEFAULT_RTOL = {"loss": 1e-5, "logits": 1e-5, "weight_grad": 1e-4, "alpha_grad": 1e-4, "alpha": 1e-4}
SLACK = 4.0
# One float32 reference run samples its own error once. Where a quantity is ill-conditioned -- the
# second-order finite-difference Hessian term divides a difference of two gradients by 2 eps, and a ReLU or
# max-pool tie decided differently at w+ and w- moves it by ~1e-4 -- that one sample can land near float64
# by luck while an equally valid float32 ordering lands far off. So when a quantity fails, compare reruns
# the float32 reference from starting weights moved by at most one ulp each (exactly the rounding float32
# is entitled to) and judges against the largest error seen: backward stability, the fused result must be
# about as close to float64 as the reference is on some input float32 cannot tell apart from this one.
# Well-conditioned quantities (losses, logits, weight gradients) keep an envelope near 1e-7, so errors there
# still fail; up to ULP_RUNS reruns, stopping as soon as every quantity passes.
ULP_RUNS = 4


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
              n_classes: int, dtype: torch.dtype = torch.float32) -> Trace:
    """N search steps (alpha step then weight step, as the search does) from `init_state`."""
    device, sc = cfg.device, cfg.search
    model = Supernet(cfg.model, n_features, n_classes, backend=backend)
    model.load_state_dict(init_state)
    model.to(device=device, dtype=dtype)
    w_opt = weight_sgd(model.weights(), sc.w_lr, sc.w_momentum, sc.w_weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), sc.alpha_lr, betas=tuple(sc.alpha_betas), weight_decay=sc.alpha_weight_decay)
    architect = Architect(model, w_opt, a_opt, second_order=sc.second_order)
    trace = Trace([], [], {n: [] for n, _ in model.named_weights()}, {n: [] for n in model.arch_names}, {}, {})
    seed_everything(cfg.seed)  # same dropout masks for both backends
    model.train()
    for step in range(len(data) // 2):
        xw, yw = data[2 * step].x.to(device, dtype), data[2 * step].y.to(device)
        xa, ya = data[2 * step + 1].x.to(device, dtype), data[2 * step + 1].y.to(device)
        trace.loss.append(architect.step(xw, yw, xa, ya).detach().cpu())
        for name, a in zip(trace.alpha_grad, model.arch_parameters()):
            trace.alpha_grad[name].append(a.grad.detach().cpu().clone())
        logits = model(xw)
        loss = nn.functional.cross_entropy(logits, yw)
        weights = model.weights()
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        for (name, _), g, w in zip(model.named_weights(), grads, weights):
            trace.weight_grad[name].append(torch.zeros_like(w).cpu() if g is None else g.detach().cpu())
            w.grad = g
        clipped_step(w_opt, weights, sc.grad_clip)
        trace.loss.append(loss.detach().cpu())
        trace.logits.append(logits.detach().cpu())
    trace.alpha = {n: getattr(model, n).detach().cpu().clone() for n in trace.alpha_grad}
    trace.genotype = derive_genotype(model).to_dict()
    return trace


def _diff(ref: List[Tensor], fused: List[Tensor]) -> Dict[str, float]:
    abs_diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, fused)), default=0.0)
    scale = max((float(b.double().abs().max()) for b in ref), default=0.0)
    return {"max_abs": abs_diff, "max_rel": abs_diff / scale if scale > 0 else abs_diff}


def _quantities(t: Trace) -> Dict[str, List[Tensor]]:
    return {
        "loss": t.loss, "logits": t.logits,
        "weight_grad": [x for v in t.weight_grad.values() for x in v],
        "alpha_grad": [x for v in t.alpha_grad.values() for x in v],
        "alpha": list(t.alpha.values()),
    }


def ulp_perturbed(state: dict, seed: int) -> dict:
    """`state` with every floating-point entry moved up one ulp, down one ulp or left alone, at random
    (a seeded generator, so the same seed gives the same reruns)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, v in state.items():
        if not v.is_floating_point():
            out[name] = v
            continue
        step = torch.randint(-1, 2, v.shape, generator=g)
        target = torch.where(step > 0, torch.full_like(v, float("inf")), torch.full_like(v, -float("inf")))
        out[name] = torch.where(step == 0, v, torch.nextafter(v, target))
    return out


def judge(row: dict, envelope: float) -> bool:
    """Pass when the fused error is within SLACK times the float32 reference's error envelope, or below
    the quantity's floor."""
    return row["fused_vs_f64"] <= max(SLACK * envelope, row["rtol"])


def compare_backends(cfg: RunConfig, steps: int, n_features: int, n_frames: int, n_classes: int = 4,
                     rtol: Dict[str, float] = None, ulp_runs: int = ULP_RUNS) -> dict:
    """Run the reference in float64 (the oracle) and in float32, and the fused backend in float32.

    Per quantity the report gives the largest difference fused vs reference (absolute and relative to the
    largest magnitude), and each float32 run's relative error against float64. A quantity passes when the
    fused error is within `SLACK` times the reference's own float32 error, or within `rtol`: the fused
    path may be as inexact as float32 arithmetic is, and no more. Where one fails, up to `ulp_runs` reruns
    of the float32 reference from one-ulp-perturbed weights widen its error to an envelope (see ULP_RUNS).
    """
    rtol = {**DEFAULT_RTOL, **(rtol or {})}
    seed_everything(cfg.seed)
    init = copy.deepcopy(Supernet(cfg.model, n_features, n_classes).state_dict())
    data = random_batches(cfg, n_features, n_frames, n_classes, steps)
    oracle = _quantities(run_trace(cfg, "reference", init, data, n_features, n_classes, torch.float64))
    ref_trace = run_trace(cfg, "reference", init, data, n_features, n_classes)
    fused_trace = run_trace(cfg, "fused", init, data, n_features, n_classes)
    ref, fused = _quantities(ref_trace), _quantities(fused_trace)
    rows = {}
    for name in ref:
        row = _diff(ref[name], fused[name])
        row["ref_vs_f64"] = _diff(oracle[name], ref[name])["max_rel"]
        row["fused_vs_f64"] = _diff(oracle[name], fused[name])["max_rel"]
        row["rtol"] = rtol[name]
        row["ref_envelope"] = row["ref_vs_f64"]
        row["ok"] = judge(row, row["ref_envelope"])
        rows[name] = row
    reruns = 0
    while reruns < ulp_runs and not all(r["ok"] for r in rows.values()):
        reruns += 1
        start = ulp_perturbed(init, cfg.seed * 1000 + reruns)
        rerun = _quantities(run_trace(cfg, "reference", start, data, n_features, n_classes))
        for name, row in rows.items():
            row["ref_envelope"] = max(row["ref_envelope"], _diff(oracle[name], rerun[name])["max_rel"])
            row["ok"] = judge(row, row["ref_envelope"])
    worst_weight = max(ref_trace.weight_grad,
                       key=lambda n: _diff(ref_trace.weight_grad[n], fused_trace.weight_grad[n])["max_rel"])
    genotypes_agree = ref_trace.genotype == fused_trace.genotype
    return {
        "device": cfg.device, "steps": steps, "second_order": cfg.search.second_order, "seed": cfg.seed,
        "rows": rows, "worst_weight_grad": worst_weight, "genotypes_agree": genotypes_agree, "ulp_reruns": reruns,
        "ok": all(r["ok"] for r in rows.values()),
    }


def format_report(report: dict) -> str:
    lines = [f"{'quantity':<12} {'|fused-ref|':>11} {'rel':>9} {'ref vs f64':>11} {'ref envelope':>12} "
             f"{'fused vs f64':>12}  ok", "-" * 77]
    for name, row in report["rows"].items():
        lines.append(f"{name:<12} {row['max_abs']:>11.3e} {row['max_rel']:>9.2e} {row['ref_vs_f64']:>11.2e} "
                     f"{row['ref_envelope']:>12.2e} {row['fused_vs_f64']:>12.2e}  {'yes' if row['ok'] else 'NO'}")
    lines.append(f"genotypes agree: {'yes' if report['genotypes_agree'] else 'no'}; "
                 f"worst weight gradient: {report['worst_weight_grad']}")
    order = "second" if report["second_order"] else "first"
    lines.append(f"pass: fused error vs float64 <= {SLACK:g} x the float32 reference's, or below a floor")
    if report["ulp_reruns"]:
        lines.append(f"reference envelope: the largest of its error and {report['ulp_reruns']} rerun(s) from "
                     f"starting weights moved by at most one float32 ulp")
    lines.append(f"{report['steps']} {order}-order search steps on {report['device']}: "
                 f"{'within tolerance' if report['ok'] else 'BEYOND TOLERANCE'}")
    return "\n".join(lines)
