"""End-to-end search-step benchmark: reference vs torch.compile(reference) vs --fused.

Time per search step (one alpha step, first or second order, then one weight step, as `emodarts search`
does) and peak memory, at the `tiny` and `paper` presets; then cost growth of the step against batch
size, time steps and number of sequential candidates, drawn as PNG. Every figure is a median after
warm-up (CUDA events on a GPU); ratios are against the reference in the same run. Each configuration
runs in its own process so that its peak memory (max RSS on the CPU, max allocated on CUDA) is its own.

    python bench/bench_search.py --device cpu --quick
    python bench/bench_search.py --device cpu --quick --no-growth --seq-space darts
    python bench/bench_search.py --device cuda
"""
import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import RESULTS, header, median_time, write_json  # noqa: E402

from emodarts.architect import Architect  # noqa: E402
from emodarts.config import PRESETS, with_seq_space  # noqa: E402
from emodarts.features import FEATURE_PRESETS  # noqa: E402
from emodarts.space import SEQ_SUBSETS  # noqa: E402
from emodarts.supernet import Supernet  # noqa: E402
from emodarts.train import weight_step  # noqa: E402

MODES = ("reference", "compile", "fused")


def measure(job: dict) -> dict:
    """One configuration: build the supernet, time search steps, report the median and peak memory."""
    device = torch.device(job["device"])
    cfg = PRESETS[job["preset"]]
    model_cfg = cfg.model
    if job.get("seq_candidates"):
        model_cfg = replace(model_cfg, seq_primitives=tuple(job["seq_candidates"]))
    if job.get("seq_space"):
        model_cfg = with_seq_space(model_cfg, job["seq_space"], job["preset"])
    n_features, n_frames = FEATURE_PRESETS[job["preset"]].shape
    n_frames = job.get("frames") or n_frames
    batch = job.get("batch") or cfg.search.batch_size
    torch.manual_seed(0)
    backend = "fused" if job["mode"] == "fused" else "reference"
    model = Supernet(model_cfg, n_features, 4, backend=backend).to(device)
    if job["mode"] == "compile":
        model.compile(dynamic=False)  # dynamic shapes fail in Inductor here ("Cannot convert expression to float")
    sc = cfg.search
    w_opt = torch.optim.SGD(model.weights(), sc.w_lr, momentum=sc.w_momentum, weight_decay=sc.w_weight_decay)
    a_opt = torch.optim.Adam(model.alphas(), sc.alpha_lr, betas=sc.alpha_betas)
    architect = Architect(model, w_opt, a_opt, second_order=job["second_order"])
    x = torch.randn(batch, 1, n_features, n_frames, device=device)
    y = torch.randint(0, 4, (batch,), device=device)

    def step():
        architect.step(x, y, x, y)
        weight_step(model, w_opt, x, y, sc.grad_clip)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_time(step, device, job["repeats"], warmup=job["warmup"])
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**job, "seconds": seconds, "peak_bytes": int(peak), "batch": batch, "frames": n_frames,
            "n_seq": len(model_cfg.seq_primitives)}


def run_job(job: dict) -> dict:
    """Run `measure` in a fresh process (its own peak memory, no compile caches shared)."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {**job, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def with_ratios(rows: list) -> list:
    """Add speed-up over the reference of the same configuration."""
    key = lambda r: (r["preset"], r["second_order"], r.get("growth"), r.get("batch"), r.get("frames"),  # noqa: E731
                     tuple(r.get("seq_candidates") or ()))
    ref = {key(r): r["seconds"] for r in rows if r["mode"] == "reference" and "seconds" in r}
    for r in rows:
        if "seconds" in r and key(r) in ref:
            r["speedup_vs_reference"] = ref[key(r)] / r["seconds"]
    return rows


def print_table(rows: list, title: str) -> None:
    print(f"\n{title}")
    print(f"{'preset':<7} {'order':<6} {'batch':>5} {'T':>4} {'seq cands':>9} {'mode':<10} {'step ms':>9} {'peak MB':>9} {'x ref':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:<7} {'2nd' if r['second_order'] else '1st':<6} {r['mode']:<10} error: {r['error']}")
            continue
        n_seq = r.get("n_seq") or len(r.get("seq_candidates") or PRESETS[r["preset"]].model.seq_primitives)
        print(f"{r['preset']:<7} {'2nd' if r['second_order'] else '1st':<6} {r['batch']:>5} {r['frames']:>4} {n_seq:>9} "
              f"{r['mode']:<10} {1e3 * r['seconds']:>9.1f} {r['peak_bytes'] / 2**20:>9.0f} {r.get('speedup_vs_reference', float('nan')):>6.2f}")


def plot_growth(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = [("batch", "batch size"), ("frames", "time steps (feature frames)"), ("n_seq", "sequential candidates")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (field, label) in zip(axes, axes_spec):
        for mode in MODES:
            pts = sorted((r[field], r["seconds"]) for r in rows if r.get("growth") == field and r["mode"] == mode and "seconds" in r)
            if pts:
                ax.plot([p[0] for p in pts], [1e3 * p[1] for p in pts], marker="o", label=mode)
        ax.set_xlabel(label)
        ax.set_ylabel("search step (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", default=None, help="comma list (default: tiny on CPU, tiny,paper on CUDA)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--quick", action="store_true", help="fewer repeats, no second-order growth sweep")
    p.add_argument("--no-growth", action="store_true")
    p.add_argument("--seq-space", default="emodarts", choices=["emodarts", "darts"],
                   help="sequential search space of the supernet (darts: the DARTS recurrent cell)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    device = torch.device(args.device)
    presets = (args.presets or ("tiny,paper" if device.type == "cuda" else "tiny")).split(",")
    modes = args.modes.split(",")
    repeats, warmup = (3, 1) if args.quick else (7, 2)
    base = {"device": args.device, "repeats": repeats, "warmup": warmup, "seq_space": args.seq_space}
    rows = []
    for preset in presets:
        for second_order in (False, True):
            for mode in modes:
                rows.append(run_job({**base, "preset": preset, "second_order": second_order, "mode": mode}))
    with_ratios(rows)
    print_table(rows, f"search step, {args.seq_space} sequential space, {header(device)['device']}")

    growth = []
    if not args.no_growth:
        tiny_batch, tiny_frames = PRESETS["tiny"].search.batch_size, FEATURE_PRESETS["tiny"].shape[1]
        seq_all = [c for c in SEQ_SUBSETS["all"]]
        sweeps = {
            "batch": [{"batch": b} for b in (8, 16, 32, 64)],
            "frames": [{"frames": t} for t in (24, 47, 94, 188)],
            "n_seq": [{"seq_candidates": seq_all[:n]} for n in (2, 4, 8, 14)],
        }
        for field, points in sweeps.items():
            for point in points:
                for mode in [m for m in modes if m != "compile"]:
                    r = run_job({**base, "preset": "tiny", "second_order": False, "mode": mode, "growth": field, **point})
                    r.setdefault("batch", point.get("batch", tiny_batch))
                    r.setdefault("frames", point.get("frames", tiny_frames))
                    r["n_seq"] = len(point.get("seq_candidates") or PRESETS["tiny"].model.seq_primitives)
                    growth.append(r)
        with_ratios(growth)
        print_table(growth, "cost growth (tiny preset, first order)")
    tag = args.device.replace(":", "") + ("" if args.seq_space == "emodarts" else f"_{args.seq_space}")
    if growth:
        png = RESULTS / f"search_growth_{tag}.png"
        try:
            plot_growth(growth, png)
            print(f"\nplot: {png}")
        except ImportError as exc:  # e.g. a GPU machine without matplotlib: the JSON still holds every figure
            print(f"\nno plot ({exc})")
    out = write_json(f"search_{tag}.json", {**header(device), "rows": rows, "growth": growth})
    print(f"results: {out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
