"""The grouped recurrent layer: `grouped_recurrent_reference` (each candidate module on the shared input) and
`grouped_recurrent_fused` (all of them in one kernel call; `grouped_recurrent_kernel` at float32/float64).

Plain-PyTorch twin of the grouped recurrent layer (emodarts/ops/grouped_recurrent.py): the oracle.

`grouped_recurrent(x, rnns)` calls each candidate module on the shared input, one at a time, exactly as the
reference supernet does: cuDNN on a GPU, PyTorch's CPU kernels (oneDNN for float32 LSTMs) on the CPU.

Grouped recurrent layer: many nn.LSTM / nn.RNN candidates that read one input, run as one kernel call.

    outs = grouped_recurrent(x, [lstm_1.rnn, rnn_2.rnn, lstm_att_1.rnn, ...])
    # outsequals rnns[i](x)[0]: (B, T, D) for batch_first modules, D = H or 2H (bidirectional)

The fused twin of emodarts.ops.grouped_recurrent_reference. The weights stay in the modules' own
parameters (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ..., *_reverse): gradients flow back to
them, and a genotype-derived network loads them unchanged.

How the modules are run. Every (module, layer, direction) is a *unit*. All units of layer 0 read x and run
as one group: one call of the C++/CUDA op `emodarts::grouped_rnn_forward` (one GEMM for every input
projection, then a time loop with the recurrent GEMMs of all units and one fused epilogue per step; see
csrc/grouped_rnn.cpp and csrc/cuda/grouped_rnn_cuda.cu). Deeper layers (num_layers 2..4) run as further
groups with per-unit inputs (the unit's own previous layer; both directions of it for bidirectional
modules), one group per layer and input width. Inside a group LSTM units come first, then tanh-RNN units,
forward directions before reverse ones.

The op takes each unit's own parameter and input tensors (lists; nothing is concatenated or stacked per call).

Autograd: `emodarts::grouped_rnn_backward` (registered here with torch.library.register_autograd) runs
backward through time and returns the gradients of x and of every unit's weights and bias, each only when
this backward needs it (emodarts/ops/grad_need.py: an alpha step computes no weight gradient); b_ih and
b_hh get equal gradients in separate tensors. A fake (meta) kernel is registered for torch.compile /
opcheck. Double backward is not supported.

Supported: nn.LSTM and nn.RNN(nonlinearity="tanh"), any num_layers, bidirectional, bias or not, batch_first or
not, float32 and float64 (CPU and CUDA), bfloat16 inputs on the CPU (bf16 products, float32 weights), modules
of different hidden sizes (one call per hidden size), inter-layer dropout (applied here with F.dropout in
training mode, like PyTorch's own non-cuDNN path). Not supported: proj_size, relu RNNs, GRUs, initial states
(h0 = c0 = 0 as in module(x)), packed sequences.

Outputs of unidirectional modules are views (B, T, H) of a time-major buffer (strides (H, B*H, 1)); they
are not copied into contiguous memory (the mixed sum reads strided inputs in place).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emodarts.ops.grad_need import wanted_any

# --------------------------------------------------------------------------------------------------
# the reference twin

def grouped_recurrent_reference(x: Tensor, rnns: Sequence[nn.Module]) -> List[Tensor]:
    """[rnn(x)[0] for rnn in rnns]: each candidate's output sequence ((B, T, D) when batch_first)."""
    return [rnn(x)[0] for rnn in rnns]


# --------------------------------------------------------------------------------------------------
# the fused op

OP_FWD = "emodarts::grouped_rnn_forward"
OP_BWD = "emodarts::grouped_rnn_backward"
SUPPORTED_DTYPES = (torch.float32, torch.float64)

# --------------------------------------------------------------------------------------------------
# the operators (loaded, and built when needed, by emodarts/ops/compiled/cpp.py and cuda.py)


def ops():
    """torch.ops.emodarts with the grouped-RNN ops loaded (JIT-building the extension if needed), their fake
    kernels and autograd registered."""
    from emodarts.ops.compiled.cpp import load_ops

    return load_ops(OP_FWD, OP_BWD, "csrc/grouped_rnn.cpp", _fwd_fake, _bwd_fake, _backward, _setup_context)


def ensure_cuda() -> None:
    """Make the CUDA kernels of the grouped ops available (the extension's CUDA library: installed by setup.py
    or JIT-compiled once; see emodarts/ops/compiled/cuda.py)."""
    from emodarts.ops.compiled import cuda as compiled_cuda

    ops()
    compiled_cuda.ensure_cuda(OP_FWD, "csrc/cuda/grouped_rnn_cuda.cu")


def cpu_gemm_path(bf16: bool = False) -> str:
    """'blas' (the CPU kernel calls the BLAS linked into PyTorch) or 'aten' (ATen GEMMs); for bf16 inputs
    'blas-bf16' (MKL's bf16 GEMM) or 'float32-copies' (float32 GEMMs on copies of the bf16 operands)."""
    return ops().grouped_rnn_cpu_gemm(bf16)


def _fwd_fake(xs, w_ih, w_hh, b_ih, b_hh, n_lstm, reverse):
    x, w = xs[0], w_hh[0]  # hs in x's dtype; cs and gates in the weights' (float32 for bf16 inputs)
    k, t, b, h = len(reverse), x.shape[0], x.shape[1], w.shape[1]
    g = sum(w.shape[0] for w in w_hh)
    return (x.new_empty((k, t, b, h)), w.new_empty((n_lstm, t, b, h)), w.new_empty((t * b * g,)))


def _bwd_fake(grad_hs, xs, w_ih, w_hh, hs, cs, gates, n_lstm, reverse, output_mask):
    need_x, need_wi, need_wh, need_b = output_mask
    return ([x.new_empty(x.shape) for x in xs] if need_x else [],
            [w.new_empty(w.shape) for w in w_ih] if need_wi else [],
            [w.new_empty(w.shape) for w in w_hh] if need_wh else [],
            [w.new_empty((w.shape[0],)) for w in w_hh] if need_b else [])


def _setup_context(ctx, inputs, output):
    xs, w_ih, w_hh, b_ih, b_hh, n_lstm, reverse = inputs
    hs, cs, gates = output
    ctx.save_for_backward(hs, cs, gates, *xs, *w_ih, *w_hh)
    ctx.n_lstm, ctx.reverse, ctx.k, ctx.kx = int(n_lstm), list(reverse), len(w_ih), len(xs)
    ctx.mark_non_differentiable(cs, gates)  # saved state, not results
    ctx.set_materialize_grads(False)


def _per_unit(grads: List[Tensor], n: int) -> List[Optional[Tensor]]:
    """A kernel's n per-unit gradients, or n Nones when it computed none (an empty list)."""
    return list(grads) if grads else [None] * n


def _backward(ctx, grad_hs, grad_cs, grad_gates):
    hs, cs, gates, *tensors = ctx.saved_tensors
    k, kx = ctx.k, ctx.kx
    xs, w_ih, w_hh = tensors[:kx], tensors[kx:kx + k], tensors[kx + k:]
    # one flag per kind (the inputs, w_ih, w_hh, the biases: an alpha step wants the inputs' only); a kind the
    # kernel computes is handed back whole (the engine drops what it does not run: no per-unit questions)
    mask = wanted_any(ctx, [(0, kx), (kx, kx + k), (kx + k, kx + 2 * k), (kx + 2 * k, kx + 4 * k)])
    if grad_hs is None or not any(mask):
        return [None] * kx, [None] * k, [None] * k, [None] * k, [None] * k, None, None
    gx, gwi, gwh, gb = torch.ops.emodarts.grouped_rnn_backward(
        grad_hs.contiguous(), xs, w_ih, w_hh, hs, cs, gates, ctx.n_lstm, ctx.reverse, mask)
    # b_ih and b_hh get the same gradient, as two tensors: an optimiser or clip_grad_norm_ scales grads in place
    return (_per_unit(gx, kx), _per_unit(gwi, k), _per_unit(gwh, k), _per_unit(gb, k),
            _per_unit([g.clone() for g in gb], k), None, None)


def grouped_rnn_layer(xs: Sequence[Tensor], w_ih: Sequence[Tensor], w_hh: Sequence[Tensor], b_ih: Sequence[Tensor],
                      b_hh: Sequence[Tensor], n_lstm: int, reverse: Sequence[int]) -> Tensor:
    """One group, time-major: inputs xs (T, B, I), one shared by every unit or one per unit (the same tensor may
    appear twice, read in place) -> hs (K, T, B, H) (see csrc/grouped_rnn.cpp for the layout).

    Units 0..n_lstm-1 are LSTM, the rest tanh-RNN; w_ih[k] (g_k, I), w_hh[k] (g_k, H), b_ih[k] and b_hh[k]
    (g_k,) are unit k's own parameters (g_k = 4H or H), read in place; reverse[k] != 0 runs unit k backwards
    in time."""
    o = ops()
    if xs[0].device.type == "cuda":
        ensure_cuda()
    hs, _, _ = o.grouped_rnn_forward([x.contiguous() for x in xs], list(w_ih), list(w_hh), list(b_ih), list(b_hh),
                                     int(n_lstm), [int(r) for r in reverse])
    return hs


# --------------------------------------------------------------------------------------------------
# modules -> units -> groups


@dataclass
class _Unit:
    module: int  # index into the (same hidden size) module list
    layer: int
    reverse: bool
    lstm: bool
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor]
    b_hh: Optional[Tensor]


def _check_module(i: int, m: nn.Module, x: Tensor) -> None:
    if isinstance(m, nn.LSTM):
        if getattr(m, "proj_size", 0):
            raise ValueError(f"grouped_recurrent: module {i}: LSTMs with proj_size are not supported")
    elif isinstance(m, nn.RNN):
        if m.nonlinearity != "tanh":
            raise ValueError(f"grouped_recurrent: module {i}: only tanh RNNs are supported, not {m.nonlinearity}")
    else:
        raise TypeError(f"grouped_recurrent: module {i} is a {type(m).__name__}, not an nn.LSTM or nn.RNN")
    if m.input_size != x.shape[-1]:
        raise ValueError(f"grouped_recurrent: module {i} has input_size {m.input_size}, x has {x.shape[-1]}")


def _units(mods: Sequence[nn.Module]) -> List[_Unit]:
    units = []
    for i, m in enumerate(mods):
        for layer in range(m.num_layers):
            for rev in ((False, True) if m.bidirectional else (False,)):
                sfx = f"_l{layer}" + ("_reverse" if rev else "")
                units.append(_Unit(
                    i, layer, rev, isinstance(m, nn.LSTM), getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx),
                    getattr(m, "bias_ih" + sfx) if m.bias else None, getattr(m, "bias_hh" + sfx) if m.bias else None,
                ))
    return units


def _run_group(xs: List[Tensor], units: List[_Unit]) -> Dict[Tuple[int, int, bool], Tensor]:
    """Run one group (units already sorted LSTM first, forward first); returns (module, layer, rev) -> (T, B, H)."""
    n_lstm = sum(u.lstm for u in units)
    zeros = [u.w_hh.new_zeros(u.w_hh.shape[0]) if u.b_ih is None else None for u in units]  # modules without bias
    hs = grouped_rnn_layer(xs, [u.w_ih for u in units], [u.w_hh for u in units],
                           [u.b_ih if z is None else z for u, z in zip(units, zeros)],
                           [u.b_hh if z is None else z for u, z in zip(units, zeros)],
                           n_lstm, [int(u.reverse) for u in units])
    return {(u.module, u.layer, u.reverse): h for u, h in zip(units, hs.unbind(0))}


def _sorted(units: List[_Unit]) -> List[_Unit]:
    return sorted(units, key=lambda u: (not u.lstm, u.reverse))


def _grouped_same_hidden(x_tm: Tensor, mods: Sequence[nn.Module]) -> List[Tensor]:
    """Time-major x (T, B, I), modules of one hidden size -> time-major outputs (T, B, D)."""
    units = _units(mods)
    out: Dict[Tuple[int, int, bool], Tensor] = _run_group([x_tm], _sorted([u for u in units if u.layer == 0]))

    def layer_output(i: int, layer: int) -> Tensor:
        if mods[i].bidirectional:
            return torch.cat([out[(i, layer, False)], out[(i, layer, True)]], dim=-1)
        return out[(i, layer, False)]

    depth = max(m.num_layers for m in mods)
    for layer in range(1, depth):
        deeper = [u for u in units if u.layer == layer]
        inputs = {}
        for i in sorted({u.module for u in deeper}):
            h = layer_output(i, layer - 1)
            m = mods[i]
            if m.dropout > 0 and m.training:
                h = F.dropout(h, p=m.dropout, training=True)
            inputs[i] = h
        for width in sorted({inputs[u.module].shape[-1] for u in deeper}):
            group = _sorted([u for u in deeper if inputs[u.module].shape[-1] == width])
            out.update(_run_group([inputs[u.module] for u in group], group))
    return [layer_output(i, m.num_layers - 1) for i, m in enumerate(mods)]


def grouped_recurrent_fused(x: Tensor, rnns: Sequence[nn.Module]) -> List[Tensor]:
    """grouped_recurrent_kernel at the dtype the kernels run in: float32/float64 as they are; on the CPU, bf16
    inputs or bf16 autocast run the bf16 products (bf16 x and outputs, as nn.LSTM under autocast hands back;
    float32 weights, state and sums: csrc/grouped_rnn_bf16.h); other low precisions a float32 copy of x, with
    outputs handed back in x's dtype (the mixed sum expects one dtype per node)."""
    if x.device.type == "cpu" and (x.dtype == torch.bfloat16 or (
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)):
        with torch.autocast("cpu", enabled=False):
            return grouped_recurrent_kernel(x.to(torch.bfloat16), rnns)
    if x.dtype in SUPPORTED_DTYPES:
        return grouped_recurrent_kernel(x, rnns)
    with torch.autocast(x.device.type, enabled=False):
        return [y.to(x.dtype) for y in grouped_recurrent_kernel(x.float(), rnns)]


def grouped_recurrent_kernel(x: Tensor, rnns: Sequence[nn.Module]) -> List[Tensor]:
    """The fused twin of grouped_recurrent_reference: [rnn(x)[0] for rnn in rnns], float32 or float64 (and
    bfloat16 x on the CPU: bf16 products, float32 weights).

    x: (B, T, I) for batch_first modules, (T, B, I) otherwise (all modules must agree). Every module is an
    nn.LSTM or tanh nn.RNN with input_size I. Returns each module's output sequence, (B, T, D) or (T, B, D)
    with D = hidden_size * (2 if bidirectional else 1).
    """
    rnns = list(rnns)
    if not rnns:
        return []
    if x.dim() != 3:
        raise ValueError(f"grouped_recurrent: x must be 3-D (batch, time, features), got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES and not (x.dtype == torch.bfloat16 and x.device.type == "cpu"):
        raise ValueError(f"grouped_recurrent: unsupported dtype {x.dtype} (float32 or float64; bfloat16 on the CPU)")
    batch_first = rnns[0].batch_first
    for i, m in enumerate(rnns):
        _check_module(i, m, x)
        if m.batch_first != batch_first:
            raise ValueError("grouped_recurrent: the modules disagree on batch_first")
    x_tm = x.transpose(0, 1) if batch_first else x
    outs: List[Optional[Tensor]] = [None] * len(rnns)
    for hidden in sorted({m.hidden_size for m in rnns}):
        idx = [i for i, m in enumerate(rnns) if m.hidden_size == hidden]
        for i, y in zip(idx, _grouped_same_hidden(x_tm, [rnns[i] for i in idx])):
            outs[i] = y.transpose(0, 1) if batch_first else y
    return outs  # type: ignore[return-value]
