"""One mixed CNN cell: per-candidate modules (the reference) vs torch.compile of them vs the cell grouped by
source state with the fused kernels (emodarts/model/cells/cnn_grouped.py: pools once per state, one multi-depthwise call
per half of the convolutions, shared ReLU and batch norms).

Workload: the first normal cell and the first reduction cell of the `tiny` and `paper` presets, at the
preset's batch size, on the inputs the stem and the earlier cells make from random features; alphas at their
initial values. Modes: fwd (forward with autograd recording, as in a search step) and fwd+bwd (forward, then
backward of a random output gradient into the cell's inputs, weights and alpha). Median and min wall time,
the implementations timed round-robin; ratios against the reference of the same run. The table is printed;
everything goes to bench/results/cnn_cell_<device>.json (device, date, command, threads, load average).

    python bench/bench_cnn_cell.py --quick                 # CPU, 1 thread
    python bench/bench_cnn_cell.py --presets tiny --no-compile
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Dict

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import add_run_options, header, run_settings, timed_round_robin, write_json  # noqa: E402

from emodarts.engine.config import PRESETS  # noqa: E402
from emodarts.features import FEATURE_PRESETS  # noqa: E402
from emodarts.model.supernet import Supernet  # noqa: E402
from emodarts.ops.backend import get_backend  # noqa: E402


def cell_inputs(net: Supernet, preset: str, index: int, batch: int, device: torch.device):
    """(s0, s1) of CNN cell `index` from random features of `preset` through the stem and the earlier cells."""
    n_features, n_frames = FEATURE_PRESETS[preset].shape
    x = torch.randn(batch, 1, n_features, n_frames, device=device)
    with torch.no_grad():
        s0 = s1 = net.stem(net.norm(x))
        for cell in list(net.cnn_cells)[:index]:
            alpha = net.alpha_reduce if cell.reduction else net.alpha_normal
            s0, s1 = s1, cell(s0, s1, alpha, net.backend)
    return s0, s1


def steps_for(net: Supernet, index: int, s0, s1, modes, compile_: bool) -> Dict[str, Dict[str, Callable]]:
    """{impl: {mode: step}} for cell `index` of `net`."""
    cell = net.cnn_cells[index]
    alpha = net.alpha_reduce if cell.reduction else net.alpha_normal
    backends = {"reference": get_backend("reference"), "fused": get_backend("fused")}
    # the fused backend runs the cell grouped by source state, as the supernet does with --fused (grouped_cnn)
    calls = {name: (lambda b=b, g=name == "fused": (lambda a, x0, x1: cell(x0, x1, a, b, None, g)))()
             for name, b in backends.items()}
    if compile_:
        ref = backends["reference"]
        calls["compile"] = torch.compile(lambda a, x0, x1: cell(x0, x1, a, ref), dynamic=False)
    s0 = s0.detach().requires_grad_(True)
    s1 = s1.detach().requires_grad_(True)
    params = [alpha, s0, s1] + [p for p in cell.parameters()]
    out_shape = calls["reference"](alpha, s0, s1).shape
    grad = torch.randn(out_shape, device=s0.device)
    steps = {}
    for name, call in calls.items():
        steps[name] = {}
        if "fwd" in modes:
            steps[name]["fwd"] = lambda call=call: call(alpha, s0, s1)
        if "fwd+bwd" in modes:
            steps[name]["fwd+bwd"] = lambda call=call: torch.autograd.grad(call(alpha, s0, s1), params, grad,
                                                                           allow_unused=True)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap, default_repeats=5)
    ap.add_argument("--presets", default="tiny,paper")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out (its warm-up takes minutes)")
    args = ap.parse_args()
    device, repeats, warmup = run_settings(args, 5, lambda: None)
    rows = []
    print(f"{'preset':<6} {'cell':<9} {'input':<22} {'mode':<8} {'impl':<10} {'median ms':>10} {'min ms':>9} {'x ref':>6}")
    for preset in args.presets.split(","):
        cfg = PRESETS[preset]
        torch.manual_seed(0)
        net = Supernet(cfg.model, FEATURE_PRESETS[preset].shape[0], 4).to(device)
        plan = list(net.cnn_cells)
        picks = {"normal": next(i for i, c in enumerate(plan) if not c.reduction),
                 "reduction": next(i for i, c in enumerate(plan) if c.reduction)}
        for kind, index in picks.items():
            s0, s1 = cell_inputs(net, preset, index, cfg.search.batch_size, device)
            steps = steps_for(net, index, s0, s1, ("fwd", "fwd+bwd"), not args.no_compile)
            for mode in ("fwd", "fwd+bwd"):
                timed = timed_round_robin({name: s[mode] for name, s in steps.items()}, device, repeats, warmup)
                ref = timed["reference"][0]
                for name, (median, best) in timed.items():
                    row = {"preset": preset, "cell": kind, "input": list(s1.shape), "mode": mode, "impl": name,
                           "median_s": median, "min_s": best, "speedup_vs_reference": ref / median}
                    rows.append(row)
                    print(f"{preset:<6} {kind:<9} {str(tuple(s1.shape)):<22} {mode:<8} {name:<10} "
                          f"{1e3 * median:>10.1f} {1e3 * best:>9.1f} {ref / median:>6.2f}", flush=True)
    out = write_json(args.out or f"cnn_cell_{device.type}.json",
                     {**header(device), "loadavg": os.getloadavg(), "repeats": repeats, "warmup": warmup,
                      "rows": rows})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
