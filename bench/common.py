"""Shared bits of the benchmarks: device names, medians of timed runs, result files."""
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

# where result files go: bench/results, or EMODARTS_BENCH_RESULTS (run_all.py --results-dir, e.g. its dry run)
RESULTS = Path(os.environ.get("EMODARTS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn` after warm-up (CUDA events on a GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_round_robin(steps: Dict[str, Callable[[], object]], device: torch.device, repeats: int,
                      warmup: int) -> Dict[str, Tuple[float, float]]:
    """{impl: (median, min)} seconds; the implementations are timed round-robin (one run of each in turn),
    so that they see the same load on a shared machine."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def add_run_options(ap, default_repeats: int) -> None:
    """The options every layer benchmark shares: device, threads, repeats, warm-up, output name."""
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1: a shared machine)")
    ap.add_argument("--quick", action="store_true",
                    help=f"3 timed runs each, 1 warm-up (default {default_repeats} and 2)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON file name under bench/results/")


def run_settings(args, default_repeats: int, ensure_cuda: Callable[[], None]) -> Tuple[torch.device, int, int]:
    """(device, repeats, warm-up runs) from add_run_options' options; sets the CPU threads or builds the CUDA
    kernels."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        ensure_cuda()
    repeats = args.repeats or (3 if args.quick else default_repeats)
    warmup = args.warmup or (1 if args.quick else 2)
    return device, repeats, warmup


def header(device: torch.device) -> Dict[str, object]:
    return {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(["python"] + sys.argv),
        "threads": torch.get_num_threads(),
    }


def timing_header(device: torch.device, benchmark: str, repeats: int, warmup: int, **extra) -> Dict[str, object]:
    """header() plus what a float32 timing benchmark records about its run: repeats, warm-up, load average and
    the OpenMP wait policy (then `extra`)."""
    return {**header(device), "benchmark": benchmark, "dtype": "float32", "repeats": repeats, "warmup": warmup,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), **extra}


def write_json(name: str, payload: Dict[str, object]) -> Path:
    """RESULTS/name (or the path `name`), replaced atomically: a reader (run_all's summary) never sees half a file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


class ResultsFile:
    """A benchmark's JSON, rewritten after every measured row: a run stopped at its time limit (run_all,
    gpu_check.sh) still leaves every row it measured, with "complete": false until finish()."""

    def __init__(self, name: str, payload: Dict[str, object]):
        self.name, self.payload = name, {**payload, "complete": False}

    def update(self, **fields) -> Path:
        self.payload.update(fields)
        return write_json(self.name, self.payload)

    def finish(self, **fields) -> Path:
        return self.update(**fields, complete=True)
