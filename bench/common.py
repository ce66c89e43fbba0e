"""Shared bits of the benchmarks: device names, medians of timed runs, result files."""
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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


def header(device: torch.device) -> Dict[str, object]:
    return {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(["python"] + sys.argv),
        "threads": torch.get_num_threads(),
    }


def write_json(name: str, payload: Dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
