"""The DARTS recurrent cell over a whole sequence: `darts_rnn_reference` (plain PyTorch, the oracle) and
`darts_rnn_fused` (one C++/CUDA op).

The DARTS recurrent cell (docs/method.md, last section) over a whole sequence, in plain PyTorch: the oracle
of the fused epilogue in the extension.

Per time step t, with h the previous output (h0 before the first step):
    [c0 | z0] = x_proj+ h W0h                      x_proj = x W0x is computed by the caller
    s0 = h + sigmoid(c0) * (tanh(z0) - h)
    node i = 0 .. S-1 reads every earlier state s_j (j = 0 .. i) through one shared matrix W_i:
    [C_j | Z_j] = s_j W_i,  c_j = sigmoid(C_j)
    s_{i+1} = sum_j sum_f p[e, f] * (s_j + c_j * (f(Z_j) - s_j)),   e = i (i + 1) / 2 + j
    h_t = mean(s_1 .. s_S)
f runs over DARTS_ACTIVATIONS; `none` is never computed (its softmax mass only shrinks the other p).

The DARTS recurrent cell over a whole sequence as one fused op: the twin of
emodarts.ops.darts_rnn.darts_rnn_reference (same signature, same contract).

    hs = darts_rnn_fused(x_proj, h0, w0h, ws, probs)   # (T, B, H)

x_proj (T, B, 2H) = x W0x (the caller's GEMM; may be strided, e.g. a transposed batch-first tensor),
h0 (B, H), w0h (H, 2H), ws (S, H, 2H), probs (S (S + 1) / 2, 4): the mixing weights of tanh, relu, sigmoid,
identity on every edge (rows may sum to less than 1: the `none` mass).

It runs the C++/CUDA op `emodarts::darts_rnn_forward` (the whole time loop in C++: per step one GEMM for
h W0h, per node one GEMM of the stacked states by W_i and one fused epilogue; see csrc/darts_rnn.cpp and
csrc/cuda/darts_rnn_cuda.cu). `emodarts::darts_rnn_backward`, registered here with
torch.library.register_autograd, runs backward through time and returns the gradients of x_proj, h0, w0h,
ws and probs. Fake (meta) kernels are registered for torch.compile / opcheck. Double backward is not
supported (the search's second-order step uses finite differences of first-order gradients).

dtypes: float32 and float64 run as they are (an input of the other of the two is promoted, as the
reference's type promotion would). bf16 / fp16 inputs, or any input under autocast (float64 aside, which
autocast leaves alone), run in float32 with autocast off and the result is cast back to x_proj's dtype
(the idea of backend._fp32_grouped: the kernel accumulates in float32).
"""
from typing import Tuple

import torch
from torch import Tensor

from emodarts.ops.grad_need import wanted

# --------------------------------------------------------------------------------------------------
# the reference twin

DARTS_ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")


def n_darts_edges(steps: int) -> int:
    """Edges of a DARTS recurrent cell with `steps` nodes: node i reads states 0 .. i."""
    return steps * (steps + 1) // 2


def edge_index(node: int, source: int) -> int:
    """Row of the alpha / probs matrix for node `node` reading state `source`."""
    return node * (node + 1) // 2 + source


def activations(z: Tensor) -> Tensor:
    """(F, *z.shape): every candidate activation of z, in DARTS_ACTIVATIONS order."""
    return torch.stack([torch.tanh(z), torch.relu(z), torch.sigmoid(z), z])


def darts_rnn_reference(x_proj: Tensor, h0: Tensor, w0h: Tensor, ws: Tensor, probs: Tensor) -> Tensor:
    """Run the mixed DARTS cell over time.

    x_proj (T, B, 2H), h0 (B, H), w0h (H, 2H), ws (S, H, 2H), probs (S (S + 1) / 2, 4): the mixing weight of
    tanh, relu, sigmoid, identity on every edge. Returns every h_t, (T, B, H).
    """
    steps, hidden = ws.shape[0], h0.shape[-1]
    h, outputs = h0, []
    for t in range(x_proj.shape[0]):
        c0, z0 = (x_proj[t] + h @ w0h).split(hidden, dim=-1)
        states = [h + torch.sigmoid(c0) * (torch.tanh(z0) - h)]
        for i in range(steps):
            prev = torch.stack(states)  # (i + 1, B, H)
            c, z = (prev @ ws[i]).split(hidden, dim=-1)
            c = torch.sigmoid(c)
            blended = prev + c * (activations(z) - prev)  # (F, i + 1, B, H)
            p = probs[edge_index(i, 0) : edge_index(i, 0) + i + 1].t()  # (F, i + 1)
            states.append((p[:, :, None, None] * blended).sum(dim=(0, 1)))
        h = torch.stack(states[1:]).mean(dim=0)
        outputs.append(h)
    return torch.stack(outputs)


# --------------------------------------------------------------------------------------------------
# the fused op

OP_FWD = "emodarts::darts_rnn_forward"
OP_BWD = "emodarts::darts_rnn_backward"
LOW_PRECISION = (torch.float16, torch.bfloat16)


def ops():
    """torch.ops.emodarts with the DARTS-cell ops loaded (JIT-building the extension if needed), their fake
    kernels and autograd registered."""
    from emodarts.ops.compiled.cpp import load_ops

    return load_ops(OP_FWD, OP_BWD, "csrc/darts_rnn.cpp", _fwd_fake, _bwd_fake, _backward, _setup_context)


def ensure_cuda() -> None:
    """Make the CUDA kernels of the DARTS-cell ops available: they are built with the other CUDA kernels of
    the extension into one library (installed as emodarts._C_cuda by setup.py, or JIT-compiled once; see
    emodarts/ops/compiled/cuda.py)."""
    from emodarts.ops.compiled import cuda as compiled_cuda

    ops()
    compiled_cuda.ensure_cuda(OP_FWD, "csrc/cuda/darts_rnn_cuda.cu")


def _fwd_fake(x_proj, h0, w0h, ws, probs):
    t, b, h, s = x_proj.shape[0], x_proj.shape[1], h0.shape[-1], ws.shape[0]
    e = s * (s + 1) // 2
    return (x_proj.new_empty((t, b, h)), x_proj.new_empty((t, s + 1, b, h)), x_proj.new_empty((t, b, 2 * h)),
            x_proj.new_empty((t, e, b, 2 * h)))


def _bwd_fake(grad_hs, h0, w0h, ws, probs, hs, states, pre0, pre, output_mask):
    t, b, h = hs.shape
    grads = (hs.new_empty((t, b, 2 * h)), hs.new_empty((b, h)), hs.new_empty((h, 2 * h)),
             hs.new_empty(tuple(ws.shape)), hs.new_empty(tuple(probs.shape)))
    return tuple(g if m else None for g, m in zip(grads, output_mask))


def _setup_context(ctx, inputs, output):
    _, h0, w0h, ws, probs = inputs
    hs, states, pre0, pre = output
    ctx.save_for_backward(h0, w0h, ws, probs, hs, states, pre0, pre)
    ctx.mark_non_differentiable(states, pre0, pre)  # saved state, not results
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_hs, grad_states, grad_pre0, grad_pre):
    need = wanted(ctx)  # x_proj, h0, w0h, ws, probs: an alpha step wants no w0h or ws gradient
    if grad_hs is None or not any(need):
        return None, None, None, None, None
    h0, w0h, ws, probs, hs, states, pre0, pre = ctx.saved_tensors
    with torch.autocast(hs.device.type, enabled=False):
        return tuple(torch.ops.emodarts.darts_rnn_backward(grad_hs.contiguous(), h0, w0h, ws, probs, hs, states,
                                                           pre0, pre, need))


def _check(x_proj: Tensor, h0: Tensor, w0h: Tensor, ws: Tensor, probs: Tensor) -> None:
    for name, t in (("x_proj", x_proj), ("h0", h0), ("w0h", w0h), ("ws", ws), ("probs", probs)):
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise ValueError(f"darts_rnn_fused: {name} must be a floating-point tensor")
        if t.device != x_proj.device:
            raise ValueError(f"darts_rnn_fused: {name} is on {t.device}, x_proj on {x_proj.device}")
    if x_proj.dim() != 3 or h0.dim() != 2 or w0h.dim() != 2 or ws.dim() != 3 or probs.dim() != 2:
        raise ValueError("darts_rnn_fused: expected x_proj (T, B, 2H), h0 (B, H), w0h (H, 2H), ws (S, H, 2H), "
                         f"probs (E, 4); got {tuple(x_proj.shape)}, {tuple(h0.shape)}, {tuple(w0h.shape)}, "
                         f"{tuple(ws.shape)}, {tuple(probs.shape)}")
    t, b, h2 = x_proj.shape
    h, s = h0.shape[1], ws.shape[0]
    if t < 1 or b < 1 or h < 1 or s < 1:
        raise ValueError(f"darts_rnn_fused: empty sizes (T={t}, B={b}, H={h}, S={s}) are not supported")
    if (h2 != 2 * h or h0.shape[0] != b or tuple(w0h.shape) != (h, 2 * h) or tuple(ws.shape[1:]) != (h, 2 * h)
            or tuple(probs.shape) != (s * (s + 1) // 2, 4)):
        raise ValueError("darts_rnn_fused: inconsistent shapes: x_proj (T, B, 2H), h0 (B, H), w0h (H, 2H), "
                         f"ws (S, H, 2H), probs (S(S+1)/2, 4); got {tuple(x_proj.shape)}, {tuple(h0.shape)}, "
                         f"{tuple(w0h.shape)}, {tuple(ws.shape)}, {tuple(probs.shape)}")


def compute_dtypes(x_proj: Tensor, *others: Tensor) -> Tuple[torch.dtype, torch.dtype]:
    """(the dtype the kernel runs in, the dtype of the result)."""
    tensors = (x_proj,) + others
    autocast = torch.is_autocast_enabled(x_proj.device.type)
    if any(t.dtype in LOW_PRECISION for t in tensors) or (
            autocast and any(t.dtype != torch.float64 for t in tensors)):
        return torch.float32, x_proj.dtype
    dtype = x_proj.dtype
    for t in others:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype, dtype


def darts_rnn_fused(x_proj: Tensor, h0: Tensor, w0h: Tensor, ws: Tensor, probs: Tensor) -> Tensor:
    """Fused twin of darts_rnn_reference: every h_t of the mixed DARTS cell, (T, B, H)."""
    _check(x_proj, h0, w0h, ws, probs)
    o = ops()
    if x_proj.device.type == "cuda":
        ensure_cuda()
    dtype, out_dtype = compute_dtypes(x_proj, h0, w0h, ws, probs)
    args = [t.to(dtype) for t in (x_proj, h0, w0h, ws, probs)]
    if torch.is_autocast_enabled(x_proj.device.type):
        with torch.autocast(x_proj.device.type, enabled=False):
            hs = o.darts_rnn_forward(*args)[0]
    else:
        hs = o.darts_rnn_forward(*args)[0]
    return hs if hs.dtype == out_dtype else hs.to(out_dtype)
