"""Benchmark of the recurrent candidates: per-candidate module loop vs torch.compile vs the grouped layer.

Workloads (the recurrent parts of the 12 recurrent candidates lstm_1..4, rnn_1..4, lstm_att_1,2,
rnn_att_1,2, i.e. the nn.LSTM / nn.RNN each candidate wraps; attention heads are not included):
  edge    the 12 candidates of one edge, one input                                 (12 modules, 1 call)
  source  every edge leaving one source state of a 4-node sequential cell (4 edges) (48 modules, 1 call)
  cell    a whole 4-node sequential cell: 14 edges, grouped by source state
          (sources s0, s1, n0, n1, n2 with 4, 4, 3, 2, 1 edges)                    (168 modules, 5 calls)
Sizes: tiny (B=32, T=12, H=32) and paper (B=16, T=32, H=128). float32.

Implementations:
  loop      [m(x)[0] for m in modules]: cuDNN on a GPU, PyTorch's CPU kernels on the CPU (oneDNN for LSTMs)
  compile   torch.compile of the *cell* (one time step of an LSTM / RNN layer: both linears and the gate
            math), called from an eager Python loop over layers, directions and time steps; the unrolled time
            loop is not compiled. Compile time is excluded (warm-up).
  grouped   emodarts.ops.grouped_recurrent.grouped_recurrent_fused (one call per source; C++ on the CPU, CUDA on
            a GPU)
Modes: fwd (forward with autograd recording, as in a search step) and fwd+bwd (forward, then backward of
random output gradients into x and every weight). Median (and min) wall time over --repeats runs after
--warmup runs; CUDA timings are synchronised. The table is printed; everything goes to
bench/results/recurrent_<device>.json with the device name, date, command, threads and load average.

    python bench/bench_recurrent.py --quick                  # CPU, 1 thread, ~5 min on a small machine
    python bench/bench_recurrent.py --device cuda
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from emodarts.model.seq_ops import make_seq_op  # noqa: E402
from emodarts.model.space import RECURRENT_PRIMITIVES  # noqa: E402
from emodarts.ops import grouped_recurrent as gr  # noqa: E402

PRESETS = {"tiny": dict(B=32, T=12, H=32), "paper": dict(B=16, T=32, H=128)}
SCOPES = {"edge": [1], "source": [4], "cell": [4, 4, 3, 2, 1]}  # edges per source state


# --------------------------------------------------------------------------------------------------
# torch.compile: the cell is compiled, the time loop stays in Python


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
    return torch.tanh(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))


_compiled: Dict[str, Callable] = {}


def compiled_cells():
    if not _compiled:
        # one graph per input width, batch size and requires_grad pattern (h_0 has none): more than dynamo's
        # default limit of 8 recompiles per function over both presets
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(getattr(dynamo_config, "recompile_limit", 8), 256)
        dynamo_config.cache_size_limit = max(getattr(dynamo_config, "cache_size_limit", 8), 256)
        _compiled["lstm"] = torch.compile(lstm_cell, dynamic=False)
        _compiled["rnn"] = torch.compile(rnn_cell, dynamic=False)
    return _compiled


def run_compiled(x: Tensor, m: nn.Module) -> Tensor:
    """module(x)[0] for a batch_first nn.LSTM / nn.RNN, one compiled cell call per time step."""
    cells = compiled_cells()
    lstm = isinstance(m, nn.LSTM)
    inp = x.transpose(0, 1)  # (T, B, I)
    steps, batch = inp.shape[0], inp.shape[1]
    for layer in range(m.num_layers):
        outs = []
        for rev in ((False, True) if m.bidirectional else (False,)):
            sfx = f"_l{layer}" + ("_reverse" if rev else "")
            w = [getattr(m, n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h = inp.new_zeros(batch, m.hidden_size)
            c = inp.new_zeros(batch, m.hidden_size)
            hs: List[Tensor] = [None] * steps  # type: ignore[list-item]
            for s in range(steps):
                t = steps - 1 - s if rev else s
                if lstm:
                    h, c = cells["lstm"](inp[t], h, c, *w)
                else:
                    h = cells["rnn"](inp[t], h, *w)
                hs[t] = h
            outs.append(torch.stack(hs))
        inp = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    return inp.transpose(0, 1)


# --------------------------------------------------------------------------------------------------
# workloads


def build(scope: str, preset: str, device: torch.device, seed: int = 0):
    """Per source state: (input (B, T, H), its modules)."""
    torch.manual_seed(seed)
    p = PRESETS[preset]
    groups = []
    for n_edges in SCOPES[scope]:
        mods = [make_seq_op(name, p["H"]).rnn.to(device) for _ in range(n_edges) for name in RECURRENT_PRIMITIVES]
        x = torch.randn(p["B"], p["T"], p["H"], device=device, requires_grad=True)
        groups.append((x, mods))
    return groups


def impl_fn(name: str) -> Callable[[Tensor, Sequence[nn.Module]], List[Tensor]]:
    if name == "loop":
        return lambda x, mods: [m(x)[0] for m in mods]
    if name == "compile":
        return lambda x, mods: [run_compiled(x, m) for m in mods]
    if name == "grouped":
        return gr.grouped_recurrent_fused
    raise ValueError(name)


def make_step(fn, groups, mode: str) -> Callable[[], None]:
    grads = None

    def step():
        nonlocal grads
        outs = []
        for x, mods in groups:
            outs.extend(fn(x, mods))
        if mode == "fwd+bwd":
            if grads is None:
                gen = torch.Generator(device="cpu").manual_seed(1)
                grads = [torch.randn(o.shape, generator=gen).to(o.device) for o in outs]
            inputs = [x for x, _ in groups] + [p for _, mods in groups for m in mods for p in m.parameters()]
            torch.autograd.grad(outs, inputs, grads)

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(ap, default_repeats=7)
    ap.add_argument("--presets", default="tiny,paper")
    ap.add_argument("--scopes", default="edge,source,cell")
    ap.add_argument("--impls", default="loop,compile,grouped")
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    args = ap.parse_args(argv)
    device, repeats, warmup = run_settings(args, 7, gr.ensure_cuda)
    impls = [s for s in args.impls.split(",") if s]
    payload = timing_header(
        device, "recurrent", repeats, warmup, cpu_gemm_path=gr.cpu_gemm_path() if device.type == "cpu" else None,
        compile="torch.compile(dynamic=False) of the LSTM / RNN cell (one time step); Python loop over steps",
        workloads={k: f"{sum(v)} edges over {len(v)} source(s) x 12 recurrent candidates" for k, v in SCOPES.items()})
    results = ResultsFile(args.out or f"recurrent_{device.type}.json", payload)
    rows = []
    print(f"{'preset':6} {'scope':6} {'mode':7} " + " ".join(f"{i + ' ms':>12}" for i in impls)
          + "  " + " ".join(f"{'loop/' + i:>14}" for i in impls if i != "loop"))
    for preset in args.presets.split(","):
        for scope in args.scopes.split(","):
            groups = build(scope, preset, device)
            n_mod = sum(len(m) for _, m in groups)
            for mode in args.modes.split(","):
                tm = timed_round_robin({i: make_step(impl_fn(i), groups, mode) for i in impls}, device, repeats, warmup)
                res = {i: {"median_s": tm[i][0], "min_s": tm[i][1]} for i in impls}
                ratios = {f"loop/{i}": res["loop"]["median_s"] / res[i]["median_s"]
                          for i in impls if i != "loop" and "loop" in res}
                rows.append({"preset": preset, **PRESETS[preset], "scope": scope, "modules": n_mod,
                             "calls_grouped": len(groups), "mode": mode, "times": res, "speedup": ratios})
                results.update(rows=rows)
                print(f"{preset:6} {scope:6} {mode:7} "
                      + " ".join(f"{res[i]['median_s'] * 1e3:12.2f}" for i in impls) + "  "
                      + " ".join(f"{ratios[k]:14.2f}" for k in ratios), flush=True)
    path = results.finish(rows=rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
