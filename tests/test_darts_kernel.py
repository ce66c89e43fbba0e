"""The fused DARTS recurrent cell (emodarts/ops/darts_rnn.py, csrc/darts_rnn.cpp, csrc/cuda/darts_rnn_cuda.cu)
against its plain-PyTorch oracle emodarts.ops.darts_rnn.darts_rnn_reference.

Every comparison runs the same inputs through both and compares the output and the gradients of all five
inputs (x_proj, h0, w0h, ws, probs) under the same random output gradient. Errors are relative to the
largest magnitude of each reference tensor.
- float64 (the precision path: std::exp / std::tanh, dgemm): within 1e-10.
- float32: judged as `emodarts compare` judges (tests/parity.py): the fused op's error against the reference
  in float64 (the exact function) within 4x the float32 reference's own error, or below 5e-6 of the tensor's
  largest magnitude (or 8 ulps of the largest tensor). Both are float32 evaluations that round differently: sgemm with K up to 2H, the Cephes-style exp / tanh of
  the vectorised epilogue (max. rel. error ~2e-7), sums over predecessors and steps, all carried through the
  recurrence. On these inputs the fused op is measured at <= ~6e-7 and PyTorch's own float32 evaluation of
  the reference at <= ~7e-7: 5e-6 leaves a margin of ~8x for other BLAS builds and CPUs, and a wrong formula
  (a dropped term, a wrong derivative) gives errors of 1e-3 and more.
"""
import os

import pytest
import torch
from helpers import run_in_fresh_process
from parity import assert_parity

from emodarts.ops import darts_rnn as df
from emodarts.ops.compiled import cuda as compiled_cuda
from emodarts.ops import grouped_recurrent as gr
from emodarts.ops.darts_rnn import darts_rnn_reference, n_darts_edges
from emodarts.runtime.errors import BackendError

HAS_CUDA = torch.cuda.is_available()
TOL64 = 1e-10
TOL32 = 5e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="session")
def ops():
    """Load (JIT-building once if needed) the extension with the DARTS-cell ops."""
    try:
        return df.ops()
    except BackendError as exc:
        pytest.fail(f"the C++ extension did not load: {exc}")


# --------------------------------------------------------------------------------------------------
# inputs and comparison


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(b.abs().max().item(), 1e-30)
    return (a.to(b.dtype) - b).abs().max().item() / scale


def make_probs(edges: int, kind: str, gen: torch.Generator, dtype) -> torch.Tensor:
    """(E, 4) mixing weights, as the search makes them: softmax over 5 candidates (tanh, relu, sigmoid,
    identity, none), then the 4 computed columns (a strided view, rows summing to less than 1).
    kind: 'softmax' (random logits), 'dominant' (one random column per edge ~0.99), 'none_heavy' (`none` holds
    most of the mass: rows sum to ~0.1)."""
    logits = torch.randn(edges, 5, generator=gen, dtype=torch.float64)
    if kind == "dominant":
        cols = torch.randint(0, 4, (edges,), generator=gen)
        logits[torch.arange(edges), cols] += 8.0
    elif kind == "none_heavy":
        logits[:, 4] += 3.0
    elif kind != "softmax":
        raise ValueError(kind)
    return torch.softmax(logits, dim=-1).to(dtype)[:, :4]


def make_inputs(T, B, H, S, dtype=torch.float64, probs="softmax", seed=0, batch_first_x=True, strided_ws=False):
    """x_proj (T, B, 2H) (when batch_first_x: a transposed view of a wider batch-first tensor, never
    contiguous, even for B = 1 or T = 1), h0, w0h,
    ws (a transposed view when strided_ws), probs. Weights ~ N(0, 1 / (4H)) (std 0.044 at H = 128, twice the
    DARTS init's uniform(-0.04, 0.04)): with N(0, 1/H) an 8-node cell sums enough relu / identity paths to
    grow |h| to ~500 over 5 steps, an ill-conditioned test problem (every float32 evaluation, PyTorch's
    included, is then off by ~3e-5)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = randn(B, T, 2 * H + 3)[..., : 2 * H].transpose(0, 1) if batch_first_x else randn(T, B, 2 * H)
    h0 = randn(B, H, scale=0.5)
    w = 0.5 * H ** -0.5
    w0h = randn(H, 2 * H, scale=w)
    ws = randn(S, 2 * H, H, scale=w).transpose(1, 2) if strided_ws else randn(S, H, 2 * H, scale=w)
    p = make_probs(n_darts_edges(S), probs, gen, torch.float64)
    return [t.to(dtype) for t in (x, h0, w0h, ws, p)]


def run(fn, inputs, grad_out):
    """fn's output and the gradients of all five inputs (leaf copies that keep the inputs' strides)."""
    leaves = [t.detach().clone().requires_grad_(True) if t.is_contiguous() else
              t.detach().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out] + list(grads)


NAMES = ("out", "grad_x_proj", "grad_h0", "grad_w0h", "grad_ws", "grad_probs")


def compare(inputs, rel_floor, device="cpu", seed=1):
    """Fused (in the inputs' dtype) against the reference in float64 (the oracle), judged as `emodarts compare`
    judges (tests/parity.py): in float32 within 4x the float32 reference's own error, or below `rel_floor`."""
    T, B, H = inputs[0].shape[0], inputs[0].shape[1], inputs[1].shape[1]
    dtype = inputs[0].dtype
    grad_out = torch.randn(T, B, H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    oracle = run(darts_rnn_reference, [t.double() for t in inputs], grad_out)
    ref = None
    if dtype != torch.float64:
        ref = [t.cpu() for t in run(darts_rnn_reference, [t.to(device) for t in inputs], grad_out.to(device))]
    got = run(df.darts_rnn_fused, [t.to(device) for t in inputs], grad_out.to(device))
    for name, a in zip(NAMES, got):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}"
    triples = [(name, a.cpu(), ref[i] if ref else None, b) for i, (name, a, b) in enumerate(zip(NAMES, got, oracle))]
    return assert_parity(triples, dtype, rel_floor=rel_floor, what="DARTS cell")


# --------------------------------------------------------------------------------------------------
# parity on the CPU

CASES = {
    # name: (T, B, H, S, probs, extra)
    "T1_B1_S1": (1, 1, 5, 1, "softmax", {}),
    "oddT_oddH": (7, 3, 5, 3, "softmax", {}),
    "S8_H33": (3, 2, 33, 8, "softmax", {}),
    "B1_S8_dominant": (5, 1, 8, 8, "dominant", {}),
    "S1_long_none_heavy": (9, 2, 4, 1, "none_heavy", {}),
    "S4_dominant_strided_ws": (4, 3, 6, 4, "dominant", {"strided_ws": True}),
    "S2_contiguous_x": (3, 4, 7, 2, "none_heavy", {"batch_first_x": False}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_float64(ops, case):
    T, B, H, S, probs, extra = CASES[case]
    inputs = make_inputs(T, B, H, S, probs=probs, seed=len(case), **extra)
    if T * B > 1:  # (1, 1, 2H) is contiguous whatever its strides
        assert inputs[0].is_contiguous() == (not extra.get("batch_first_x", True))
    compare(inputs, TOL64)


F32_CASES = {
    "H16_S4": (6, 4, 16, 4, "softmax"),  # full 8-lane vectors only
    "H33_S8": (5, 3, 33, 8, "softmax"),  # vectors and a 1-lane tail
    "H5_S3_dominant": (7, 2, 5, 3, "dominant"),  # tail only
    "H12_S2_none_heavy": (3, 1, 12, 2, "none_heavy"),
}


@pytest.mark.parametrize("case", sorted(F32_CASES))
def test_matches_reference_float32(ops, case):
    T, B, H, S, probs = F32_CASES[case]
    compare(make_inputs(T, B, H, S, dtype=torch.float32, probs=probs, seed=len(case)), TOL32)


def test_saved_state_layout(ops):
    """The forward's outputs follow the layout csrc/darts_rnn.cpp documents (the CUDA kernels use the same)."""
    T, B, H, S = 3, 2, 4, 3
    x, h0, w0h, ws, p = make_inputs(T, B, H, S)
    hs, states, pre0, pre = torch.ops.emodarts.darts_rnn_forward(x, h0, w0h, ws, p)
    assert hs.shape == (T, B, H) and states.shape == (T, S + 1, B, H)
    assert pre0.shape == (T, B, 2 * H) and pre.shape == (T, n_darts_edges(S), B, 2 * H)
    h = h0
    for t in range(T):  # s0 and the gate of s0 / node 0, by hand
        pre_t = x[t] + h @ w0h
        assert torch.allclose(pre0[t, :, :H], torch.sigmoid(pre_t[:, :H]), atol=1e-12)
        assert torch.allclose(pre0[t, :, H:], pre_t[:, H:], atol=1e-12)
        s0 = h + torch.sigmoid(pre_t[:, :H]) * (torch.tanh(pre_t[:, H:]) - h)
        assert torch.allclose(states[t, 0], s0, atol=1e-12)
        assert torch.allclose(pre[t, 0, :, H:], s0 @ ws[0][:, H:], atol=1e-12)
        assert torch.allclose(hs[t], states[t, 1:].mean(0), atol=1e-12)
        h = hs[t]
    assert torch.allclose(hs, darts_rnn_reference(x, h0, w0h, ws, p), atol=1e-12)


def test_only_probs_needs_grad(ops):
    """The architect's step: only probs requires grad (weights frozen) - the other gradients are not returned."""
    x, h0, w0h, ws, p = make_inputs(4, 2, 6, 3)
    pf = p.clone().requires_grad_(True)
    pr = p.clone().requires_grad_(True)
    gf, = torch.autograd.grad(df.darts_rnn_fused(x, h0, w0h, ws, pf).square().sum(), [pf])
    gr_, = torch.autograd.grad(darts_rnn_reference(x, h0, w0h, ws, pr).square().sum(), [pr])
    assert rel_err(gf, gr_) <= TOL64
    with torch.no_grad():
        y = df.darts_rnn_fused(x, h0, w0h, ws, p)
    assert not y.requires_grad and rel_err(y, darts_rnn_reference(x, h0, w0h, ws, p)) <= TOL64


def test_mixed_dtypes_promote(ops):
    """float64 weights with float32 probs (the cell makes probs with alpha.float()): runs in float64 like the
    reference's type promotion, and probs gets a float32 gradient."""
    x, h0, w0h, ws, p = make_inputs(3, 2, 5, 2)
    p32 = p.float().requires_grad_(True)
    p32r = p.float().requires_grad_(True)
    y = df.darts_rnn_fused(x, h0, w0h, ws, p32)
    yr = darts_rnn_reference(x, h0, w0h, ws, p32r)
    assert y.dtype == yr.dtype == torch.float64
    assert rel_err(y, yr) <= TOL64
    g, = torch.autograd.grad(y.sum(), [p32])
    gr_, = torch.autograd.grad(yr.sum(), [p32r])
    assert g.dtype == torch.float32 and rel_err(g, gr_) <= 1e-6


def test_low_precision_runs_in_float32(ops):
    """bf16 x_proj, or float32 inputs under CPU bf16 autocast: computed in float32 (autocast off inside), the
    result cast back to x_proj's dtype; gradients reach the float32 weights in float32."""
    x, h0, w0h, ws, p = make_inputs(4, 3, 8, 3, dtype=torch.float32)
    leaves = [t.detach().clone().requires_grad_(True) for t in (w0h, ws, p)]
    xb = x.bfloat16()
    y = df.darts_rnn_fused(xb, h0, *leaves)
    expect = df.darts_rnn_fused(xb.float(), h0, w0h, ws, p)  # the same computation in float32
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, expect.bfloat16())
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = df.darts_rnn_fused(x, h0, w0h, ws, p)
        yr = darts_rnn_reference(x, h0, w0h, ws, p)  # bf16 matmuls inside: much less accurate
    assert ya.dtype == torch.float32
    assert torch.equal(ya, df.darts_rnn_fused(x, h0, w0h, ws, p))
    assert rel_err(yr.float(), ya) < 0.05  # the bf16-autocast reference is near, to bf16 precision


def test_aten_gemm_path(ops, monkeypatch):
    """The fallback that calls ATen GEMMs instead of the BLAS symbols (read at every call)."""
    monkeypatch.setenv("EMODARTS_GROUPED_GEMM", "aten")
    assert gr.cpu_gemm_path().split("+")[0] == "aten"
    compare(make_inputs(3, 2, 5, 3), TOL64)


def test_two_threads(ops):
    """Batch rows spread over 2 threads (B and H large enough for the epilogue's parallel path): same results
    as the reference, and the probs gradient (per-row partials summed in row order) is reproducible."""
    inputs = make_inputs(2, 48, 40, 4, dtype=torch.float32)
    torch.set_num_threads(2)
    try:
        compare(inputs, TOL32)
        grads = [run(df.darts_rnn_fused, inputs, torch.ones(2, 48, 40))[-1] for _ in range(2)]
    finally:
        torch.set_num_threads(1)
    assert torch.equal(grads[0], grads[1])


def test_baseline_epilogue_without_avx2(ops):
    """The baseline (SSE2) copy of the float32 epilogue, picked when AVX2 is switched off (read once per
    process, hence a subprocess)."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import torch; torch.set_num_threads(1)\n"
        "from test_darts_kernel import TOL32, compare, make_inputs\n"
        "compare(make_inputs(4, 3, 13, 3, dtype=torch.float32), TOL32)\n"
        "compare(make_inputs(5, 1, 8, 8, dtype=torch.float32, probs='dominant', seed=2), TOL32)\n"
    )
    run_in_fresh_process(code, EMODARTS_GROUPED_NO_AVX2="1", OMP_NUM_THREADS="1")


def backward_allocations(inputs) -> int:
    """Bytes the CPU op darts_rnn_backward allocates (every allocation inside it, freed or not: an upper
    bound on its peak), from the profiler's per-op memory records."""
    from torch.profiler import ProfilerActivity, profile

    saved = torch.ops.emodarts.darts_rnn_forward(*inputs)
    g = torch.randn_like(saved[0])
    args = (g,) + tuple(t.contiguous() for t in inputs[1:]) + tuple(saved) + ([True] * 5,)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.ops.emodarts.darts_rnn_backward(*args)
    events = prof.events()
    (op,) = [e for e in events if e.name == "emodarts::darts_rnn_backward"]
    inside = [e for e in events if e is not op and e.name != "[memory]"
              and op.time_range.start <= e.time_range.start <= op.time_range.end]
    return sum(max(e.self_cpu_memory_usage, 0) for e in inside) + max(op.self_cpu_memory_usage, 0)


def test_backward_keeps_one_step_of_pre_activation_gradients(ops):
    """Issue 13, item 5: the backward keeps [dC | dZ] for one step ((E, B, 2H)), not for all T steps
    ((T, E, B, 2H): 4.8 GB at E = 36, B = T = 128, H = 1024), accumulating dW_i step by step. Its allocations
    are its outputs plus one step's buffers, well under one (T, E, B, 2H) tensor."""
    T, B, H, S = 24, 4, 16, 8
    inputs = make_inputs(T, B, H, S, dtype=torch.float32)
    E, f = n_darts_edges(S), 4
    outputs = (T * B * 2 * H + B * H + H * 2 * H + S * H * 2 * H + E * 4) * f
    one_step = (E * B * 2 * H + (S + 1) * B * H + B * H) * f + B * E * 4 * 8
    all_steps = T * E * B * 2 * H * f
    got = backward_allocations(inputs)
    assert got > 0, "the profiler recorded no allocations"
    assert got <= outputs + 2 * one_step, (got, outputs, one_step, all_steps)
    assert got < outputs + all_steps // 4


# --------------------------------------------------------------------------------------------------
# autograd, registration, errors


def test_gradcheck(ops):
    x, h0, w0h, ws, p = make_inputs(3, 2, 3, 2, probs="none_heavy")
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in (x, h0, w0h, ws, p))
    assert torch.autograd.gradcheck(df.darts_rnn_fused, leaves, eps=1e-6, atol=1e-8)


def test_opcheck(ops):
    x, h0, w0h, ws, p = make_inputs(3, 2, 4, 2)
    args = tuple(t.detach().clone().requires_grad_(True) for t in (x, h0, w0h, ws, p))
    torch.library.opcheck(torch.ops.emodarts.darts_rnn_forward.default, args)
    with torch.no_grad():
        saved = torch.ops.emodarts.darts_rnn_forward(x, h0, w0h, ws, p)
    for mask in ([True] * 5, [True, True, False, False, True]):  # a weight step's, an alpha step's
        torch.library.opcheck(torch.ops.emodarts.darts_rnn_backward.default,
                              (torch.randn_like(saved[0]), h0, w0h, ws, p.contiguous()) + tuple(saved) + (mask,))


def test_rejects_bad_inputs(ops):
    x, h0, w0h, ws, p = make_inputs(2, 2, 4, 2)
    with pytest.raises(ValueError, match="inconsistent"):
        df.darts_rnn_fused(x, h0, w0h, ws, p[:2])
    with pytest.raises(ValueError, match="inconsistent"):
        df.darts_rnn_fused(x[..., :6], h0, w0h, ws, p)
    with pytest.raises(ValueError, match="floating"):
        df.darts_rnn_fused(x, h0, w0h, ws.long(), p)
    with pytest.raises(ValueError, match="empty"):
        df.darts_rnn_fused(x[:0], h0, w0h, ws, p)
    with pytest.raises(RuntimeError, match="probs must be"):  # the op's own checks
        torch.ops.emodarts.darts_rnn_forward(x, h0, w0h, ws, p[:2])
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.emodarts.darts_rnn_forward(x, h0, w0h, ws, p.float())


# --------------------------------------------------------------------------------------------------
# CUDA: compile check (CPU machines with nvcc) and parity on a GPU


def test_cuda_sources_compile(cuda_built):
    """nvcc compiles and links csrc/cuda/darts_rnn_cuda.cu (Hopper, sm_90, when no GPU is visible) and its
    kernels register for both ops."""
    assert any(s.endswith(os.path.join("cuda", "darts_rnn_cuda.cu")) for s in compiled_cuda.cuda_sources())
    assert os.path.isfile(cuda_built)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(df.OP_FWD, "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(df.OP_BWD, "CUDA")


GPU_CASES = {  # well-conditioned inputs (see make_inputs), as on the CPU
    "T1_B1_S1": (1, 1, 5, 1, "softmax"),
    "oddT_H33_S8": (5, 3, 33, 8, "softmax"),
    "S4_none_heavy_dominant": (7, 4, 16, 4, "dominant"),
    "paper_like_none_heavy": (8, 16, 128, 8, "none_heavy"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", sorted(GPU_CASES))
def test_cuda_matches_reference(ops, case, dtype):
    df.ensure_cuda()
    T, B, H, S, probs = GPU_CASES[case]
    compare(make_inputs(T, B, H, S, dtype=dtype, probs=probs, seed=len(case)),
            1e-9 if dtype == torch.float64 else 1e-4, device="cuda")


@pytest.mark.gpu
def test_cuda_saved_state_matches_cpu(ops):
    """The CUDA forward writes the same saved state (layout and values) as the CPU forward, and the CUDA
    backward is deterministic (fixed-grid probs reduction)."""
    df.ensure_cuda()
    inputs = make_inputs(4, 3, 12, 3)
    cpu = torch.ops.emodarts.darts_rnn_forward(*inputs)
    gpu = torch.ops.emodarts.darts_rnn_forward(*[t.cuda() for t in inputs])
    for a, b in zip(gpu, cpu):
        assert a.shape == b.shape and rel_err(a.cpu(), b) <= 1e-12
    g = torch.randn_like(gpu[0])
    args = (g,) + tuple(t.cuda().contiguous() for t in inputs[1:]) + tuple(gpu) + ([True] * 5,)
    one = torch.ops.emodarts.darts_rnn_backward(*args)
    two = torch.ops.emodarts.darts_rnn_backward(*args)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_cuda_backward_memory(ops):
    """Issue 13, item 5, on the GPU: the backward's extra memory (above its inputs and outputs) is a few steps'
    buffers, not a (T, E, B, 2H) stack of [dC | dZ] or a (T, H, 2H) stack of per-step weight gradients."""
    df.ensure_cuda()
    T, B, H, S = 32, 16, 256, 8
    E, f = n_darts_edges(S), 4
    inputs = [t.cuda() for t in make_inputs(T, B, H, S, dtype=torch.float32)]
    saved = torch.ops.emodarts.darts_rnn_forward(*inputs)
    args = (torch.randn_like(saved[0]),) + tuple(t.contiguous() for t in inputs[1:]) + tuple(saved) + ([True] * 5,)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    grads = torch.ops.emodarts.darts_rnn_backward(*args)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before - sum(g.numel() * g.element_size() for g in grads)
    stacks = min(T * E * B * 2 * H, T * H * 2 * H) * f
    one_step = (E * B * 2 * H + (S + 1) * B * H + B * H) * f
    assert extra <= 4 * one_step + 2**21, (extra, one_step, stacks)
    assert extra < stacks // 2


@pytest.mark.gpu
def test_cuda_gradcheck(ops):
    df.ensure_cuda()
    x, h0, w0h, ws, p = make_inputs(3, 2, 3, 2)
    leaves = tuple(t.detach().cuda().requires_grad_(True) for t in (x, h0, w0h, ws, p))
    assert torch.autograd.gradcheck(df.darts_rnn_fused, leaves, eps=1e-6, atol=1e-8)
