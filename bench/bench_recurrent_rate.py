"""How close the grouped recurrent layer runs to the machine's matrix-product rate.

The grouped layer's work is matrix products (input projections, recurrent products, and in backward the
products through W_hh, the weight gradients and the input gradient); this benchmark counts their
floating-point operations (2 per multiply-add; the gate arithmetic is not counted) and divides by the
measured time, for the forward, the backward of a weight step (every gradient) and the backward of an alpha
step (the input's gradient only). The yardstick is a plain (N x N) @ (N x N) product of the same dtype,
timed in the same run on the same threads: "share" is the layer's rate over that one. The reference (the
modules called one by one, PyTorch's own kernels) runs the same passes in the same run: "x ref" is its time
over the fused layer's.

--dtypes float32,bfloat16: bfloat16 runs as `--amp bf16` does (CPU autocast: bf16 inputs and products,
float32 weights; the fused layer's bf16 products, csrc/grouped_rnn_bf16.h), against a plain bf16 product.

Workload: the modules of one source state of a paper-preset sequential cell (4 edges x the 12 recurrent
candidates = 48 modules, 132 units; B=16, T=32, H=128), or one edge (--scope edge).

    python bench/bench_recurrent_rate.py --threads 2
    python bench/bench_recurrent_rate.py --threads 2 --dtypes float32,bfloat16
    python bench/bench_recurrent_rate.py --threads 2 --scope edge --quick
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import add_run_options, median_time, run_settings, timing_header, write_json  # noqa: E402
from emodarts.model.seq_ops import make_seq_op  # noqa: E402
from emodarts.model.space import RECURRENT_PRIMITIVES  # noqa: E402
from emodarts.ops import grouped_recurrent as gr  # noqa: E402

SIZES = dict(B=16, T=32, H=128)  # the paper preset's sequential part
EDGES = {"edge": 1, "source": 4}


def unit_flops(mods: Sequence[nn.Module], B: int, T: int, I: int) -> Dict[str, float]:
    """Matrix-product flops of running `mods` on one (B, T, I) input: forward, backward into x only, and
    backward into x and every weight."""
    fwd = bwd_x = bwd_w = 0.0
    for m in mods:
        g = (4 if isinstance(m, nn.LSTM) else 1) * m.hidden_size
        h = m.hidden_size
        for layer in range(m.num_layers):
            width = I if layer == 0 else h * (2 if m.bidirectional else 1)
            for _ in range(2 if m.bidirectional else 1):
                proj, rec = 2.0 * T * B * width * g, 2.0 * (T - 1) * B * h * g
                fwd += proj + rec
                bwd_x += rec + proj  # dh through W_hh each step, dx = dgates W_ih
                bwd_w += rec + proj  # dW_hh, dW_ih
    return {"fwd": fwd, "bwd_x": bwd_x, "bwd_all": bwd_x + bwd_w}


def gemm_rate(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """Flops per second of a plain (n x n) @ (n x n) product."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2.0 * n ** 3 / median_time(lambda: a @ b, device, repeats, warmup=2)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def passes(layer: Callable, x: Tensor, mods, dtype: torch.dtype, device: torch.device, repeats: int,
           warmup: int) -> Dict[str, float]:
    """Seconds of `layer(x, mods)`'s forward, and of the backward into every gradient and into x alone."""
    weights = [p for m in mods for p in m.parameters()]
    amp = dtype != torch.float32

    def run(inputs=None):
        with torch.autocast(device.type, dtype, enabled=amp):
            ys = layer(x, mods)
        if inputs is not None:
            torch.autograd.grad(ys, inputs, [torch.ones_like(y) for y in ys])

    t_fwd = median_time(run, device, repeats, warmup)
    return {"forward": t_fwd,
            "backward, every gradient": median_time(lambda: run([x] + weights), device, repeats, warmup) - t_fwd,
            "backward, input only": median_time(lambda: run([x]), device, repeats, warmup) - t_fwd}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(ap, default_repeats=7)
    ap.add_argument("--scope", default="source", choices=sorted(EDGES))
    ap.add_argument("--gemm-size", type=int, default=2048, help="N of the plain N^3 yardstick product")
    ap.add_argument("--dtypes", default="float32", help="comma list of float32, bfloat16")
    ap.add_argument("--no-reference", action="store_true", help="skip the modules called one by one")
    args = ap.parse_args(argv)
    device, repeats, warmup = run_settings(args, 7, gr.ensure_cuda)
    B, T, H = SIZES["B"], SIZES["T"], SIZES["H"]
    torch.manual_seed(0)
    mods = [make_seq_op(name, H).rnn.to(device) for _ in range(EDGES[args.scope]) for name in RECURRENT_PRIMITIVES]
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    flops = unit_flops(mods, B, T, H)
    work = {"forward": flops["fwd"], "backward, every gradient": flops["bwd_all"],
            "backward, input only": flops["bwd_x"]}
    runs = []
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        peak = gemm_rate(args.gemm_size, dtype, device, repeats)
        fused = passes(gr.grouped_recurrent_fused, x, mods, dtype, device, repeats, warmup)
        ref = None if args.no_reference else passes(gr.grouped_recurrent_reference, x, mods, dtype, device,
                                                    repeats, warmup)
        rows = [{"pass": p, "seconds": s, "gflop": work[p] / 1e9, "gflops": work[p] / s / 1e9,
                 "share_of_gemm": work[p] / s / peak, "reference_seconds": None if ref is None else ref[p],
                 "x_reference": None if ref is None else ref[p] / s} for p, s in fused.items()]
        runs.append({"dtype": name, "gemm_gflops": peak / 1e9, "rows": rows,
                     "gemm_path": gr.cpu_gemm_path(dtype == torch.bfloat16) if device.type == "cpu" else "cuda"})
        print(f"grouped recurrent layer, {args.scope} scope ({len(mods)} modules), B={B} T={T} H={H}, {name}, "
              f"{torch.get_num_threads()} threads; plain {args.gemm_size}^3 product: {peak / 1e9:.1f} GFLOP/s")
        print(f"{'pass':<26} {'ms':>9} {'GFLOP':>8} {'GFLOP/s':>9} {'share':>7} {'ref ms':>9} {'x ref':>6}")
        for r in rows:
            ref_ms = "-" if r["reference_seconds"] is None else f"{1e3 * r['reference_seconds']:.1f}"
            x_ref = "-" if r["x_reference"] is None else f"{r['x_reference']:.2f}"
            print(f"{r['pass']:<26} {1e3 * r['seconds']:>9.1f} {r['gflop']:>8.2f} {r['gflops']:>9.1f} "
                  f"{100 * r['share_of_gemm']:>6.0f}% {ref_ms:>9} {x_ref:>6}")
    payload = {**timing_header(device, "recurrent_rate", repeats, warmup), "scope": args.scope, "sizes": SIZES,
               "modules": len(mods), "gemm_size": args.gemm_size, "runs": runs,
               # the float32 run's figures at the top level, as before --dtypes
               **({"gemm_gflops": runs[0]["gemm_gflops"], "rows": runs[0]["rows"]}
                  if runs[0]["dtype"] == "float32" else {})}
    path = write_json(args.out or f"recurrent_rate_{device.type}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
