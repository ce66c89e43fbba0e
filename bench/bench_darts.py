"""Benchmark of the mixed DARTS recurrent cell over a whole sequence (emodarts/ops/darts_rnn.py's
contract): the eager reference vs torch.compile of the reference's *cell step* vs the fused op.

Workload: one DARTS layer, darts_rnn(x_proj, h0, w0h, ws, probs) -> hs (T, B, H), float32:
  tiny   H=32,  S=4 nodes (10 edges), T=12, B=32
  paper  H=128, S=8 nodes (36 edges), T=32, B=16
Inputs as the search cell makes them: x_proj = (x W0x)^T, a transposed batch-first tensor (not
contiguous), h0 = 0, W0x / w0h / ws ~ uniform(-0.04, 0.04) (the DARTS init), probs = the 4 activation
columns of softmax(alpha) over 5 candidates with alpha = 0 (the start of a search), each node's rows divided
by its number of predecessors, as emodarts.model.cells.darts.MixedDartsCell does (summed instead of averaged over
predecessors, the 8-node cell's states grow geometrically and overflow at T = 32). The script checks that the
outputs are finite and that the three implementations agree.

Implementations:
  reference  darts_rnn_reference, eager PyTorch (per step: stack, matmul, split, activations, weighted sum)
  compile    torch.compile(dynamic=False) of the reference's *cell step* (one time step: the h W0h GEMM, s0,
             the S nodes, the mean), called from an eager Python loop over time steps; the unrolled time loop
             is not compiled. Compile time is excluded (warm-up).
  fused      emodarts.ops.darts_rnn.darts_rnn_fused (the whole time loop in one C++ / CUDA op)
Memory (CUDA only; skipped on the CPU): the fused op's forward+backward at a large size, --memory-size
(default H=1024, S=8 nodes (36 edges), T=128, B=128), with torch.cuda.max_memory_allocated over the call and
its share above the inputs; the backward keeps one step of [dC | dZ] and of the state gradients and
accumulates dW_i step by step, where a (T, E, B, 2H) stack took 4.8 GB at that size (the forward's saved
pre-activations (T, E, B, 2H) are the bulk of what remains). Written under "memory" in the JSON.
Modes: fwd (forward with autograd recording, as in a search step) and fwd+bwd (forward, then backward of a
random output gradient into x_proj, w0h, ws and probs). Median and min wall time over --repeats runs after
--warmup runs, the implementations timed round-robin (one run of each in turn, so that they see the same load
on a shared machine); CUDA timings are synchronised. The table is printed; everything goes to
bench/results/darts_<device>.json with the device name, date, command, threads, load average and
OMP_WAIT_POLICY.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_darts.py              # CPU, 1 thread, ~5 min on 2 cores
    python bench/bench_darts.py --device cuda                        # + peak memory at H=1024, T=B=128
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    add_run_options,
    timing_header,
    run_settings,
    timed_round_robin,
    ResultsFile,
)
from emodarts.ops import darts_rnn  # noqa: E402
from emodarts.ops import grouped_recurrent as gr  # noqa: E402
from emodarts.ops.darts_rnn import (  # noqa: E402
    activations,
    darts_rnn_reference,
    edge_index,
    n_darts_edges,
)

PRESETS = {"tiny": dict(H=32, S=4, T=12, B=32), "paper": dict(H=128, S=8, T=32, B=16)}
MEMORY_SIZE = dict(H=1024, S=8, T=128, B=128)  # the size of issue 13's memory review (E = 36)
INIT = 0.04


# --------------------------------------------------------------------------------------------------
# torch.compile: the cell step is compiled, the time loop stays in Python


def cell_step(x_t: Tensor, h: Tensor, w0h: Tensor, ws: Tensor, probs: Tensor) -> Tensor:
    """One time step of darts_rnn_reference (the same operations, in the same order)."""
    steps, hidden = ws.shape[0], h.shape[-1]
    c0, z0 = (x_t + h @ w0h).split(hidden, dim=-1)
    states = [h + torch.sigmoid(c0) * (torch.tanh(z0) - h)]
    for i in range(steps):
        prev = torch.stack(states)
        c, z = (prev @ ws[i]).split(hidden, dim=-1)
        c = torch.sigmoid(c)
        blended = prev + c * (activations(z) - prev)
        p = probs[edge_index(i, 0): edge_index(i, 0) + i + 1].t()
        states.append((p[:, :, None, None] * blended).sum(dim=(0, 1)))
    return torch.stack(states[1:]).mean(dim=0)


_compiled: Dict[str, Callable] = {}


def compiled_step() -> Callable:
    if "step" not in _compiled:
        # one graph per preset and per requires_grad pattern of h (h0 has none): above dynamo's default limit
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(getattr(dynamo_config, "recompile_limit", 8), 64)
        dynamo_config.cache_size_limit = max(getattr(dynamo_config, "cache_size_limit", 8), 64)
        _compiled["step"] = torch.compile(cell_step, dynamic=False)
    return _compiled["step"]


def run_compiled(x_proj: Tensor, h0: Tensor, w0h: Tensor, ws: Tensor, probs: Tensor) -> Tensor:
    step = compiled_step()
    h, outputs = h0, []
    for t in range(x_proj.shape[0]):
        h = step(x_proj[t], h, w0h, ws, probs)
        outputs.append(h)
    return torch.stack(outputs)


IMPLS: Dict[str, Callable] = {
    "reference": darts_rnn_reference,
    "compile": run_compiled,
    "fused": darts_rnn.darts_rnn_fused,
}


# --------------------------------------------------------------------------------------------------
# workload


def build(preset, device: torch.device, seed: int = 0):
    """Leaf parameters (w0x, w0h, ws, alpha) and h0; x_proj is recomputed per run from x (as in the cell).
    `preset`: a name of PRESETS or a dict with H, S, T, B."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    H, S, T, B = p["H"], p["S"], p["T"], p["B"]
    gen = torch.Generator().manual_seed(seed)

    def uniform(*shape):
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * INIT).to(device).requires_grad_(True)

    x = torch.randn(B, T, 2 * H, generator=gen).to(device)
    alpha = torch.zeros(n_darts_edges(S), 5).to(device).requires_grad_(True)
    fan_in = torch.tensor([i + 1.0 for i in range(S) for _ in range(i + 1)], device=device)[:, None]
    return {"fan_in": fan_in, "x": x, "w0x": uniform(2 * H, 2 * H), "w0h": uniform(H, 2 * H), "ws": uniform(S, H, 2 * H),
            "alpha": alpha, "h0": torch.zeros(B, H, device=device)}


def layer_inputs(w):
    x_proj = (w["x"] @ w["w0x"].t()).transpose(0, 1)  # (T, B, 2H), strided
    probs = torch.softmax(w["alpha"], dim=-1)[:, :4] / w["fan_in"]
    return x_proj, w["h0"], w["w0h"], w["ws"], probs


def make_step(fn: Callable, w, mode: str) -> Callable[[], Tensor]:
    grad = None

    def step():
        nonlocal grad
        out = fn(*layer_inputs(w))
        if mode == "fwd+bwd":
            if grad is None:
                gen = torch.Generator().manual_seed(1)
                grad = torch.randn(out.shape, generator=gen).to(out.device)
            torch.autograd.grad(out, [w["w0x"], w["w0h"], w["ws"], w["alpha"]], grad)
        return out

    return step


def gemm_gflop(preset: str) -> float:
    """GEMM work of one forward of the layer (h W0h and every node's stacked-states GEMM; the x W0x projection
    before it is not counted); backward does twice that."""
    p = PRESETS[preset]
    return p["T"] * 2 * p["B"] * p["H"] * 2 * p["H"] * (1 + n_darts_edges(p["S"])) / 1e9


def check_agreement(w, impls: List[str]) -> Dict[str, float]:
    """Max. relative difference of every implementation's output from the reference's; outputs finite."""
    with torch.no_grad():
        outs = {i: IMPLS[i](*layer_inputs(w)) for i in impls}
    ref = outs.get("reference", next(iter(outs.values())))
    for name, o in outs.items():
        if not torch.isfinite(o).all():
            raise RuntimeError(f"{name}: non-finite outputs")
    scale = ref.abs().max().item()
    return {i: (o - ref).abs().max().item() / scale for i, o in outs.items()}


def parse_size(text: str) -> Dict[str, int]:
    """'H=1024,S=8,T=128,B=128' -> dict (missing keys from MEMORY_SIZE)."""
    size = dict(MEMORY_SIZE)
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        if key.strip() not in size:
            raise argparse.ArgumentTypeError(f"unknown size key {key!r} (H, S, T, B)")
        size[key.strip()] = int(value)
    return size


def measure_memory(size: Dict[str, int], device: torch.device, repeats: int) -> Dict[str, object]:
    """Peak CUDA memory and time of the fused op's forward+backward at `size` (float32)."""
    import statistics
    import time

    H, S, T, B = size["H"], size["S"], size["T"], size["B"]
    E, f = n_darts_edges(S), 4
    w = build(size, device)
    step = make_step(IMPLS["fused"], w, "fwd+bwd")
    step()  # warm
    torch.cuda.synchronize(device)
    times = []
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device)
    return {
        **size, "edges": E, "dtype": "float32", "median_s": statistics.median(times), "repeats": len(times),
        "peak_bytes": int(peak), "peak_above_inputs_bytes": int(peak - base),
        "saved_pre_bytes": T * E * B * 2 * H * f, "saved_states_bytes": T * (S + 1) * B * H * f,
        "old_backward_stacks_bytes": {"dpre (T, E, B, 2H)": T * E * B * 2 * H * f,
                                      "dstates (T, S+1, B, H)": T * (S + 1) * B * H * f,
                                      "per-step dW (T, H, 2H)": T * H * 2 * H * f},
        "note": "peak over forward+backward (x W0x, the layer, autograd's saved state and the gradients); the "
                "old_backward_stacks are what the backward allocated before issue 13 on top of that",
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(ap, default_repeats=9)
    ap.add_argument("--presets", default="tiny,paper")
    ap.add_argument("--impls", default="reference,compile,fused")
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--memory-size", type=parse_size, default=dict(MEMORY_SIZE),
                    help="CUDA: peak memory of the fused forward+backward at this size (default "
                         "H=1024,S=8,T=128,B=128); skipped on the CPU")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    args = ap.parse_args(argv)
    device, repeats, warmup = run_settings(args, 9, darts_rnn.ensure_cuda)
    impls = [s for s in args.impls.split(",") if s]
    base = [i for i in ("reference", "compile") if i in impls]
    print("compile = torch.compile(dynamic=False) of the reference's cell step (one time step), eager loop over "
          "time; compile time excluded")
    cols = [f"{i} ms" for i in impls] + [f"{i} min" for i in impls]
    ratio_names = [f"{b}/{i}" for b in base for i in impls if i != b and not (b == "compile" and i == "reference")]
    print(f"{'preset':6} {'mode':7} " + " ".join(f"{c:>14}" for c in cols) + "  "
          + " ".join(f"{r:>17}" for r in ratio_names))
    payload = timing_header(
        device, "darts_rnn", repeats, warmup, cpu_gemm_path=gr.cpu_gemm_path() if device.type == "cpu" else None,
        compile="torch.compile(dynamic=False) of the reference's cell step (one time step: h W0h, s0, the S "
                "nodes, the mean); eager Python loop over time steps; compile time excluded",
        inputs=f"x_proj = (x W0x)^T strided, h0 = 0, weights uniform(-{INIT}, {INIT}), "
               "probs = softmax(alpha)[:, :4] / predecessors of the node, alpha = 0",
        speedup_note="a/b = median time of a / median time of b (> 1: b is faster)")
    results = ResultsFile(args.out or f"darts_{device.type}.json", payload)
    rows = []
    for preset in args.presets.split(","):
        w = build(preset, device)
        agreement = check_agreement(w, impls)
        for mode in args.modes.split(","):
            tm = timed_round_robin({i: make_step(IMPLS[i], w, mode) for i in impls}, device, repeats, warmup)
            res = {i: {"median_s": tm[i][0], "min_s": tm[i][1]} for i in impls}
            ratios = {r: res[r.split("/")[0]]["median_s"] / res[r.split("/")[1]]["median_s"] for r in ratio_names}
            row = {"preset": preset, **PRESETS[preset], "edges": n_darts_edges(PRESETS[preset]["S"]), "mode": mode,
                   "times": res, "speedup": ratios, "max_rel_diff_vs_reference": agreement}
            if "fused" in res:
                flop = gemm_gflop(preset) * (3 if mode == "fwd+bwd" else 1)
                row["fused_gemm_gflops_per_s"] = flop / res["fused"]["median_s"]
            rows.append(row)
            results.update(rows=rows)
            print(f"{preset:6} {mode:7} " + " ".join(f"{res[i]['median_s'] * 1e3:14.2f}" for i in impls) + " "
                  + " ".join(f"{res[i]['min_s'] * 1e3:14.2f}" for i in impls) + "  "
                  + " ".join(f"{ratios[r]:17.2f}" for r in ratio_names), flush=True)
    memory = None
    if device.type == "cuda" and not args.no_memory and "fused" in impls:
        memory = measure_memory(args.memory_size, device, 1 if args.quick else 3)
        print(f"memory: fused fwd+bwd at H={memory['H']} S={memory['S']} T={memory['T']} B={memory['B']}: peak "
              f"{memory['peak_bytes'] / 2**30:.2f} GiB ({memory['peak_above_inputs_bytes'] / 2**30:.2f} GiB above "
              f"the inputs), {memory['median_s'] * 1e3:.1f} ms", flush=True)
    elif device.type != "cuda":
        print("memory: skipped on the CPU (the large size is a GPU measurement)")
    path = results.finish(rows=rows, memory=memory)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
