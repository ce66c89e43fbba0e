"""Benchmark of the 3x3 pool pair of the CNN search cells, pool3x3_pair(x, stride) -> (max pool, avg pool):
the eager reference (two ATen pools) vs torch.compile of the reference vs the fused op (one C++ call, CPU).

Workload: x (B, C, H, W) float32 with requires_grad (as in a search step), stride 1 and 2, both outputs used:
  tiny   (16, 12, 20, 47), (16, 16, 10, 24)
  paper  (16, 24, 128, 128), (16, 32, 64, 64), (16, 64, 32, 32)
Implementations:
  reference  emodarts.ops.pools.pool3x3_pair_reference: F.max_pool2d + F.avg_pool2d(count_include_pad=False)
  compile    torch.compile(reference, dynamic=False), one graph per size and stride; compile time excluded
  fused      emodarts.ops.pools.pool3x3_pair_fused (csrc/pool3x3.cpp; on CUDA it is the reference itself)
Modes: fwd (forward, autograd recording) and fwd+bwd (forward, then the gradient of x from random gradients
of both outputs). Median and min wall time over --repeats runs after --warmup runs, the implementations
timed round-robin (one run of each in turn, so that they see the same load on a shared machine). Before
timing, the script checks that the three agree (max |difference| of the outputs and of grad_x). The table is
printed; everything goes to bench/results/pool_<device>.json with the device name, date, command, threads,
load average, OMP_WAIT_POLICY and the fused op's kernel copy (pool3x3_cpu_info).

    python bench/bench_pool.py --quick                 # CPU, 1 thread: a few minutes on 2 cores
    OMP_WAIT_POLICY=PASSIVE python bench/bench_pool.py --threads 2
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    add_run_options,
    header,
    run_settings,
    timed_round_robin,
    write_json,
)
from emodarts.ops import pools  # noqa: E402

SIZES = {  # name -> (B, C, H, W)
    "tiny-16x12x20x47": (16, 12, 20, 47),
    "tiny-16x16x10x24": (16, 16, 10, 24),
    "paper-16x24x128x128": (16, 24, 128, 128),
    "paper-16x32x64x64": (16, 32, 64, 64),
    "paper-16x64x32x32": (16, 64, 32, 32),
}

_compiled: Dict[str, Callable] = {}


def compiled_reference() -> Callable:
    if "ref" not in _compiled:
        import torch._dynamo.config as dynamo_config

        # one graph per size, stride and mode: above dynamo's default limit
        dynamo_config.recompile_limit = max(getattr(dynamo_config, "recompile_limit", 8), 64)
        dynamo_config.cache_size_limit = max(getattr(dynamo_config, "cache_size_limit", 8), 64)
        _compiled["ref"] = torch.compile(pools.pool3x3_pair_reference, dynamic=False)
    return _compiled["ref"]


IMPLS: Dict[str, Callable[[], Callable]] = {
    "reference": lambda: pools.pool3x3_pair_reference,
    "compile": compiled_reference,
    "fused": lambda: pools.pool3x3_pair_fused,
}


def build(shape: Tuple[int, ...], stride: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    ho, wo = pools.out_size(shape[2], stride), pools.out_size(shape[3], stride)
    gm = torch.randn(shape[0], shape[1], ho, wo, generator=gen).to(device)
    ga = torch.randn(shape[0], shape[1], ho, wo, generator=gen).to(device)
    return x, gm, ga


def make_step(fn: Callable, x, gm, ga, stride: int, mode: str) -> Callable[[], object]:
    def step():
        mx, av = fn(x, stride)
        if mode == "fwd+bwd":
            return torch.autograd.grad([mx, av], [x], [gm, ga])[0]
        return mx, av

    return step


def check_agreement(x, gm, ga, stride: int, impls) -> Dict[str, float]:
    """Max |difference| from the reference of max_out, avg_out and grad_x, per implementation."""
    res = {}
    for name in impls:
        mx, av = IMPLS[name]()(x, stride)
        gx = torch.autograd.grad([mx, av], [x], [gm, ga])[0]
        res[name] = (mx.detach(), av.detach(), gx)
    ref = res.get("reference", next(iter(res.values())))
    return {name: max((a - b).abs().max().item() for a, b in zip(r, ref)) for name, r in res.items()}


def min_bytes(shape, stride: int, mode: str, element: int = 4) -> int:
    """Bytes any implementation must move: forward reads x and writes both outputs; backward reads x and both
    output gradients and writes grad_x."""
    b, c, h, w = shape
    n_in, n_out = b * c * h * w, b * c * pools.out_size(h, stride) * pools.out_size(w, stride)
    fwd = n_in + 2 * n_out
    return element * (fwd + (2 * n_in + 2 * n_out if mode == "fwd+bwd" else 0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(ap, default_repeats=9)
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated keys of SIZES")
    ap.add_argument("--strides", default="1,2")
    ap.add_argument("--impls", default="reference,compile,fused")
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    args = ap.parse_args(argv)
    device, repeats, warmup = run_settings(args, 9, lambda: None)
    impls = [s for s in args.impls.split(",") if s]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    info = pools.cpu_info() if device.type == "cpu" and "fused" in impls else None
    base = [i for i in ("reference", "compile") if i in impls]
    ratio_names = [f"{b}/{i}" for b in base for i in impls if i != b and not (b == "compile" and i == "reference")]
    print("compile = torch.compile(dynamic=False) of the reference pair; compile time excluded")
    if info:
        print(f"fused: {info}")
    cols = [f"{i} ms" for i in impls]
    print(f"{'size':20} {'s':>1} {'mode':7} " + " ".join(f"{c:>13}" for c in cols) + "  "
          + " ".join(f"{r:>16}" for r in ratio_names) + f"  {'fused GB/s':>10}")
    rows = []
    for key in sizes:
        shape = SIZES[key]
        for stride in [int(s) for s in args.strides.split(",") if s]:
            x, gm, ga = build(shape, stride, device)
            agreement = check_agreement(x, gm, ga, stride, impls)
            for mode in args.modes.split(","):
                tm = timed_round_robin({i: make_step(IMPLS[i](), x, gm, ga, stride, mode) for i in impls}, device,
                                       repeats, warmup)
                res = {i: {"median_s": tm[i][0], "min_s": tm[i][1]} for i in impls}
                ratios = {r: res[r.split("/")[0]]["median_s"] / res[r.split("/")[1]]["median_s"]
                          for r in ratio_names}
                nbytes = min_bytes(shape, stride, mode)
                gbs = nbytes / res["fused"]["median_s"] / 1e9 if "fused" in res else None
                rows.append({"size": key, "shape": list(shape), "stride": stride, "mode": mode, "times": res,
                             "speedup": ratios, "min_bytes": nbytes, "fused_gb_per_s": gbs,
                             "max_abs_diff_vs_reference": agreement})
                print(f"{key:20} {stride:1d} {mode:7} "
                      + " ".join(f"{res[i]['median_s'] * 1e3:13.3f}" for i in impls) + "  "
                      + " ".join(f"{ratios[r]:16.2f}" for r in ratio_names)
                      + (f"  {gbs:10.2f}" if gbs is not None else ""), flush=True)
    payload = header(device)
    payload.update({
        "benchmark": "pool3x3_pair", "dtype": "float32", "repeats": repeats, "warmup": warmup,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "pool3x3_cpu_info": info,
        "compile": "torch.compile(dynamic=False) of emodarts.ops.pools.pool3x3_pair_reference; compile time "
                   "excluded (warm-up)",
        "inputs": "x ~ N(0, 1) with requires_grad, output gradients ~ N(0, 1); both outputs used",
        "speedup_note": "a/b = median time of a / median time of b (> 1: b is faster)",
        "rows": rows,
    })
    path = write_json(args.out or f"pool_{device.type}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
