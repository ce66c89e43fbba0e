"""Multi-depthwise convolution (csrc/multi_depthwise.cpp via emodarts/ops/multi_depthwise.py) against its reference
twin (one F.conv2d per candidate, emodarts/ops/multi_depthwise.py): outputs, the input gradient(s) and every
weight gradient, on fresh random inputs, judged as `emodarts compare` judges (tests/parity.py): against the
reference in float64; float32 within 4x the reference's own float32 error; bf16 within 4x the reference's own
bf16 error (both against float64); float64 within 1e-12."""
import functools
import os

import pytest
import torch
from helpers import run_in_fresh_process
from parity import assert_parity

from emodarts.ops import multi_depthwise
from emodarts.runtime.errors import BackendError

# the search space's depthwise convolutions: (kernel, dilation) of sep_conv_3x3/5x5 and dil_conv_3x3/5x5
ALL = ((3, 1), (5, 1), (3, 2), (5, 2))
REL_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-3}


@pytest.fixture(autouse=True, params=["blocked", "plain"])
def kernels(request, monkeypatch):
    """Every test runs with the register-blocked kernels (the default) and with the plain loops
    (EMODARTS_DW_BLOCKED=0, read per call)."""
    monkeypatch.setenv("EMODARTS_DW_BLOCKED", "1" if request.param == "blocked" else "0")
    return request.param


@pytest.fixture(scope="module", autouse=True)
def ops():
    try:
        return multi_depthwise.ops()
    except BackendError as exc:
        pytest.fail(f"the C++ extension did not load: {exc}")


def make(shape, cands, shared, seed, non_contiguous=False, device="cpu"):
    """(inputs, weights, dilations) in float64 on `device`: one shared input or one per candidate."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    n_x = 1 if shared else len(cands)
    if non_contiguous:  # (B, C, W, H) storage seen as (B, C, H, W)
        xs = [torch.randn(b, c, w, h, generator=gen, dtype=torch.float64).transpose(2, 3) for _ in range(n_x)]
    else:
        xs = [torch.randn(b, c, h, w, generator=gen, dtype=torch.float64) for _ in range(n_x)]
    ws = [torch.randn(c, 1, k, k, generator=gen, dtype=torch.float64) / k for k, _ in cands]
    return [x.to(device) for x in xs], [w.to(device) for w in ws], [d for _, d in cands]


def run(fn, xs, ws, dilations, stride, grads, dtype):
    # .to() keeps a non-contiguous input's strides (preserve_format), so the kernels read it in place
    xs = [x.detach().to(dtype).requires_grad_(True) for x in xs]
    ws = [w.detach().to(dtype).requires_grad_(True) for w in ws]
    outs = fn(xs, ws, dilations, stride)
    gs = torch.autograd.grad(outs, xs + ws, [g.to(dtype) for g in grads])
    return [o.detach() for o in outs], list(gs)


def check(shape, cands, stride, shared, dtype, seed=0, non_contiguous=False, device="cpu", impl=None, relu=False):
    """`impl` (default: the C++ op) against the reference: outputs, input and weight gradients, judged against
    float64 (tests/parity.py); returns the implementation's outputs and gradients. relu: both read ReLU(x)."""
    impl = functools.partial(impl or multi_depthwise.multi_depthwise_fused, relu=relu) if relu else \
        impl or multi_depthwise.multi_depthwise_fused
    reference = functools.partial(multi_depthwise.multi_depthwise_reference, relu=relu)
    xs, ws, dil = make(shape, cands, shared, seed, non_contiguous, device)
    if non_contiguous:
        assert not xs[0].is_contiguous()
    b, c, h, w = shape
    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(b, c, (h - 1) // stride + 1, (w - 1) // stride + 1, generator=gen,
                         dtype=torch.float64).to(device) for _ in cands]
    o_t, g_t = run(reference, xs, ws, dil, stride, grads, torch.float64)
    o_f, g_f = run(impl, xs, ws, dil, stride, grads, dtype)
    o_r, g_r = (None, None) if dtype == torch.float64 else run(reference, xs, ws, dil, stride, grads, dtype)
    names = [f"out[{i}]" for i in range(len(cands))] + [f"grad_x[{i}]" for i in range(len(xs))] + \
            [f"grad_w[{i}]" for i in range(len(ws))]
    fused = o_f + g_f
    ref = (o_r + g_r) if o_r is not None else [None] * len(fused)
    for f, t in zip(fused, o_t + g_t):
        assert f.dtype == dtype and f.device == t.device and f.shape == t.shape
    assert_parity(list(zip(names, fused, ref, o_t + g_t)), dtype, rel_floor=REL_FLOOR[dtype],
                  what=f"{shape} {cands} stride {stride} shared={shared} relu={relu} {dtype}")
    return fused


SHAPES = {"odd": (2, 3, 7, 5), "batch1": (1, 4, 9, 11), "one_pixel": (3, 2, 1, 1), "wide": (2, 5, 4, 19),
          "tiny_cell": (4, 8, 10, 24)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shared_input_all_candidates(shape, stride, dtype):
    check(SHAPES[shape], ALL, stride, True, dtype, seed=len(shape) + stride)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_input", "per_candidate_input"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", ["odd", "tiny_cell"])
def test_relu_on_read(shape, stride, shared, dtype):
    """relu=True (the cells' ReLU applied as the op reads each plane, its backward masked in the op) against
    F.relu then the reference; a dilation-3 candidate takes the plain loops beside the blocked kernels."""
    check(SHAPES[shape], ALL + ((3, 3),), stride, shared, dtype, seed=11 + stride, relu=True)


def test_relu_on_read_non_contiguous_input():
    check((2, 3, 6, 9), ALL, 2, True, torch.float32, seed=12, non_contiguous=True, relu=True)


def test_relu_gradient_is_zero_where_the_input_is_not_positive():
    """ReLU's backward: no gradient reaches an input element <= 0 (what F.relu's backward gives)."""
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    x[:, :, ::2] = -x[:, :, ::2].abs()
    x[0, 0, 0, 0] = 0.0
    x.requires_grad_(True)
    ws = [torch.randn(3, 1, k, k, dtype=torch.float64, requires_grad=True) for k, _ in ALL]
    outs = multi_depthwise.multi_depthwise_fused([x], ws, [d for _, d in ALL], 1, relu=True)
    (gx,) = torch.autograd.grad(sum(o.sum() for o in outs), [x])
    assert torch.all(gx[x <= 0] == 0) and torch.any(gx[x > 0] != 0)


@pytest.mark.parametrize("stride", [1, 2])
def test_one_input_per_candidate(stride):
    check((2, 3, 8, 7), ALL, stride, False, torch.float32, seed=5)
    check((2, 3, 8, 7), ALL, stride, False, torch.float64, seed=6)


@pytest.mark.parametrize("cand", ALL, ids=[f"k{k}d{d}" for k, d in ALL])
def test_one_candidate(cand):
    check((2, 3, 9, 6), (cand,), 2, True, torch.float32, seed=7)


# Each register-blocked kernel (csrc/multi_dw_blocked.h: one per kernel, dilation and stride) alone, at odd
# sizes: 13 x 37 spans whole and partial blocks of output rows (4) and columns (16), 5 x 3 is narrower than
# one vector, 1 x 2 has a single output row.
@pytest.mark.parametrize("shape", [(2, 3, 13, 37), (1, 2, 5, 3), (3, 2, 1, 2)], ids=["13x37", "5x3", "1x2"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cand", ALL, ids=[f"k{k}d{d}" for k, d in ALL])
def test_each_blocked_kernel(cand, stride, shape):
    check(shape, (cand,), stride, True, torch.float32, seed=30 + stride)
    check(shape, (cand,), stride, False, torch.float64, seed=31 + stride)


# (kernel, dilation) outside the search space and stride 3 take the plain plane loops (multi_dw_kernels.h),
# alone and mixed in one call with the blocked kernels
GENERIC = ((7, 1), (3, 3), (1, 1))


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_generic_kernels_alone_and_mixed(stride):
    check((2, 3, 11, 9), GENERIC, stride, True, torch.float32, seed=40 + stride)
    check((2, 3, 11, 9), GENERIC + ALL, stride, True, torch.float32, seed=43 + stride)
    check((2, 3, 11, 9), ALL + GENERIC, stride, False, torch.float64, seed=46 + stride)


def test_non_contiguous_input():
    check((2, 3, 7, 9), ALL, 1, True, torch.float32, seed=8, non_contiguous=True)
    check((2, 3, 7, 9), ALL, 2, False, torch.float64, seed=9, non_contiguous=True)


def test_bfloat16_against_the_references_own_error():
    check((2, 4, 9, 13), ALL, 1, True, torch.bfloat16, seed=10)
    check((2, 4, 9, 13), ALL, 2, True, torch.bfloat16, seed=11)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cand", ALL, ids=[f"k{k}d{d}" for k, d in ALL])
def test_weight_gradient_ignores_inputs_its_tap_never_reads(cand, stride):
    """The blocked weight gradient runs whole vectors past the last output column; the input there is masked,
    so an inf in the last input column (never read by the first column of taps) leaves those taps finite."""
    k, d = cand
    gen = torch.Generator().manual_seed(50)
    x = torch.randn(2, 3, 9, 13, generator=gen)
    x[..., -1] = float("inf")
    w = torch.randn(3, 1, k, k, generator=gen) / k
    go = torch.randn(2, 3, (9 - 1) // stride + 1, (13 - 1) // stride + 1, generator=gen)
    grads = {}
    for name, fn in (("fused", multi_depthwise.multi_depthwise_fused), ("reference", multi_depthwise.multi_depthwise_reference)):
        ww = w.clone().requires_grad_(True)
        out = fn([x], [ww], [d], stride)[0]
        (gw,) = torch.autograd.grad(out, [ww], go)
        grads[name] = gw[..., 0]
    assert torch.isfinite(grads["reference"]).all()
    torch.testing.assert_close(grads["fused"], grads["reference"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_threads_agree_bitwise(stride):
    xs, ws, dil = make((3, 16, 20, 24), ALL, True, 12)
    xs = [x.float() for x in xs]
    ws = [w.float() for w in ws]
    grads = [torch.ones(3, 16, (20 - 1) // stride + 1, (24 - 1) // stride + 1) for _ in ALL]

    def once(threads):
        torch.set_num_threads(threads)
        try:
            return run(multi_depthwise.multi_depthwise_fused, xs, ws, dil, stride, grads, torch.float32)
        finally:
            torch.set_num_threads(1)

    (o1, g1), (o2, g2) = once(1), once(2)
    for a, b in zip(o1 + g1, o2 + g2):
        assert torch.equal(a, b)


def test_gradcheck():
    xs, ws, dil = make((2, 2, 5, 4), ALL, True, 13)
    leaves = [t.requires_grad_(True) for t in xs + ws]

    def fn(x, *w):
        return tuple(multi_depthwise.multi_depthwise_fused([x], list(w), dil, 2))

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


def test_opcheck():
    xs, ws, dil = make((2, 3, 6, 5), ALL[:2], True, 14)
    xs = [x.float() for x in xs]
    ws = [w.float() for w in ws]
    torch.library.opcheck(torch.ops.emodarts.multi_dw_fwd.default, (xs, ws, dil, 2))
    grads = [torch.randn(2, 3, 3, 3) for _ in ws]
    n = len(ws)
    for need_x, need_w in (([True], [True] * n), ([True], [False] * n), ([False], [True] + [False] * (n - 1))):
        torch.library.opcheck(torch.ops.emodarts.multi_dw_bwd.default, (grads, xs, ws, dil, 2, need_x, need_w))
    torch.library.opcheck(torch.ops.emodarts.multi_dw_fwd.default, (xs, ws, dil, 2, True))
    torch.library.opcheck(torch.ops.emodarts.multi_dw_bwd.default, (grads, xs, ws, dil, 2, [True], [True] * n, True))


def test_bad_arguments_are_clear():
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(RuntimeError, match="k odd"):
        torch.ops.emodarts.multi_dw_fwd([x], [torch.randn(3, 1, 2, 2)], [1], 1)
    with pytest.raises(RuntimeError, match="dilations"):
        torch.ops.emodarts.multi_dw_fwd([x], [torch.randn(3, 1, 3, 3)], [1, 2], 1)
    with pytest.raises(RuntimeError, match="one input per candidate"):
        torch.ops.emodarts.multi_dw_fwd([x, x], [torch.randn(3, 1, 3, 3)] * 3, [1, 1, 1], 1)


def test_baseline_kernels_without_avx2():
    """The baseline copy of the plane kernels, picked when AVX2 is switched off (read once per process)."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            "import torch; torch.set_num_threads(1)\n"
            "from test_multi_depthwise import ALL, GENERIC, check\n"
            "check((2, 5, 9, 13), ALL, 1, True, torch.float32, seed=20)\n"
            "check((2, 5, 9, 13), ALL, 2, False, torch.float32, seed=21)\n"
            "check((1, 2, 13, 37), ALL, 2, True, torch.float32, seed=22)\n"
            "check((1, 2, 13, 37), ALL, 1, False, torch.float32, seed=23)\n"
            "check((2, 3, 11, 9), GENERIC + ALL, 2, True, torch.float32, seed=24)\n")
    run_in_fresh_process(code, EMODARTS_GROUPED_NO_AVX2="1", OMP_NUM_THREADS="1")
