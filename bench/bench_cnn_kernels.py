"""The CPU pointwise and multi batch-norm kernels alone, at the tiny preset's three map sizes (the normal cells'
32 x 4 x 20 x 47 and the two reduction cells' 32 x 8 x 10 x 24 and 32 x 16 x 5 x 12), four maps per call as a
search state hands them over, against their reference twins (one einsum / one ATen batch norm per map) in the
same run, round-robin. The small planes are where vector tails and lane totals cost most (csrc/pointwise_kernels.h,
csrc/multi_bn_kernels.h). Warm caches: a whole step, whose maps come from memory, gains less (bench_search.py).
The table is printed; everything goes to bench/results/cnn_kernels_cpu.json.

    python bench/bench_cnn_kernels.py --threads 2
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import add_run_options, run_settings, timed_round_robin, timing_header, write_json  # noqa: E402

from emodarts.ops import batch_norms, pointwise  # noqa: E402
from emodarts.runtime.heap import keep_freed_memory  # noqa: E402

SHAPES = [(32, 4, 20, 47), (32, 8, 10, 24), (32, 16, 5, 12)]
MAPS = 4


def steps_for(shape):
    """{kernel: {impl: step}} for MAPS maps of `shape`."""
    c = shape[1]
    xs = [torch.randn(shape) for _ in range(MAPS)]
    gs = [torch.randn(shape) for _ in range(MAPS)]
    ws = [torch.randn(c, c) for _ in range(MAPS)]
    stats = ([torch.zeros(c) for _ in xs], [torch.ones(c) for _ in xs], [torch.zeros((), dtype=torch.long) for _ in xs])
    o = torch.ops.emodarts
    ys, invstds = o.multi_bn_fwd(xs, *stats, [0.1] * MAPS, [1] * MAPS, 1e-5)
    ref_bn_in = [x.detach().clone().requires_grad_(True) for x in xs]
    ref_bn_out = [F.batch_norm(x, torch.zeros(c), torch.ones(c), training=True) for x in ref_bn_in]
    ref_pw_in = [x.detach().clone().requires_grad_(True) for x in xs]
    ref_ws = [w.detach().clone().requires_grad_(True) for w in ws]
    ref_pw_out = [pointwise.einsum_pointwise(x, w) for x, w in zip(ref_pw_in, ref_ws)]
    return {
        "pointwise fwd": {"reference": lambda: [pointwise.einsum_pointwise(x, w) for x, w in zip(xs, ws)],
                          "fused": lambda: o.pointwise_fwd(xs, ws)},
        "pointwise bwd": {"reference": lambda: torch.autograd.grad(ref_pw_out, ref_pw_in + ref_ws, gs, retain_graph=True),
                          "fused": lambda: o.pointwise_bwd(gs, xs, ws, [True] * MAPS, [True] * MAPS)},
        "batch norm fwd": {"reference": lambda: [F.batch_norm(x, torch.zeros(c), torch.ones(c), training=True) for x in xs],
                           "fused": lambda: o.multi_bn_fwd(xs, *stats, [0.1] * MAPS, [1] * MAPS, 1e-5)},
        "batch norm bwd": {"reference": lambda: torch.autograd.grad(ref_bn_out, ref_bn_in, gs, retain_graph=True),
                           "fused": lambda: o.multi_bn_bwd(gs, ys, invstds)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap, default_repeats=200)
    args = ap.parse_args()
    device, repeats, warmup = run_settings(args, 200, lambda: None)
    heap = keep_freed_memory()  # as the CLI: no page faults on the outputs
    batch_norms.ops()
    pointwise.ops()
    torch.manual_seed(0)
    rows = []
    print(f"{'maps':<18} {'kernel':<15} {'impl':<10} {'median us':>10} {'min us':>9} {'ns / element':>13} {'x ref':>6}")
    for shape in SHAPES:
        for kernel, impls in steps_for(shape).items():
            timed = timed_round_robin(impls, device, repeats, warmup)
            ref = timed["reference"][0]
            for impl, (median, best) in timed.items():
                per = 1e9 * median / (MAPS * torch.Size(shape).numel())
                rows.append({"shape": list(shape), "maps": MAPS, "kernel": kernel, "impl": impl, "median_s": median,
                             "min_s": best, "ns_per_element": per, "speedup_vs_reference": ref / median})
                print(f"{str(shape):<18} {kernel:<15} {impl:<10} {1e6 * median:>10.1f} {1e6 * best:>9.1f} {per:>13.2f} "
                      f"{ref / median:>6.2f}", flush=True)
    out = write_json(args.out or "cnn_kernels_cpu.json",
                     {**timing_header(device, "cnn_kernels", repeats, warmup, heap_steady=heap), "rows": rows})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
