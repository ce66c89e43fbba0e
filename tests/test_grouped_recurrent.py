"""Grouped recurrent layer (emodarts/ops/grouped_recurrent.py, csrc/grouped_rnn.cpp, csrc/cuda/) against
torch.nn.LSTM / torch.nn.RNN.

Every comparison runs the candidates' weights twice: through copies of the modules called one at a time
(the reference, PyTorch's own kernels) and through one grouped call, then compares the outputs and every
gradient (x and each weight and bias of each module) under the same random output gradients.
Judged against the modules run in float64 (tests/parity.py). float64: within 1e-10 of each tensor's largest
magnitude. float32: within 4x PyTorch's own float32 error, or 2e-5 of the tensor's largest magnitude.
"""
import copy
import os

import pytest
import torch
from helpers import run_in_fresh_process
from parity import assert_parity
from torch import nn

from emodarts.model.seq_ops import make_seq_op
from emodarts.model.space import RECURRENT_PRIMITIVES
from emodarts.ops import grouped_recurrent as gr
from emodarts.ops import grouped_recurrent
from emodarts.runtime.errors import BackendError

HAS_CUDA = torch.cuda.is_available()
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="session")
def ops():
    """Load (JIT-building once if needed) the extension with the grouped ops."""
    try:
        return gr.ops()
    except BackendError as exc:
        pytest.fail(f"the C++ extension did not load: {exc}")


# --------------------------------------------------------------------------------------------------
# helpers


def make(spec: str, hidden: int, input_size: int, dtype, batch_first=True, bias=True) -> nn.Module:
    """'lstm2' / 'rnn1bi' -> an nn.LSTM / tanh nn.RNN with that many layers (bi: bidirectional)."""
    kind = nn.LSTM if spec.startswith("lstm") else nn.RNN
    rest = spec[4:] if spec.startswith("lstm") else spec[3:]
    bi = rest.endswith("bi")
    layers = int(rest[:-2] if bi else rest)
    return kind(input_size, hidden, num_layers=layers, batch_first=batch_first, bidirectional=bi, bias=bias).to(dtype)


def _run(fn, mods, x, grads=None, seed=0):
    """Outputs, and x's and every parameter's gradient under random output gradients (drawn when None)."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, mods)
    if grads is None:
        gen = torch.Generator().manual_seed(seed)
        grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in out]
    torch.autograd.backward(out, [g.to(o.device, o.dtype) for g, o in zip(grads, out)])
    names = ["x"] + [f"module {i} {n}" for i, m in enumerate(mods) for n, _ in m.named_parameters()]
    for name, p in zip(names[1:], [p for m in mods for p in m.parameters()]):
        assert p.grad is not None, f"{name} got no gradient"
    tensors = [x.grad] + [p.grad for m in mods for p in m.parameters()]
    return [o.detach() for o in out], dict(zip(names, tensors)), grads


def compare(mods, x, rel_floor, grad_outputs_seed=0):
    """Outputs and every gradient of grouped_recurrent vs copies of the modules called one by one, judged as
    `emodarts compare` judges (tests/parity.py): against the modules run in float64; in float32 the grouped
    error may be 4x PyTorch's own float32 error, or below `rel_floor` of the tensor's largest magnitude."""
    dtype = x.dtype
    oracle_mods = [copy.deepcopy(m).double() for m in mods]
    want, want_g, grads = _run(grouped_recurrent.grouped_recurrent_reference, oracle_mods, x.double(), seed=grad_outputs_seed)
    ref = ref_g = None
    if dtype != torch.float64:
        ref, ref_g, _ = _run(grouped_recurrent.grouped_recurrent_reference, [copy.deepcopy(m) for m in mods], x, grads)
    out, out_g, _ = _run(gr.grouped_recurrent_fused, mods, x, grads)
    assert len(out) == len(want)
    for i, (o, w) in enumerate(zip(out, want)):
        assert o.shape == w.shape and o.dtype == dtype, f"module {i}: {tuple(o.shape)} {o.dtype} vs {tuple(w.shape)}"
    outputs = [(f"output {i}", o, ref[i] if ref else None, w) for i, (o, w) in enumerate(zip(out, want))]
    assert_parity(outputs, dtype, rel_floor=rel_floor, what="outputs")
    grads = [(n, out_g[n], ref_g[n] if ref_g else None, want_g[n]) for n in want_g]
    assert_parity(grads, dtype, rel_floor=rel_floor, what="gradients")
    return out


CASES = {
    # name: (specs, B, T, H, I)
    "one_lstm_T1_B1": (["lstm1"], 1, 1, 5, 5),
    "one_rnn_odd_T": (["rnn1"], 3, 7, 6, 4),
    "mixed_lstm_rnn": (["lstm1", "rnn1", "lstm1", "rnn1", "rnn1"], 2, 5, 9, 9),
    "multilayer": (["lstm2", "rnn3", "lstm4", "rnn2", "lstm1"], 2, 4, 6, 6),
    "bidirectional": (["lstm1bi", "rnn2bi", "lstm2bi", "rnn1bi", "lstm1"], 3, 5, 5, 7),
    "deeper_mixed_widths": (["lstm3", "lstm2bi", "rnn2", "rnn3bi"], 2, 3, 4, 4),
    "T1_multilayer_bi": (["lstm2bi", "rnn2"], 2, 1, 4, 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_float64(ops, case):
    specs, b, t, h, i = CASES[case]
    torch.manual_seed(len(case))
    mods = [make(s, h, i, torch.float64) for s in specs]
    x = torch.randn(b, t, i, dtype=torch.float64)
    compare(mods, x, TOL[torch.float64])


def edge_modules(hidden: int, dtype, edges: int = 1):
    """The recurrent parts of the 12 recurrent candidates of `edges` edges (lstm_1..4, rnn_1..4, *_att_1,2)."""
    return [make_seq_op(name, hidden).rnn.to(dtype) for _ in range(edges) for name in RECURRENT_PRIMITIVES]


def test_one_edge_float64(ops):
    torch.manual_seed(1)
    compare(edge_modules(6, torch.float64), torch.randn(2, 3, 6, dtype=torch.float64), TOL[torch.float64])


def test_k48_float64(ops):
    """48 candidates in one call: four edges' worth of single-layer LSTMs and RNNs, B = 1."""
    torch.manual_seed(2)
    mods = [make("lstm1" if k % 2 else "rnn1", 4, 4, torch.float64) for k in range(48)]
    out = compare(mods, torch.randn(1, 3, 4, dtype=torch.float64), TOL[torch.float64])
    assert len(out) == 48


def _set_f32_panels(monkeypatch, value: str) -> None:
    """EMODARTS_F32_PANEL=value, checked against the path the kernel reports; "1" skips on a CPU without AVX-512."""
    monkeypatch.setenv("EMODARTS_F32_PANEL", value)
    on = gr.cpu_gemm_path().endswith("+panels")
    if value == "1" and not on:
        pytest.skip("this CPU has no AVX-512, which the float32 panel kernel runs on")
    assert on == (value == "1")


@pytest.fixture(params=["1", "0"])
def f32_panels(request, monkeypatch):
    """Each path of the float32 per-step products (EMODARTS_F32_PANEL): W_hh packed once per call for our
    AVX-512 kernel (csrc/panel_gemm.h), or the BLAS at every step."""
    _set_f32_panels(monkeypatch, request.param)
    return request.param


@pytest.mark.parametrize("hidden", [32, 12])
def test_one_edge_float32(ops, f32_panels, hidden):
    """float32: the vectorised epilogue (8 lanes; H = 12 also takes the tail path) and the sgemm path."""
    torch.manual_seed(3)
    compare(edge_modules(hidden, torch.float32), torch.randn(4, 6, hidden), TOL[torch.float32])


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_panels(ops, monkeypatch, case):
    """The float32 per-step products on packed panels at awkward shapes (odd hidden sizes, gate widths that
    are not a multiple of 16, one row, one step, per-unit inputs), against float64."""
    _set_f32_panels(monkeypatch, "1")
    specs, b, t, h, i = CASES[case]
    torch.manual_seed(len(case))
    compare([make(s, h, i, torch.float32) for s in specs], torch.randn(b, t, i), TOL[torch.float32])


def test_options_no_bias_time_major_mixed_hidden(ops):
    """bias=False, batch_first=False and two hidden sizes in one call (one group per hidden size)."""
    torch.manual_seed(4)
    mods = [
        make("lstm2", 5, 3, torch.float64, batch_first=False, bias=False),
        make("rnn1bi", 4, 3, torch.float64, batch_first=False),
        make("lstm1bi", 4, 3, torch.float64, batch_first=False, bias=False),
    ]
    compare(mods, torch.randn(4, 2, 3, dtype=torch.float64), TOL[torch.float64])


def test_aten_gemm_path(ops, monkeypatch):
    """The fallback that calls ATen GEMMs instead of the BLAS symbols (read at every call)."""
    monkeypatch.setenv("EMODARTS_GROUPED_GEMM", "aten")
    assert gr.cpu_gemm_path().split("+")[0] == "aten"
    torch.manual_seed(5)
    compare([make(s, 5, 5, torch.float64) for s in ("lstm2bi", "rnn2", "lstm1")],
            torch.randn(2, 3, 5, dtype=torch.float64), TOL[torch.float64])


def test_threads_agree(ops):
    """Units spread over 2 threads give bitwise the same outputs and gradients as 1 thread."""
    torch.manual_seed(6)
    mods = edge_modules(8, torch.float32)
    x = torch.randn(3, 5, 8)

    def run(threads):
        torch.set_num_threads(threads)
        try:
            xg = x.clone().requires_grad_(True)
            for m in mods:
                m.zero_grad(set_to_none=True)
            out = gr.grouped_recurrent_fused(xg, mods)
            torch.autograd.backward(out, [torch.ones_like(o) for o in out])
            return [o.detach().clone() for o in out] + [xg.grad] + [p.grad.clone() for m in mods for p in m.parameters()]
        finally:
            torch.set_num_threads(1)

    one, two = run(1), run(2)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_unused_outputs_and_no_grad(ops):
    torch.manual_seed(7)
    mods = [make(s, 4, 4, torch.float64) for s in ("lstm2", "rnn1bi", "lstm1")]
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = gr.grouped_recurrent_fused(x, mods)
    out[1].sum().backward()  # only one module's output used
    assert mods[0].weight_ih_l0.grad is None or mods[0].weight_ih_l0.grad.abs().max() == 0
    assert mods[1].weight_hh_l0_reverse.grad.abs().max() > 0
    with torch.no_grad():
        y = gr.grouped_recurrent_fused(x, mods)
    want = grouped_recurrent.grouped_recurrent_reference(x.detach(), mods)
    assert_parity([(f"output {i}", a, None, b) for i, (a, b) in enumerate(zip(y, want))], torch.float64,
                  rel_floor=TOL[torch.float64], what="no_grad outputs")


# --------------------------------------------------------------------------------------------------
# the autograd wrapper and the op registration


def _layer_inputs(kx, n_lstm=2, n_rnn=1, t=3, b=2, h=3, i=4, seed=0, device="cpu"):
    """The inputs (kx tensors (T, B, I)) and the per-unit lists w_ih, w_hh, b_ih, b_hh of one group (float64,
    requiring grad)."""
    gen = torch.Generator().manual_seed(seed)
    k = n_lstm + n_rnn
    rows = [4 * h] * n_lstm + [h] * n_rnn

    def r(*shape):
        return (0.5 * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device).requires_grad_(True)

    return ([r(t, b, i) for _ in range(kx)], [r(g, i) for g in rows], [r(g, h) for g in rows], [r(g) for g in rows],
            [r(g) for g in rows], n_lstm, [u % 2 for u in range(k)])


def _layer_fn(kx, k, n_lstm, rev):
    """grouped_rnn_layer of flat arguments (the kx inputs, then the four lists of k tensors), for gradcheck."""
    def fn(*flat):
        xs, rest = list(flat[:kx]), flat[kx:]
        return gr.grouped_rnn_layer(xs, *[list(rest[j * k:(j + 1) * k]) for j in range(4)], n_lstm, rev)

    return fn


@pytest.mark.parametrize("per_unit", [False, True], ids=["shared_input", "per_unit_input"])
def test_gradcheck_layer(ops, per_unit):
    xs, w_ih, w_hh, b_ih, b_hh, n_lstm, rev = _layer_inputs(3 if per_unit else 1)
    assert torch.autograd.gradcheck(_layer_fn(len(xs), len(rev), n_lstm, rev), (*xs, *w_ih, *w_hh, *b_ih, *b_hh),
                                    eps=1e-6, atol=1e-8)


def test_one_input_read_by_two_units(ops):
    """A bidirectional layer's two directions read one tensor: passed twice, read in place, and its gradient is
    the sum of both units' (gradcheck)."""
    xs, w_ih, w_hh, b_ih, b_hh, n_lstm, rev = _layer_inputs(2)
    shared, other = xs
    k = len(rev)

    def fn(x0, x1, *rest):
        return gr.grouped_rnn_layer([x0, x0, x1], *[list(rest[j * k:(j + 1) * k]) for j in range(4)], n_lstm, rev)

    assert torch.autograd.gradcheck(fn, (shared, other, *w_ih, *w_hh, *b_ih, *b_hh), eps=1e-6, atol=1e-8)


class _Group(nn.Module):
    def __init__(self, mods):
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        return tuple(gr.grouped_recurrent_fused(x, list(self.mods)))


def test_gradcheck_modules(ops):
    """gradcheck of the whole wrapper (weights concatenated, per-layer groups, bidirectional outputs)."""
    torch.manual_seed(8)
    group = _Group([make(s, 3, 2, torch.float64) for s in ("lstm2bi", "rnn2", "lstm1")])
    names = [n for n, _ in group.named_parameters()]
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, *params):
        return torch.func.functional_call(group, dict(zip(names, params)), (x,))

    params = tuple(p.detach().clone().requires_grad_(True) for p in group.parameters())
    assert torch.autograd.gradcheck(fn, (x,) + params, eps=1e-6, atol=1e-8)


def test_opcheck(ops):
    xs, w_ih, w_hh, b_ih, b_hh, n_lstm, rev = _layer_inputs(1)
    torch.library.opcheck(torch.ops.emodarts.grouped_rnn_forward.default, (xs, w_ih, w_hh, b_ih, b_hh, n_lstm, rev))
    xs3, w_ih2, w_hh2, b_ih2, b_hh2, _, _ = _layer_inputs(3, seed=1)
    torch.library.opcheck(torch.ops.emodarts.grouped_rnn_forward.default,
                          (xs3, w_ih2, w_hh2, b_ih2, b_hh2, n_lstm, rev))
    with torch.no_grad():
        hs, cs, gates = torch.ops.emodarts.grouped_rnn_forward(xs, w_ih, w_hh, b_ih, b_hh, n_lstm, rev)
    detached = [[w.detach() for w in ws] for ws in (w_ih, w_hh)]
    for mask in ([True] * 4, [True, False, False, False]):  # a weight step's and an alpha step's
        torch.library.opcheck(
            torch.ops.emodarts.grouped_rnn_backward.default,
            (torch.randn_like(hs), [x.detach() for x in xs], *detached, hs, cs, gates, n_lstm, rev, mask),
        )


def test_rejects_unsupported(ops):
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError):
        gr.grouped_recurrent_kernel(x, [nn.GRU(4, 4, batch_first=True)])
    with pytest.raises(ValueError, match="tanh"):
        gr.grouped_recurrent_kernel(x, [nn.RNN(4, 4, nonlinearity="relu", batch_first=True)])
    with pytest.raises(ValueError, match="proj_size"):
        gr.grouped_recurrent_kernel(x, [nn.LSTM(4, 4, proj_size=2, batch_first=True)])
    with pytest.raises(ValueError, match="input_size"):
        gr.grouped_recurrent_kernel(x, [nn.LSTM(5, 4, batch_first=True)])
    with pytest.raises(ValueError, match="batch_first"):
        gr.grouped_recurrent_kernel(x, [nn.LSTM(4, 4, batch_first=True), nn.LSTM(4, 4)])
    with pytest.raises(ValueError, match="dtype"):
        gr.grouped_recurrent_kernel(x.half(), [nn.LSTM(4, 4, batch_first=True).half()])
    assert gr.grouped_recurrent_kernel(x, []) == []


def _parity_in_fresh_process(**env):
    """Parity of the float32 layer (compare: forward and every gradient against the float64 oracle) in a
    process of its own: the epilogue's instruction set is picked once per process."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import torch; from torch import nn; torch.manual_seed(0); torch.set_num_threads(1)\n"
        "from test_grouped_recurrent import TOL, compare, edge_modules, make\n"
        "m = [make('lstm2', 12, 12, torch.float32), make('rnn1bi', 12, 12, torch.float32)]\n"
        "compare(m, torch.randn(3, 4, 12), TOL[torch.float32])\n"
        "compare(edge_modules(12, torch.float32), torch.randn(2, 5, 12), TOL[torch.float32])\n"
    )
    run_in_fresh_process(code, OMP_NUM_THREADS="1", **env)


def test_baseline_epilogue_without_avx2(ops):
    """The baseline (SSE2) copy of the float32 epilogue, picked when AVX2 is switched off."""
    _parity_in_fresh_process(EMODARTS_GROUPED_NO_AVX2="1")


def test_avx2_epilogue_without_avx512(ops):
    """The 8-lane AVX2 copy, picked when AVX-512 is switched off: on an AVX-512 machine the default run takes
    the 16-lane copy, so this keeps the other one tested there too (elsewhere it is the default)."""
    _parity_in_fresh_process(EMODARTS_GROUPED_NO_AVX512="1")


@pytest.mark.parametrize("no_pack", ["0", "1"], ids=["packed_where_it_pays", "plain_sgemm"])
def test_lstm_h128_recurrent_product(ops, no_pack):
    """LSTMs of the paper preset's hidden size: with AVX-512 the float32 layer packs W_hh once per call for its
    recurrent products (on Intel MKL's packed GEMM in the forward, csrc/cpu_common.h, packed_gemm_pays; elsewhere
    our panels, csrc/panel_gemm.h, forward and backward), EMODARTS_GROUPED_NO_PACK=1 takes the plain sgemm. Each
    in a fresh process (the switch is read once by MKL's path)."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import torch; torch.manual_seed(0); torch.set_num_threads(1)\n"
        "from test_grouped_recurrent import TOL, compare, make\n"
        "compare([make('lstm1bi', 128, 24, torch.float32), make('lstm2', 128, 24, torch.float32),"
        " make('rnn1', 128, 24, torch.float32)], torch.randn(3, 5, 24), TOL[torch.float32])\n"
    )
    run_in_fresh_process(code, OMP_NUM_THREADS="1", EMODARTS_GROUPED_NO_PACK=no_pack)


# --------------------------------------------------------------------------------------------------
# CUDA: compile check (CPU machines with nvcc) and parity on a GPU


def test_cuda_sources_compile(cuda_built):
    """nvcc compiles and links the CUDA kernels (Hopper, sm_90, when no GPU is visible) and they register."""
    assert os.path.isfile(cuda_built)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("emodarts::grouped_rnn_forward", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("emodarts::grouped_rnn_backward", "CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_torch(ops, dtype, monkeypatch):
    """cuDNN's LSTM/RNN uses TF32 tensor cores by default (10-bit mantissa), while the grouped layer's float32
    GEMMs are IEEE fp32: the reference must not be rounder than the fused path it judges, so TF32 is off."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gr.ensure_cuda()
    torch.manual_seed(9)
    dev = torch.device("cuda")
    mods = [m.to(dev) for m in edge_modules(16, dtype, edges=2)]
    mods += [make(s, 16, 16, dtype).to(dev) for s in ("lstm2bi", "rnn3bi")]
    compare(mods, torch.randn(3, 7, 16, dtype=dtype, device=dev), 1e-9 if dtype == torch.float64 else 1e-4)


@pytest.mark.gpu
def test_cuda_per_unit_gradcheck(ops):
    gr.ensure_cuda()
    for kx in (1, 3):
        xs, w_ih, w_hh, b_ih, b_hh, n_lstm, rev = _layer_inputs(kx, device="cuda")
        assert torch.autograd.gradcheck(_layer_fn(kx, len(rev), n_lstm, rev), (*xs, *w_ih, *w_hh, *b_ih, *b_hh),
                                        eps=1e-6, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [128, 256, 512, 1024])
def test_cuda_large_hidden_long_sequence(ops, hidden, monkeypatch):
    """Issue 13: the grouped CUDA layer at the hidden sizes a search uses (128 up to 1024) over more than 7
    steps, LSTM and RNN units, a deeper layer and both directions in one call; float32 (TF32 off in the cuDNN
    reference) judged against float64."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gr.ensure_cuda()
    torch.manual_seed(hidden)
    dev = torch.device("cuda")
    mods = [make(s, hidden, 64, torch.float32).to(dev) for s in ("lstm1", "rnn1", "lstm2", "rnn1bi", "lstm1bi")]
    compare(mods, torch.randn(4, 12, 64, device=dev), TOL[torch.float32])
