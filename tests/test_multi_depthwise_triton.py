"""Triton multi-depthwise convolution (kernels/multi_depthwise.py via emodarts/ops/multi_depthwise.py) against its
reference twin (one F.conv2d per candidate, emodarts/ops/multi_depthwise.py): outputs, the input gradient(s) and
every weight gradient, judged as `emodarts compare` judges (tests/parity.py): each tensor against the reference
run in float64 on the same inputs; float32/fp16 within 4x the reference's own error in that precision, bf16
likewise (GPU only), float64 within 1e-12 relative.

On the CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by conftest before any kernel
module is imported when there is no GPU), at tiny awkward shapes: the interpreter pays per op and per program.
Triton bf16 is tested on a GPU only: the interpreter's bf16 arithmetic is broken (docs/toolchain.md).
The `gpu` tests run the kernels on CUDA at a paper-like shape (16, 16, 64, 64) against cuDNN.
"""
import os

import pytest
import torch
from helpers import sync_debug
from test_multi_depthwise import ALL, make
from test_multi_depthwise import check as check_impl

from emodarts.ops import multi_depthwise

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

needs_interpreter = pytest.mark.skipif(
    not INTERPRET, reason="CPU Triton tests run under TRITON_INTERPRET=1 (set by conftest when there is no GPU)")


@pytest.fixture(scope="module")
def km():
    pytest.importorskip("triton")
    mod = multi_depthwise.kernels_module()
    if INTERPRET:
        assert mod.INTERPRET, "kernels were imported before TRITON_INTERPRET=1 was set"
    return mod


def check(shape, cands, stride, shared, dtype, seed=0, non_contiguous=False, device="cpu"):
    """The Triton op judged as the C++ one is (test_multi_depthwise.check)."""
    return check_impl(shape, cands, stride, shared, dtype, seed, non_contiguous, device,
                      impl=multi_depthwise.multi_depthwise_triton)


# --------------------------------------------------------------------------------------------------
# CPU, under the interpreter (tiny shapes)

CASES = {
    # name: (shape, candidates, stride, shared input, non-contiguous input)
    "odd_all_kinds_s1": ((2, 3, 7, 5), ALL, 1, True, False),
    "odd_all_kinds_s2": ((2, 3, 7, 5), ALL, 2, True, False),
    "batch1_per_candidate_s2": ((1, 4, 9, 11), ALL, 2, False, False),
    "one_candidate": ((1, 2, 6, 7), ((5, 2),), 1, True, False),
    "one_pixel_s2": ((3, 2, 1, 1), ALL, 2, True, False),
    "non_contiguous_shared_s2": ((2, 2, 5, 7), ALL, 2, True, True),
    "non_contiguous_per_candidate_s1": ((1, 3, 6, 5), ((3, 1), (5, 1)), 1, False, True),
}


@needs_interpreter
@pytest.mark.parametrize("name", sorted(CASES))
def test_fp32_against_reference(km, name):
    shape, cands, stride, shared, nc = CASES[name]
    check(shape, cands, stride, shared, torch.float32, seed=len(name), non_contiguous=nc)


@needs_interpreter
def test_fp64_exact(km):
    check((2, 3, 7, 5), ALL, 2, False, torch.float64, seed=5)


@needs_interpreter
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_candidate"])
def test_more_candidates_than_one_launch(km, shared):
    """10 candidates: two launches of MAX_SLOTS and the rest; a shared input's gradient summed across them."""
    assert km.MAX_SLOTS < 10
    cands = (ALL * 3)[:10]
    check((1, 2, 5, 4), cands, 1, shared, torch.float32, seed=7)


@needs_interpreter
def test_fp16(km):
    check((2, 3, 7, 5), ALL, 1, True, torch.float16, seed=3)


@needs_interpreter
def test_bf16_on_cpu_is_skipped():
    pytest.skip("Triton bf16 under the interpreter gives garbage (1e38 or NaN) in triton 3.6-3.9 "
                "(docs/toolchain.md): bf16 is tested on a GPU (test_gpu_paper_shape)")


@needs_interpreter
def test_unused_outputs_and_frozen_weights(km):
    """Outputs without a gradient count as zero; weights that need no gradient get none (and their launch is
    skipped when none does)."""
    xs, ws, dil = make((1, 2, 5, 6), ALL, True, 11)
    x = xs[0].float().requires_grad_(True)
    wsf = [w.float() for w in ws]
    outs = multi_depthwise.multi_depthwise_triton([x], wsf, dil, 2)
    (gx,) = torch.autograd.grad(outs[1].sum() + 2 * outs[3].sum(), [x])
    xr = x.detach().requires_grad_(True)
    ref = multi_depthwise.multi_depthwise_reference([xr], wsf, dil, 2)
    (gr,) = torch.autograd.grad(ref[1].sum() + 2 * ref[3].sum(), [xr])
    torch.testing.assert_close(gx, gr, rtol=1e-5, atol=1e-5)


@needs_interpreter
def test_refuses_what_it_does_not_implement(km):
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="weight 0"):
        multi_depthwise.multi_depthwise_triton([x], [torch.randn(2, 1, 7, 7)], [1], 1)
    with pytest.raises(ValueError, match="dilation"):
        multi_depthwise.multi_depthwise_triton([x], [torch.randn(2, 1, 3, 3)], [3], 1)
    with pytest.raises(ValueError, match="stride"):
        multi_depthwise.multi_depthwise_triton([x], [torch.randn(2, 1, 3, 3)], [1], 3)
    with pytest.raises(ValueError, match="inputs"):
        multi_depthwise.multi_depthwise_triton([x, x], [torch.randn(2, 1, 3, 3)] * 3, [1] * 3, 1)


# --------------------------------------------------------------------------------------------------
# GPU: paper-like shapes against cuDNN


@pytest.fixture
def ieee_fp32(monkeypatch):
    """The cuDNN reference must not be rounder than the kernels it judges: no TF32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_candidate"])
def test_gpu_paper_shape(km, ieee_fp32, dtype, stride, shared):
    check((16, 16, 64, 64), ALL, stride, shared, dtype, seed=stride, device="cuda")


@pytest.mark.gpu
def test_gpu_non_contiguous_and_reproducible(km, ieee_fp32):
    """A transposed input read in place; two runs bitwise equal (no atomics anywhere)."""
    a = check((16, 16, 64, 64), ALL, 2, True, torch.float32, seed=9, non_contiguous=True, device="cuda")
    b = check((16, 16, 64, 64), ALL, 2, True, torch.float32, seed=9, non_contiguous=True, device="cuda")
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.gpu
def test_gpu_no_host_sync(km):
    """Forward and backward never synchronise with the GPU (so a call can be captured in a CUDA graph)."""
    xs, ws, dil = make((4, 8, 16, 16), ALL, True, 1, device="cuda")
    x = xs[0].float().requires_grad_(True)
    wsf = [w.float().requires_grad_(True) for w in ws]
    for mode in ("default", "error"):  # the first pass compiles the kernels
        with sync_debug(mode):
            outs = multi_depthwise.multi_depthwise_triton([x], wsf, dil, 1)
            torch.autograd.grad(outs, [x] + wsf, [torch.ones_like(o) for o in outs])
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_gpu_fused_backend_dispatches_to_triton(monkeypatch):
    """`--fused` on CUDA runs these kernels (EMODARTS_DW_CUDNN=1 the reference's cuDNN calls), weights cast
    to the autocast dtype as F.conv2d would."""
    from emodarts.ops import multi_depthwise

    calls = []
    real = multi_depthwise.multi_depthwise_triton
    monkeypatch.setattr(multi_depthwise, "multi_depthwise_triton", lambda *a: calls.append(a) or real(*a))
    xs, ws, dil = make((2, 4, 9, 9), ALL, True, 1, device="cuda")
    xs, ws = [x.float() for x in xs], [w.float() for w in ws]
    multi_depthwise.multi_depthwise_fused(xs, ws, dil, 1)
    assert len(calls) == 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = multi_depthwise.multi_depthwise_fused(xs, ws, dil, 1)
    assert len(calls) == 2 and all(o.dtype == torch.bfloat16 for o in outs)
    assert all(w.dtype == torch.bfloat16 for w in calls[1][1])
    monkeypatch.setenv("EMODARTS_DW_CUDNN", "1")
    multi_depthwise.multi_depthwise_fused(xs, ws, dil, 1)
    assert len(calls) == 2
