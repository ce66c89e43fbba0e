"""End-to-end search-step benchmark: reference vs torch.compile(reference) vs --fused.

Time per search step (one alpha step, first or second order, then one weight step, as `emodarts search`
does) and peak memory, at the `tiny` and `paper` presets; then cost growth of the step against batch
size, time steps and number of sequential candidates, drawn as PNG. Every figure is a median after
warm-up (CUDA events on a GPU); ratios are against the reference in the same run. Each configuration
runs in its own process so that its peak memory (max RSS on the CPU, max allocated on CUDA) is its own.

    python bench/bench_search.py --device cpu --quick
    python bench/bench_search.py --device cpu --quick --no-growth --seq-space darts
    python bench/bench_search.py --device cuda
    python bench/bench_search.py --presets tiny,paper --no-growth --breakdown --threads 2 [--heap steady]
    python bench/bench_search.py --presets paper --no-growth --orders 1 --modes reference,fused --partial-channels 1,2,4,8
    python bench/bench_search.py --presets tiny,paper --no-growth --orders 1 --modes reference,fused --amp none,bf16 --threads 2

CPU configurations run on --threads intra-op threads (default 1) with OpenMP's default wait policy; page
faults per step are recorded (see --heap).
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

from common import RESULTS, ResultsFile, header, median_time  # noqa: E402

from emodarts.engine.architect import Architect  # noqa: E402
from emodarts.engine.config import PRESETS, with_seq_space  # noqa: E402
from emodarts.engine.losses import weight_step  # noqa: E402
from emodarts.engine.optim import clipped_step, weight_sgd  # noqa: E402
from emodarts.features import FEATURE_PRESETS  # noqa: E402
from emodarts.model.space import SEQ_SUBSETS  # noqa: E402
from emodarts.model.supernet import Supernet  # noqa: E402
from emodarts.runtime.precision import AMP_MODES, autocast, cpu_has_bf16_units  # noqa: E402

MODES = ("reference", "compile", "fused")


def part_times(model, x: torch.Tensor, device: torch.device, repeats: int, warmup: int) -> dict:
    """Where a step's time goes: forward+backward of the CNN part (stem and cells, from the features) and of
    the sequential part (hand-off, sequential cells, head, from the CNN maps), each into its inputs and every
    weight and alpha; a first-order step runs each twice (alpha step, weight step), the rest is optimiser
    and bookkeeping."""
    def cnn():
        return model.cnn_part(x)

    with torch.no_grad():
        c0, c1 = cnn()
    c0, c1 = c0.detach().requires_grad_(True), c1.detach().requires_grad_(True)

    def seq():
        return model.seq_part(c0, c1)

    def back(outs):
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return {"cnn_fwd_bwd_s": median_time(lambda: back(cnn()), device, repeats, warmup),
            "seq_fwd_bwd_s": median_time(lambda: back(seq()), device, repeats, warmup)}


def step_times(architect, model, w_opt, x, y, clip: float, device: torch.device, repeats: int) -> dict:
    """The step's two halves apart (the alpha step: forward, backward into the alphas, Adam; the weight step:
    forward, backward into the weights, the update) and the update alone (norm, clipping, fused SGD on the
    gradients already there): what lies outside the passes."""
    params = [p for g in w_opt.param_groups for p in g["params"]]
    alpha = median_time(lambda: architect.step(x, y, x, y), device, repeats, 1)
    weight = median_time(lambda: weight_step(model, w_opt, x, y, clip), device, repeats, 1)
    update = median_time(lambda: clipped_step(w_opt, params, clip), device, repeats, 1)
    return {"alpha_step_s": alpha, "weight_step_s": weight, "update_s": update}


def cuda_launches(step) -> int:
    """Kernel launches of one step (torch.profiler's CUDA kernel events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA"))


def measure(job: dict) -> dict:
    """One configuration: build the supernet, time search steps, report the median and peak memory."""
    device = torch.device(job["device"])
    if device.type == "cpu":
        torch.set_num_threads(job.get("threads") or 1)
    if job.get("heap") == "steady":
        from emodarts.runtime.heap import keep_freed_memory

        job = {**job, "heap_applied": keep_freed_memory()}
    cfg = PRESETS[job["preset"]]
    model_cfg = cfg.model
    if job.get("seq_candidates"):
        model_cfg = replace(model_cfg, seq_primitives=tuple(job["seq_candidates"]))
    if job.get("seq_space"):
        model_cfg = with_seq_space(model_cfg, job["seq_space"], job["preset"])
    model_cfg = replace(model_cfg, partial_channels=job.get("partial_channels", 1))
    n_features, n_frames = FEATURE_PRESETS[job["preset"]].shape
    n_frames = job.get("frames") or n_frames
    batch = job.get("batch") or cfg.search.batch_size
    torch.manual_seed(0)
    backend = "fused" if job["mode"] == "fused" else "reference"
    model = Supernet(model_cfg, n_features, 4, backend=backend).to(device)
    if job["mode"] == "compile":
        model.compile(dynamic=False)  # dynamic shapes fail in Inductor here ("Cannot convert expression to float")
    sc = cfg.search
    w_opt = weight_sgd(model.weights(), sc.w_lr, sc.w_momentum, sc.w_weight_decay)  # as `emodarts search`
    a_opt = torch.optim.Adam(model.arch_parameters(), sc.alpha_lr, betas=sc.alpha_betas)
    architect = Architect(model, w_opt, a_opt, second_order=job["second_order"])
    x = torch.randn(batch, 1, n_features, n_frames, device=device)
    y = torch.randint(0, 4, (batch,), device=device)

    amp = job.get("amp", "none")

    def step():
        with autocast(str(device), amp):  # as `emodarts search --amp`
            architect.step(x, y, x, y)
            weight_step(model, w_opt, x, y, sc.grad_clip)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = median_time(step, device, job["repeats"], warmup=job["warmup"])
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (job["repeats"] + job["warmup"])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:  # the process's high-water mark: this job's only in a process of its own
        peak = None if job.get("in_process") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {**job, "seconds": seconds, "peak_bytes": None if peak is None else int(peak), "batch": batch, "frames": n_frames,
           "n_seq": len(model_cfg.seq_primitives), "page_faults_per_step": faults,
           "bf16_units": cpu_has_bf16_units() if device.type == "cpu" else None}
    if job.get("breakdown") and job["mode"] != "compile":
        reps = max(1, job["repeats"] // 2)
        with autocast(str(device), amp):
            out.update(part_times(model, x, device, reps, 1))
            out.update(step_times(architect, model, w_opt, x, y, sc.grad_clip, device, reps))
    if device.type == "cuda":
        out["kernel_launches_per_step"] = cuda_launches(step)
    return out


def run_job(job: dict) -> dict:
    """Run `measure` in a fresh process (its own peak memory, no compile caches shared), or with
    job["in_process"] in this one (no process start, import and kernel load per job: what a short GPU loan can
    afford; CUDA peak memory is reset per job, a CPU peak is not recorded)."""
    if job.get("in_process"):
        try:
            return measure(job)
        except Exception as exc:  # recorded in the row, as a failed worker process is
            return {**job, "error": f"{type(exc).__name__}: {exc}"[:300]}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {**job, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def with_ratios(rows: list) -> list:
    """Add speed-up over the reference of the same configuration."""
    key = lambda r: (r["preset"], r["second_order"], r.get("growth"), r.get("batch"), r.get("frames"),  # noqa: E731
                     tuple(r.get("seq_candidates") or ()), r.get("partial_channels", 1), r.get("amp", "none"))
    ref = {key(r): r["seconds"] for r in rows if r["mode"] == "reference" and "seconds" in r}
    fp32 = {key(r)[:-1] + (r["mode"],): r["seconds"] for r in rows if r.get("amp", "none") == "none" and "seconds" in r}
    for r in rows:
        if "seconds" in r and key(r) in ref:
            r["speedup_vs_reference"] = ref[key(r)] / r["seconds"]
        same_mode_fp32 = fp32.get(key(r)[:-1] + (r["mode"],))
        if "seconds" in r and r.get("amp", "none") != "none" and same_mode_fp32:
            r["speedup_vs_fp32"] = same_mode_fp32 / r["seconds"]  # the same mode's float32 step, this run
    return rows


def peak_mb(r: dict) -> str:
    return "n/a" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.0f}"


def print_table(rows: list, title: str) -> None:
    print(f"\n{title}")
    print(f"{'preset':<7} {'order':<6} {'batch':>5} {'T':>4} {'seq cands':>9} {'K':>2} {'amp':<5} {'mode':<10} {'step ms':>9} "
          f"{'peak MB':>9} {'x ref':>6} {'x fp32':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['preset']:<7} {'2nd' if r['second_order'] else '1st':<6} {r['mode']:<10} error: {r['error']}")
            continue
        n_seq = r.get("n_seq") or len(r.get("seq_candidates") or PRESETS[r["preset"]].model.seq_primitives)
        print(f"{r['preset']:<7} {'2nd' if r['second_order'] else '1st':<6} {r['batch']:>5} {r['frames']:>4} {n_seq:>9} "
              f"{r.get('partial_channels', 1):>2} {r.get('amp', 'none'):<5} {r['mode']:<10} {1e3 * r['seconds']:>9.1f} "
              f"{peak_mb(r):>9} {r.get('speedup_vs_reference', float('nan')):>6.2f} {r.get('speedup_vs_fp32', float('nan')):>6.2f}")


def print_breakdown(rows: list) -> None:
    print("\nwhere a step goes: forward+backward of each part alone (a step runs the model forward and backward")
    print("twice in first order: the alpha step, whose backward skips the weight gradients, and the weight step)")
    print("and the two halves of the step apart: the alpha step, the weight step and, in it, the update)")
    print(f"{'preset':<7} {'order':<6} {'K':>2} {'amp':<5} {'mode':<10} {'step ms':>9} {'CNN f+b ms':>11} "
          f"{'seq f+b ms':>11} {'CNN share':>10} {'alpha ms':>9} {'weight ms':>10} {'update ms':>10} {'a/w':>5}")
    for r in rows:
        if "cnn_fwd_bwd_s" not in r:
            continue
        cnn, seq = r["cnn_fwd_bwd_s"], r["seq_fwd_bwd_s"]
        a, w, u = (r.get(k, float("nan")) for k in ("alpha_step_s", "weight_step_s", "update_s"))
        print(f"{r['preset']:<7} {'2nd' if r['second_order'] else '1st':<6} {r.get('partial_channels', 1):>2} "
              f"{r.get('amp', 'none'):<5} {r['mode']:<10} {1e3 * r['seconds']:>9.1f} {1e3 * cnn:>11.1f} "
              f"{1e3 * seq:>11.1f} {100 * cnn / (cnn + seq):>9.0f}% {1e3 * a:>9.1f} {1e3 * w:>10.1f} {1e3 * u:>10.1f} "
              f"{a / w:>5.2f}")


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
    p.add_argument("--repeats", type=int, default=None, help="timed steps per configuration (default 7, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    p.add_argument("--heap", default="default", choices=["default", "steady"],
                   help="steady: glibc keeps freed memory in every configuration (emodarts/runtime/heap.py)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time forward+backward of the CNN part and of the sequential part")
    p.add_argument("--orders", default="1,2", help="1: first order, 2: second order (comma list)")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads of every configuration")
    p.add_argument("--amp", default="none",
                   help="comma list of precisions (none, bf16), as `emodarts search --amp`; with both, each bf16 "
                        "row also gets its speed-up over the same mode's float32 step")
    p.add_argument("--partial-channels", default="1",
                   help="PC-DARTS K values to measure (comma list, e.g. 1,2,4,8; default 1: plain DARTS)")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--in-process", action="store_true",
                   help="every configuration in this process instead of one fresh process each (saves a "
                        "process start and kernel load per configuration; no CPU peak memory)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    device = torch.device(args.device)
    presets = (args.presets or ("tiny,paper" if device.type == "cuda" else "tiny")).split(",")
    modes = args.modes.split(",")
    repeats, warmup = (3, 1) if args.quick else (7, 2)
    repeats, warmup = args.repeats or repeats, args.warmup or warmup
    base = {"device": args.device, "repeats": repeats, "warmup": warmup, "seq_space": args.seq_space,
            "heap": args.heap, "breakdown": args.breakdown, "threads": args.threads, "in_process": args.in_process}
    tag = args.device.replace(":", "") + ("" if args.seq_space == "emodarts" else f"_{args.seq_space}") + args.tag
    results = ResultsFile(f"search_{tag}.json", {**header(device), "loadavg": os.getloadavg()})
    rows = []
    orders = [o.strip() == "2" for o in args.orders.split(",")]
    ks = [int(k) for k in args.partial_channels.split(",")]
    amps = args.amp.split(",")
    if any(a not in AMP_MODES for a in amps):
        p.error(f"--amp: each of {', '.join(AMP_MODES)}")
    for preset in presets:
        for second_order in orders:
            for k in ks:
                for amp in amps:
                    for mode in modes:
                        rows.append(run_job({**base, "preset": preset, "second_order": second_order, "mode": mode,
                                             "partial_channels": k, "amp": amp}))
                        results.update(rows=with_ratios(rows))
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
                    results.update(growth=with_ratios(growth))
        with_ratios(growth)
        print_table(growth, "cost growth (tiny preset, first order)")
    if growth:
        png = RESULTS / f"search_growth_{tag}.png"
        try:
            plot_growth(growth, png)
            print(f"\nplot: {png}")
        except ImportError as exc:  # e.g. a GPU machine without matplotlib: the JSON still holds every figure
            print(f"\nno plot ({exc})")
    if args.breakdown:
        print_breakdown(rows)
    out = results.finish(rows=rows, growth=growth)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
