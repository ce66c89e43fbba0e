"""Microbenchmark of the node-level mixed sum: eager reference vs torch.compile(reference) vs fused.

fused = the C++ twin on the CPU, the Triton kernels on CUDA. For each K (inputs) and tensor size: forward and
forward+backward (grads of every y and of alpha), median time after warm-up (on a GPU: CUDA events around a
CUDA graph of 10 calls, so that the host's launch overhead drops out), the minimum bytes any implementation
must move (forward (K+1)*N*b, backward (2K+1)*N*b, so forward+backward (3K+2)*N*b) and the effective bandwidth
that gives, next to the measured copy bandwidth (dst.copy_(src) over the forward's working set, (K+1)*N*b in
all). Implementations are timed round-robin, in a fresh random order every round (seeded), so that the
allocator state one implementation leaves behind
(e.g. a heap glibc has just trimmed) does not always land on the same next one. On the CPU each call's
minor page faults and system time are recorded too (getrusage): on a VM a fault on fresh memory costs about
as much as the kernel itself (~0.45 ms per MB measured on the 2-core EPYC VM), so a slow median with
thousands of faults per call measures the allocator, not the kernel. The table is printed and everything
is written as JSON to bench/results/mixed_sum_<device>.json with the device name, the date, the command
and (CPU) what the C++ op runs (kernel copy, threading: torch.ops.emodarts.mixed_sum_cpu_info()).

On a small shared CPU, OpenMP workers spinning after each op slow down whatever runs next; run with
OMP_WAIT_POLICY=PASSIVE for steadier numbers (recorded in the JSON). `--heap steady` keeps glibc from
returning freed memory to the system (mallopt M_TRIM_THRESHOLD / M_MMAP_THRESHOLD) for every
implementation alike, so that page faults drop out of all of them.

    python bench/bench_mixed_sum.py --quick          # CPU: a few minutes
    python bench/bench_mixed_sum.py --device cuda    # GPU: K = 2..16, sizes up to 64 MB per tensor

Sizes are cell-level tensors: `tiny` preset (B=16, C=8, 20x24), `paper` preset (B=16, C=16 and 32,
64x64) and a 64 MB tensor. torch.compile compiles the reference function (dynamic=False, one graph per K
and size); its compile time is excluded (warm-up).
"""
import argparse
import datetime
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
import torch._dynamo.config as dynamo_config

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from emodarts.ops import mixed_sum  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import ResultsFile, device_name  # noqa: E402

SIZES = {
    "tiny (16,8,20,24)": (16, 8, 20, 24),
    "paper C16 (16,16,64,64)": (16, 16, 64, 64),
    "paper C32 (16,32,64,64)": (16, 32, 64, 64),
    "64MB (16,64,128,128)": (16, 64, 128, 128),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAPH_CALLS = 10  # calls per timed CUDA graph replay (the time reported is per call)


class Timer:
    """Times several callables round-robin (one call of each per round, in a new random order every round),
    so that load spikes on a shared machine and the allocator state left by the previous call hit every
    implementation alike; reports the median and the minimum per callable, and on the CPU the median minor
    page faults and system time per call."""

    def __init__(self, dev: torch.device, seed: int = 0):
        self.dev = dev
        self.rng = random.Random(seed)

    def _once(self, fn):
        """(seconds, minor faults, system seconds); faults and system time are None on a GPU. On a GPU `fn` is
        a runner from _cuda_runner: GRAPH_CALLS calls, timed together with CUDA events."""
        if self.dev.type == "cuda":
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3 / GRAPH_CALLS, None, None
        r0 = resource.getrusage(resource.RUSAGE_SELF) if resource else None
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        if r0 is None:
            return dt, None, None
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return dt, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime

    @staticmethod
    def _cuda_runner(fn):
        """(runner, timer): a CUDA graph of GRAPH_CALLS calls of `fn`, replayed (the GPU's time alone: at the
        paper's sizes one eager call is mostly the host's launch overhead, which events around it would
        measure), or, where `fn` cannot be captured, an eager loop of GRAPH_CALLS calls."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph asks
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(GRAPH_CALLS):
                    fn()
            graph.replay()
            torch.cuda.synchronize()
            return graph.replay, "cuda graph"
        except Exception as exc:  # e.g. an op that synchronises: time the eager loop instead
            torch.cuda.synchronize()

            def loop():
                for _ in range(GRAPH_CALLS):
                    fn()
            return loop, f"eager loop ({type(exc).__name__})"

    def many(self, fns: dict, reps: int, warmup: int) -> dict:
        """{name: dict(median=s, min=s, minflt=median faults per call, sys=median system s per call) or an
        exception}"""
        ok = {}
        res = {}
        for name, fn in fns.items():
            try:
                for _ in range(warmup):
                    fn()
                ok[name] = fn
            except Exception as exc:  # e.g. torch.compile unavailable here: record, keep going
                res[name] = exc
        timers = {name: "perf_counter" for name in ok}
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            for name in list(ok):
                ok[name], timers[name] = self._cuda_runner(ok[name])
        samples = {name: [] for name in ok}
        names = list(ok)
        for _ in range(reps):
            self.rng.shuffle(names)
            for name in names:
                samples[name].append(self._once(ok[name]))
        for name, ss in samples.items():
            ts = [x[0] for x in ss]
            flt = [x[1] for x in ss if x[1] is not None]
            sys_s = [x[2] for x in ss if x[2] is not None]
            res[name] = dict(median=statistics.median(ts), min=min(ts),
                             minflt=statistics.median(flt) if flt else None,
                             sys=statistics.median(sys_s) if sys_s else None, timer=timers[name])
        return res

    def __call__(self, fn, reps: int, warmup: int) -> float:
        r = self.many({"f": fn}, reps, warmup)["f"]
        if isinstance(r, Exception):
            raise r
        return r["median"]


def steady_heap() -> bool:
    """glibc keeps freed memory (emodarts/runtime/heap.py), for every implementation alike."""
    from emodarts.runtime.heap import keep_freed_memory

    return keep_freed_memory()


def make_inputs(k, shape, dtype, dev, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n_edges = max(1, (k + 6) // 7)  # a node: E incoming edges x up to 7 non-`none` candidates
    alpha = torch.randn(n_edges, 8, generator=gen).to(dev)
    index = [(i % n_edges, 1 + i // n_edges) for i in range(k)]
    ys = [torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype).to(dev) for _ in range(k)]
    g = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype).to(dev)
    return ys, alpha, index, g


def bench_case(impls, k, shape, dtype, dev, timer, reps, warmup):
    ys, alpha, index, g = make_inputs(k, shape, dtype, dev)
    ys_g = [y.clone().requires_grad_(True) for y in ys]
    alpha_g = alpha.clone().requires_grad_(True)
    n = ys[0].numel()
    b = ys[0].element_size()
    calls = {}
    nbytes = {"fwd": (k + 1) * n * b, "fwd+bwd": (3 * k + 2) * n * b}
    for name, fn in impls.items():
        def fwd(fn=fn):
            with torch.no_grad():
                fn(ys, alpha, index)

        def fwd_bwd(fn=fn):
            out = fn(ys_g, alpha_g, index)
            torch.autograd.grad(out, ys_g + [alpha_g], g)

        calls[(name, "fwd")] = fwd
        calls[(name, "fwd+bwd")] = fwd_bwd
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        res = timer.many({name: calls[(name, mode)] for name in impls}, reps, warmup)
        for name in impls:
            r = res[name]
            if isinstance(r, Exception):
                rows.append(dict(impl=name, mode=mode, error=f"{type(r).__name__}: {r}"[:300]))
                continue
            t = r["median"]
            rows.append(dict(impl=name, mode=mode, ms=t * 1e3, min_ms=r["min"] * 1e3, min_bytes=nbytes[mode],
                             gbps=nbytes[mode] / t / 1e9, minflt_per_call=r["minflt"],
                             sys_ms_per_call=None if r["sys"] is None else r["sys"] * 1e3, timer=r["timer"]))
    return rows


def copy_bandwidth(n, dtype, dev, timer, reps, warmup):
    src = torch.randn(n, device=dev).to(dtype)
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src), reps, warmup)
    return 2 * n * src.element_size() / t / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer K, sizes and repetitions (CPU: ~2-4 minutes)")
    ap.add_argument("--ks", type=int, nargs="+", help="numbers of inputs (default 2 4 8 12 16; quick: 2 8 16)")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), help="default: all (CPU: up to paper C32)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    ap.add_argument("--reps", type=int, help="timed repetitions (default GPU 50, CPU 25; quick: GPU 20, CPU 15)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    ap.add_argument("--heap", choices=("default", "steady"), default="default",
                    help="steady: glibc keeps freed memory (no page faults on reused outputs), for all impls")
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-round order of the implementations")
    ap.add_argument("--out", help="JSON path (default bench/results/mixed_sum_<device>.json)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    dtype = DTYPES[args.dtype]
    ks = args.ks or ([2, 8, 16] if args.quick else [2, 4, 8, 12, 16])
    if args.sizes:
        sizes = {s: SIZES[s] for s in args.sizes}
    elif gpu:
        sizes = dict(SIZES)
    else:  # the 64 MB case takes minutes per K on a small CPU
        sizes = {s: v for s, v in SIZES.items() if not s.startswith("64MB")}
    reps = args.reps or ((20 if args.quick else 50) if gpu else (15 if args.quick else 25))
    timer = Timer(dev, args.seed)
    heap = args.heap
    if heap == "steady" and not steady_heap():
        print("--heap steady: no glibc mallopt here, running with the default heap")
        heap = "default"

    impls = {"eager": mixed_sum.mixed_sum_reference}
    if not args.no_compile:
        # one graph per (K, size, grad mode): lift dynamo's recompile limit (default 8), or it silently
        # falls back to eager after a few cases
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, 4096)
        impls["compile"] = torch.compile(mixed_sum.mixed_sum_reference, dynamic=False)
    if gpu:
        impls["fused"] = mixed_sum.mixed_sum_triton
        fused_kind = "triton"
    else:
        mixed_sum.cpp_ops()  # build/load the extension before timing
        impls["fused"] = mixed_sum.mixed_sum_cpp
        fused_kind = "c++"
    fused_info = _cpp_info() if not gpu else None

    results = []
    copy_bw = {}
    doc = dict(
        benchmark="mixed_sum",
        device=str(dev),
        device_name=device_name(dev),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=shlex.join([os.path.basename(sys.executable)] + sys.argv),
        torch=torch.__version__,
        triton=_triton_version(),
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        heap=heap,
        fused_info=fused_info,
        order=f"random per round (seed {args.seed})",
        load_average=_loadavg(),
        dtype=args.dtype,
        fused=fused_kind,
        reps=reps,
        timing="median (and min) of reps after warm-up, implementations timed round-robin in a random order"
        + (f" (CUDA events around a CUDA graph of {GRAPH_CALLS} calls, per call; `timer` per row)" if gpu
           else " (perf_counter; minflt_per_call and sys_ms_per_call: medians, getrusage)"),
        bytes_model="fwd (K+1)*N*b, fwd+bwd (3K+2)*N*b (bwd alone (2K+1)*N*b)",
        copy_gbps_per_tensor=copy_bw,
    )
    out = ResultsFile(args.out or f"mixed_sum_{dev.type}.json", doc)
    print(f"device {dev} ({device_name(dev)}), dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"fused = {fused_kind}{f' ({fused_info})' if fused_info else ''}, reps {reps}, heap {heap}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    hdr = f"{'size':<26}{'K':>3} {'mode':<8}" + "".join(f"{n + ' ms':>13}{n + ' GB/s':>13}" for n in impls)
    hdr += f"{'fused/eager':>12}{'fused/comp':>11}{'%copy':>7}{'copy GB/s':>10}"
    print(hdr)
    for sname, shape in sizes.items():
        n = 1
        for s in shape:
            n *= s
        bw_t = copy_bandwidth(n, dtype, dev, timer, reps, args.warmup)
        copy_bw[sname] = bw_t
        print(f"{sname}: {n * torch.finfo(dtype).bits // 8 / 2**20:.1f} MB per tensor, copy {bw_t:.2f} GB/s")
        for k in ks:
            # copy bandwidth at the forward's working set ((K+1)*N elements touched), the fair yardstick
            # once that outgrows the caches
            bw = copy_bandwidth(max(n, (k + 1) * n // 2), dtype, dev, timer, reps, args.warmup)
            rows = bench_case(impls, k, shape, dtype, dev, timer, reps, args.warmup)
            for mode in ("fwd", "fwd+bwd"):
                by = {r["impl"]: r for r in rows if r["mode"] == mode}
                line = f"{sname:<26}{k:>3} {mode:<8}"
                for name in impls:
                    r = by.get(name, {})
                    line += f"{r['ms']:>13.3f}{r['gbps']:>13.2f}" if "ms" in r else f"{'error':>13}{'':>13}"
                f, e, c = by.get("fused", {}), by.get("eager", {}), by.get("compile", {})
                sp_e = e["ms"] / f["ms"] if "ms" in f and "ms" in e else float("nan")
                sp_c = c["ms"] / f["ms"] if "ms" in f and "ms" in c else float("nan")
                pct = 100 * f["gbps"] / bw if "gbps" in f else float("nan")
                line += f"{sp_e:>12.2f}{sp_c:>11.2f}{pct:>7.0f}{bw:>10.1f}"
                if not gpu:  # per call: min ms, minor faults, system ms (medians)
                    line += "   min ms / faults / sys ms: " + ", ".join(
                        f"{name} {by[name]['min_ms']:.2f}/{by[name]['minflt_per_call']:.0f}/"
                        f"{by[name]['sys_ms_per_call']:.1f}"
                        for name in impls if "min_ms" in by.get(name, {}) and by[name]["minflt_per_call"] is not None)
                print(line, flush=True)
                for r in by.values():
                    results.append(dict(size=sname, shape=list(shape), numel=n, k=k, dtype=args.dtype, **r,
                                        speedup_vs_eager=sp_e if r["impl"] == "fused" else None,
                                        speedup_vs_compile=sp_c if r["impl"] == "fused" else None,
                                        copy_gbps=bw, copy_gbps_tensor=bw_t))
            out.update(results=results, copy_gbps_per_tensor=copy_bw)

    path = out.finish(results=results, copy_gbps_per_tensor=copy_bw)
    print(f"wrote {path}")
    return out.payload


def _cpp_info():
    try:
        return torch.ops.emodarts.mixed_sum_cpu_info()
    except (AttributeError, RuntimeError):  # an extension built before the op existed
        return None


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()
