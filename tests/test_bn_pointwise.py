"""The multi batch norm (csrc/multi_bn.cpp, emodarts/ops/batch_norms.py), the multi pointwise convolution
(csrc/pointwise.cpp, emodarts/ops/pointwise.py) and the factorized reduce's offset grids
(csrc/offset_grids.cpp, emodarts/ops/offset_grids.py) against their reference twins (one ATen call per
module or weight, ATen views): forward, every gradient, the running statistics, on fresh random inputs at
awkward shapes, float32 judged against a float64 oracle."""
import copy

import pytest
import torch
from parity import assert_parity
from torch import nn

from emodarts.ops import batch_norms
from emodarts.ops import offset_grids
from emodarts.ops import pointwise
from emodarts.runtime.errors import BackendError


@pytest.fixture(scope="module", autouse=True)
def ops():
    try:
        batch_norms.ops()
        pointwise.ops()
        offset_grids.ops()
    except BackendError as exc:
        pytest.fail(f"the C++ extension did not load: {exc}")


# (B, C, H, W) shapes called together: odd sizes, batch 1, a 1x1 map, one with 70 channels
BN_SHAPES = [(3, 4, 5, 7), (1, 3, 2, 1), (32, 8, 10, 24), (2, 5, 33, 17), (1, 70, 3, 3)]
# ((B, C, H, W), O): odd sizes, batch 1, 1x1 maps, channels above the small-kernel limit (64), one output
PW_CASES = [((3, 4, 5, 7), 6), ((1, 3, 2, 1), 3), ((32, 8, 10, 24), 8), ((2, 5, 33, 17), 4), ((2, 70, 6, 9), 5),
            ((2, 7, 40, 41), 13), ((1, 16, 1, 1), 1), ((2, 9, 3, 100), 65)]


def _bn_run(impl, xs, groups, grads):
    """Outputs (one per group), input gradients and every module's buffers after one training forward."""
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    outs = impl(xs, groups)
    ys = [o[0] for o in outs]
    assert all(all(y is o[0] for y in o) or impl is batch_norms.batch_norms_reference for o in outs)
    gx = torch.autograd.grad(ys, xs, grads)
    buffers = [b.detach().clone() for g in groups for m in g for b in (m.running_mean, m.running_var)]
    counts = [int(m.num_batches_tracked) for g in groups for m in g]
    return [y.detach() for y in ys], list(gx), buffers, counts


def _bn_modules(shapes, dtype, momentum=0.1, sizes=None):
    sizes = sizes or [1] * len(shapes)
    groups = []
    for s, n in zip(shapes, sizes):
        group = [nn.BatchNorm2d(s[1], affine=False, momentum=momentum).to(dtype) for _ in range(n)]
        for i, m in enumerate(group):  # modules need not agree beforehand
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(i)
        groups.append(group)
    return groups


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norms_float64_equal_the_modules(momentum):
    """float64: every output, input gradient, running statistic and batch count as the modules' own forward
    (groups of several modules sharing one input included; momentum None is the cumulative average)."""
    torch.manual_seed(1)
    xs = [torch.randn(*s, dtype=torch.float64) * 3 + 1 for s in BN_SHAPES]
    grads = [torch.randn(*s, dtype=torch.float64) for s in BN_SHAPES]
    groups = _bn_modules(BN_SHAPES, torch.float64, momentum, sizes=[1, 2, 3, 1, 1])
    twins = copy.deepcopy(groups)
    fused = _bn_run(batch_norms.batch_norms_fused, xs, groups, grads)
    ref = _bn_run(batch_norms.batch_norms_reference, xs, twins, grads)
    for name, f, r in zip(("outputs", "input gradients", "running statistics"), fused[:3], ref[:3]):
        assert_parity([(f"{name} {i}", a, None, b) for i, (a, b) in enumerate(zip(f, r))], torch.float64,
                      rel_floor=1e-12, what=name)
    assert fused[3] == ref[3]


def test_batch_norms_float32_against_float64_oracle():
    torch.manual_seed(2)
    xs = [torch.randn(*s, dtype=torch.float64) * 2 - 3 for s in BN_SHAPES]
    grads = [torch.randn(*s, dtype=torch.float64) for s in BN_SHAPES]
    groups64 = _bn_modules(BN_SHAPES, torch.float64)
    groups32 = [[copy.deepcopy(m).float() for m in g] for g in groups64]
    twins32 = copy.deepcopy(groups32)
    oracle = _bn_run(batch_norms.batch_norms_reference, xs, groups64, grads)
    f32 = [[t.float() for t in ts] for ts in (xs, grads)]
    fused = _bn_run(batch_norms.batch_norms_fused, f32[0], groups32, f32[1])
    ref = _bn_run(batch_norms.batch_norms_reference, f32[0], twins32, f32[1])
    for k, name in enumerate(("outputs", "input gradients", "running statistics")):
        assert_parity([(f"{name} {i}", a, b, o) for i, (a, b, o) in enumerate(zip(fused[k], ref[k], oracle[k]))],
                      torch.float32, rel_floor=2e-6, what=name)


def test_batch_norms_non_contiguous_and_fallbacks():
    """A non-contiguous input, an eval-mode module, an affine module and a bf16 input in one call: each takes
    its path and still equals its module's own forward."""
    torch.manual_seed(3)
    base = torch.randn(2, 6, 9, 5, dtype=torch.float64)
    xs = [base.transpose(2, 3), torch.randn(2, 6, 5, 9, dtype=torch.float64), torch.randn(3, 4, 5, 5, dtype=torch.float64),
          torch.randn(2, 3, 4, 4).bfloat16()]
    eval_mod = nn.BatchNorm2d(6, affine=False).double().eval()
    affine = nn.BatchNorm2d(4).double()
    groups = [[nn.BatchNorm2d(6, affine=False).double()], [eval_mod], [affine], [nn.BatchNorm2d(3, affine=False).bfloat16()]]
    twins = copy.deepcopy(groups)
    outs = batch_norms.batch_norms_fused(xs, groups)
    want = batch_norms.batch_norms_reference(xs, twins)
    for o, w, g, t in zip(outs, want, groups, twins):
        torch.testing.assert_close(o[0], w[0], rtol=1e-12, atol=1e-12 if o[0].dtype == torch.float64 else 1e-2)
        torch.testing.assert_close(g[0].running_mean, t[0].running_mean, rtol=1e-12, atol=1e-12)


def test_batch_norm_refuses_one_value_per_channel():
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        batch_norms.batch_norms_fused([torch.randn(1, 3, 1, 1)], [[nn.BatchNorm2d(3, affine=False)]])


def _pw_run(impl, xs, ws, grads):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    ws = [w.detach().clone().requires_grad_(True) for w in ws]
    ys = impl(xs, ws)
    gs = torch.autograd.grad(ys, xs + ws, grads)
    return [y.detach() for y in ys], list(gs)


def _pw_inputs(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s, _ in PW_CASES]
    ws = [torch.randn(o, s[1], 1, 1, generator=g, dtype=torch.float64).to(dtype) for s, o in PW_CASES]
    grads = [torch.randn(s[0], o, s[2], s[3], generator=g, dtype=torch.float64).to(dtype) for s, o in PW_CASES]
    return xs, ws, grads


def test_pointwise_float64_equals_conv2d():
    xs, ws, grads = _pw_inputs(torch.float64, 4)
    fused = _pw_run(pointwise.pointwise_convs_fused, xs, ws, grads)
    ref = _pw_run(pointwise.pointwise_convs_reference, xs, ws, grads)
    for name, f, r in zip(("outputs", "gradients"), fused, ref):
        assert_parity([(f"{name} {i}", a, None, b) for i, (a, b) in enumerate(zip(f, r))], torch.float64,
                      rel_floor=1e-12, what=name)


def test_pointwise_float32_against_float64_oracle():
    xs, ws, grads = _pw_inputs(torch.float64, 5)
    oracle = _pw_run(pointwise.pointwise_convs_reference, xs, ws, grads)
    f32 = [[t.float() for t in ts] for ts in (xs, ws, grads)]
    fused = _pw_run(pointwise.pointwise_convs_fused, *f32)
    ref = _pw_run(pointwise.pointwise_convs_reference, *f32)
    for k, name in enumerate(("outputs", "gradients")):
        assert_parity([(f"{name} {i}", a, b, o) for i, (a, b, o) in enumerate(zip(fused[k], ref[k], oracle[k]))],
                      torch.float32, rel_floor=1e-6, what=name)


def test_pointwise_non_contiguous_input_and_shared_input():
    """A transposed input, and one input read by two weights (the factorized reduce's edges)."""
    torch.manual_seed(6)
    x = torch.randn(2, 5, 11, 7, dtype=torch.float64).transpose(2, 3)
    ws = [torch.randn(3, 5, 1, 1, dtype=torch.float64) for _ in range(2)]
    grads = [torch.randn(2, 3, 7, 11, dtype=torch.float64) for _ in range(2)]
    fused = _pw_run(pointwise.pointwise_convs_fused, [x, x], ws, grads)
    ref = _pw_run(pointwise.pointwise_convs_reference, [x, x], ws, grads)
    for f, r in zip(fused[0] + fused[1], ref[0] + ref[1]):
        torch.testing.assert_close(f, r, rtol=1e-12, atol=1e-12)


def test_fused_ops_do_not_depend_on_the_thread_count():
    """The same bits with 1 and 2 intra-op threads (each channel or batch item is one thread's)."""
    torch.manual_seed(7)
    xs = [torch.randn(16, 8, 64, 64) for _ in range(3)]
    ws = [torch.randn(8, 8, 1, 1) for _ in range(3)]
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(8)
            groups = _bn_modules([x.shape for x in xs], torch.float32)
            bn = _bn_run(batch_norms.batch_norms_fused, xs, groups, xs)
            pw = _pw_run(pointwise.pointwise_convs_fused, xs, ws, [torch.ones(16, 8, 64, 64)] * 3)
            results.append([t for part in (bn[0], bn[1], bn[2], pw[0], pw[1]) for t in part])
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 2, 7, 9), (3, 1, 1, 1), (2, 4, 6, 5), (1, 3, 5, 2)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_offset_grids_equal_the_slices(shape, dtype):
    """Forward and gradient bit for bit (the op only moves values), odd sizes and 1x1 maps included, and a
    non-contiguous input; a gradient for one grid only."""
    torch.manual_seed(sum(shape))
    base = torch.randn(shape[0], shape[1], shape[3], shape[2]).to(dtype)
    for x in (torch.randn(*shape).to(dtype), base.transpose(2, 3)):
        xf, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        fused, ref = offset_grids.offset_grids_fused(xf), offset_grids.offset_grids_reference(xr)
        grads = [torch.randn_like(r) for r in ref]
        assert all(torch.equal(f, r) for f, r in zip(fused, ref))
        assert all(f.is_contiguous() for f in fused)
        torch.autograd.backward(fused, grads)
        torch.autograd.backward(ref, grads)
        assert torch.equal(xf.grad, xr.grad)
        assert torch.equal(torch.autograd.grad(offset_grids.offset_grids_fused(xf)[1].sum(), xf)[0],
                           torch.autograd.grad(offset_grids.offset_grids_reference(xr)[1].sum(), xr)[0])
