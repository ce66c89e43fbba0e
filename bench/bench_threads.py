"""Search-step time against intra-op threads and OpenMP's wait policy, alone and beside a busy process.

Why: on a small machine shared with another CPU job, idle OpenMP workers that spin-wait after every small op
steal the core the busy job needs, and every parallel region then waits for a worker the OS has descheduled:
a user measured a search epoch at 346 s with 2 threads against 45 s with 1 (issue 11). This benchmark
measures what the CLI's default (`--threads`, emodarts/runtime/threads.py) is chosen from: the tiny preset's search
step (first order, both backends) at 1 and all threads, with OpenMP's default (spinning) and PASSIVE wait
policies (and libgomp's spin count), alone and beside `--busy N` busy-looping processes (default 1).

    python bench/bench_threads.py            # ~4 min on 2 cores; run it alone
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

BUSY_LOOP = "while True: pass"


def worker(job: dict) -> dict:
    """Time `steps` search steps of the tiny preset in this process (threads and wait policy already set)."""
    import torch

    from emodarts.engine.architect import Architect
    from emodarts.engine.config import PRESETS
    from emodarts.engine.losses import weight_step
    from emodarts.engine.optim import weight_sgd
    from emodarts.features import FEATURE_PRESETS
    from emodarts.model.supernet import Supernet

    torch.set_num_threads(job["threads"])
    cfg = PRESETS[job["preset"]]
    n_features, n_frames = FEATURE_PRESETS[job["preset"]].shape
    torch.manual_seed(0)
    model = Supernet(cfg.model, n_features, 4, backend=job["backend"])
    sc = cfg.search
    w_opt = weight_sgd(model.weights(), sc.w_lr, sc.w_momentum, sc.w_weight_decay)  # as `emodarts search`
    a_opt = torch.optim.Adam(model.arch_parameters(), sc.alpha_lr, betas=sc.alpha_betas)
    architect = Architect(model, w_opt, a_opt, second_order=False)
    x = torch.randn(sc.batch_size, 1, n_features, n_frames)
    y = torch.randint(0, 4, (sc.batch_size,))
    times = []
    for i in range(job["warmup"] + job["steps"]):
        t0 = time.perf_counter()
        architect.step(x, y, x, y)
        weight_step(model, w_opt, x, y, sc.grad_clip)
        if i >= job["warmup"]:
            times.append(time.perf_counter() - t0)
    return {**job, "seconds": statistics.median(times), "min_seconds": min(times)}


def run_job(job: dict, busy: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]))
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if job["policy"].startswith("spin:"):  # libgomp spins this many times before sleeping (default 300,000)
        env["GOMP_SPINCOUNT"] = job["policy"][5:]
    elif job["policy"] != "default":
        env["OMP_WAIT_POLICY"] = job["policy"]
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy if job["load"] == "busy" else 0)]
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env, capture_output=True,
                              text=True, timeout=1800)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    if proc.returncode != 0:
        return {**job, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--busy", type=int, default=1, help="busy-looping processes in the 'busy' rows")
    ap.add_argument("--threads", default=None, help="comma list (default: 1 and all cores)")
    ap.add_argument("--policies", default="default,PASSIVE",
                    help="comma list: default, PASSIVE (OMP_WAIT_POLICY) or spin:N (GOMP_SPINCOUNT=N)")
    ap.add_argument("--backends", default="reference,fused")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import torch
    from common import device_name, write_json

    cores = len(os.sched_getaffinity(0))
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    load_before = os.getloadavg()
    rows = []
    print(f"{'backend':<10} {'threads':>7} {'policy':<8} {'load':<5} {'step s':>8}")
    for backend in args.backends.split(","):
        for load in ("alone", "busy"):
            for policy in args.policies.split(","):
                for n in threads:
                    job = {"preset": args.preset, "backend": backend, "threads": n, "policy": policy, "load": load,
                           "steps": args.steps, "warmup": args.warmup}
                    r = run_job(job, args.busy)
                    rows.append(r)
                    shown = f"{r['seconds']:8.3f}" if "seconds" in r else f"error: {r['error']}"
                    print(f"{backend:<10} {n:>7} {policy:<8} {load:<5} {shown}", flush=True)
    alone_1 = {r["backend"]: r["seconds"] for r in rows
               if r["load"] == "alone" and r["threads"] == 1 and r["policy"] == "default" and "seconds" in r}
    print("\nratio to 1 thread alone (default policy), per backend:")
    for r in rows:
        if "seconds" in r and r["backend"] in alone_1:
            r["vs_one_thread_alone"] = r["seconds"] / alone_1[r["backend"]]
            print(f"  {r['backend']:<10} {r['threads']} thr {r['policy']:<8} {r['load']:<5} {r['vs_one_thread_alone']:6.2f}x")
    out = write_json(f"threads_{args.preset}_cpu{args.tag}.json", {
        "device": device_name(torch.device("cpu")), "cores": cores, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(["python"] + sys.argv),
        "busy_processes": args.busy, "loadavg_before": load_before, "rows": rows})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
