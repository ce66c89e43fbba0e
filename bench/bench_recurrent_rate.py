"""How close the grouped recurrent layer runs to the machine's matrix-product rate.

The grouped layer's work is matrix products (input projections, recurrent products, and in backward the
products through W_hh, the weight gradients and the input gradient); this benchmark counts their
floating-point operations (2 per multiply-add; the gate arithmetic is not counted) and divides by the
measured time, for the forward, the backward of a weight step (every gradient) and the backward of an alpha
step (the input's gradient only). The yardstick is a plain (N x N) @ (N x N) product of the same dtype,
timed in the same run on the same threads: "share" is the layer's rate over that one.

Workload: the modules of one source state of a paper-preset sequential cell (4 edges x the 12 recurrent
candidates = 48 modules, 132 units; B=16, T=32, H=128), or one edge (--scope edge).

    python bench/bench_recurrent_rate.py --threads 2
    python bench/bench_recurrent_rate.py --threads 2 --scope edge --quick
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(ap, default_repeats=7)
    ap.add_argument("--scope", default="source", choices=sorted(EDGES))
    ap.add_argument("--gemm-size", type=int, default=2048, help="N of the plain N^3 yardstick product")
    args = ap.parse_args(argv)
    device, repeats, warmup = run_settings(args, 7, gr.ensure_cuda)
    B, T, H = SIZES["B"], SIZES["T"], SIZES["H"]
    torch.manual_seed(0)
    mods = [make_seq_op(name, H).rnn.to(device) for _ in range(EDGES[args.scope]) for name in RECURRENT_PRIMITIVES]
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    flops = unit_flops(mods, B, T, H)
    weights = [p for m in mods for p in m.parameters()]
    outs: List[Tensor] = gr.grouped_recurrent_fused(x, mods)
    grads = [torch.randn_like(o) for o in outs]

    def fwd():
        gr.grouped_recurrent_fused(x, mods)

    def fwd_bwd(inputs):
        def run():
            ys = gr.grouped_recurrent_fused(x, mods)
            torch.autograd.grad(ys, inputs, grads)
        return run

    t_fwd = median_time(fwd, device, repeats, warmup)
    t_all = median_time(fwd_bwd([x] + weights), device, repeats, warmup) - t_fwd
    t_x = median_time(fwd_bwd([x]), device, repeats, warmup) - t_fwd
    peak = gemm_rate(args.gemm_size, torch.float32, device, repeats)
    rows = []
    for name, seconds, work in (("forward", t_fwd, flops["fwd"]), ("backward, every gradient", t_all, flops["bwd_all"]),
                                ("backward, input only", t_x, flops["bwd_x"])):
        rate = work / seconds
        rows.append({"pass": name, "seconds": seconds, "gflop": work / 1e9, "gflops": rate / 1e9,
                     "share_of_gemm": rate / peak})
    print(f"grouped recurrent layer, {args.scope} scope ({len(mods)} modules), B={B} T={T} H={H}, float32, "
          f"{torch.get_num_threads()} threads; plain {args.gemm_size}^3 product: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'pass':<26} {'ms':>9} {'GFLOP':>8} {'GFLOP/s':>9} {'share':>7}")
    for r in rows:
        print(f"{r['pass']:<26} {1e3 * r['seconds']:>9.1f} {r['gflop']:>8.2f} {r['gflops']:>9.1f} "
              f"{100 * r['share_of_gemm']:>6.0f}%")
    payload = {**timing_header(device, "recurrent_rate", repeats, warmup), "scope": args.scope, "sizes": SIZES,
               "modules": len(mods), "gemm_size": args.gemm_size, "gemm_gflops": peak / 1e9, "rows": rows}
    path = write_json(args.out or f"recurrent_rate_{device.type}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
