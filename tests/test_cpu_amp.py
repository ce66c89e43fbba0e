"""The fused CPU CNN ops under bf16 autocast (emodarts/ops/cpu_amp.py): on autocast's float32 list, they take
any float input, compute in float32 and hand back float32, so the next fused op reads them without a cast and
none of them falls back to ATen's bf16 kernels.

Parity: each op's output and every gradient, against the op run in float64, within 4x the error of its
reference twin under the same autocast (tests/parity.py), with a floor of half a bf16 ulp of the largest
magnitude compared together.
"""
import copy

import pytest
import torch
from parity import assert_parity
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from emodarts.ops import batch_norms, multi_depthwise, pointwise
from emodarts.ops.cpu_amp import result_dtype, work_dtype

GROUP_ULPS = 0.5


def test_work_and_result_dtypes():
    f32, f64, bf16, f16 = (torch.empty(1, dtype=d) for d in (torch.float32, torch.float64, torch.bfloat16,
                                                            torch.float16))
    assert work_dtype([f64, f64]) == torch.float64
    assert work_dtype([f32, bf16, f16]) == torch.float32
    assert work_dtype([f64, f32]) is None
    assert work_dtype([torch.empty(1, dtype=torch.int64)]) is None
    assert result_dtype(torch.bfloat16) == torch.bfloat16
    with torch.autocast("cpu", torch.bfloat16):
        assert result_dtype(torch.bfloat16) == torch.float32 and result_dtype(torch.float64) == torch.float64
        x64 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
        assert pointwise.pointwise_convs_fused([x64], [torch.randn(4, 3, 1, 1, dtype=torch.float64)])[0].dtype \
            == torch.float64


def _grads(fn, inputs, out_grads):
    """Outputs of fn(inputs) under bf16 autocast, and the gradients of every input."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    with torch.autocast("cpu", torch.bfloat16):
        outs = fn(inputs)
    torch.autograd.backward(outs, [g.to(o.dtype) for g, o in zip(out_grads, outs)])
    return [o.detach() for o in outs], [t.grad for t in inputs]


def _oracle(fn, inputs, out_grads):
    inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    outs = fn(inputs)
    torch.autograd.backward(outs, out_grads)
    return [o.detach() for o in outs], [t.grad for t in inputs]


def check(fused, ref, inputs, out_shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in out_shapes]
    want, want_g = _oracle(ref, inputs, grads)
    r, r_g = _grads(ref, inputs, grads)
    f, f_g = _grads(fused, inputs, grads)
    assert all(o.dtype == torch.float32 for o in f), [o.dtype for o in f]
    assert all(g.dtype == t.dtype for g, t in zip(f_g, inputs))
    assert_parity([(f"output {i}", *z) for i, z in enumerate(zip(f, r, want))], torch.bfloat16,
                  group_ulps=GROUP_ULPS, what="outputs")
    assert_parity([(f"input {i}", *z) for i, z in enumerate(zip(f_g, r_g, want_g))], torch.bfloat16,
                  group_ulps=GROUP_ULPS, what="gradients")


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_pointwise(in_dtype):
    """bf16 inputs (an ATen convolution's output) and float32 ones (a fused op's); odd sizes, batch 1, one
    output channel, a non-contiguous input."""
    torch.manual_seed(1)
    shapes = [((3, 4, 5, 7), 6), ((1, 3, 2, 1), 1), ((2, 9, 3, 10), 5)]
    xs = [torch.randn(*s).to(in_dtype) for s, _ in shapes]
    xs[2] = torch.randn(2, 9, 10, 3).to(in_dtype).transpose(2, 3)
    ws = [torch.randn(o, s[1], 1, 1) for s, o in shapes]
    n = len(xs)
    check(lambda t: pointwise.pointwise_convs_fused(t[:n], t[n:]),
          lambda t: pointwise.pointwise_convs_reference(t[:n], t[n:]), xs + ws,
          [(s[0], o, s[2], s[3]) for s, o in shapes])


def test_multi_depthwise():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 9, 11).bfloat16()
    ws = [torch.randn(5, 1, k, k) for k in (3, 5, 3)]
    dil = [1, 1, 2]
    check(lambda t: multi_depthwise.multi_depthwise_fused(t[:1], t[1:], dil, 1),
          lambda t: multi_depthwise.multi_depthwise_reference(t[:1], t[1:], dil, 1), [x] + ws, [(2, 5, 9, 11)] * 3)


def test_batch_norms():
    """bf16 inputs are normalised by the C++ op in float32 (not by ATen's bf16 batch norm); the running
    statistics move as the reference's do."""
    torch.manual_seed(3)
    shapes = [(3, 4, 5, 7), (1, 3, 2, 1), (8, 6, 4, 4)]
    xs = [torch.randn(*s).bfloat16() for s in shapes]
    groups = [[nn.BatchNorm2d(s[1], affine=False)] for s in shapes]
    ref_groups = copy.deepcopy(groups)
    oracle_groups = [[bn.double() for bn in g] for g in copy.deepcopy(groups)]

    def fused(t):
        return [o[0] for o in batch_norms.batch_norms_fused(t, groups)]

    def ref(t):
        if t[0].dtype == torch.float64:
            return [o[0] for o in batch_norms.batch_norms_reference(t, oracle_groups)]
        return [o[0] for o in batch_norms.batch_norms_reference(t, ref_groups)]

    check(fused, ref, xs, shapes)
    for g, r in zip(groups, ref_groups):
        torch.testing.assert_close(g[0].running_mean, r[0].running_mean, rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(g[0].running_var, r[0].running_var, rtol=1e-2, atol=1e-3)


def test_outside_autocast_bf16_stays_bf16():
    x, w = torch.randn(2, 3, 4, 5).bfloat16(), torch.randn(4, 3, 1, 1).bfloat16()
    assert pointwise.pointwise_convs_fused([x], [w])[0].dtype == torch.bfloat16
    assert multi_depthwise.multi_depthwise_fused([x], [torch.randn(3, 1, 3, 3)], [1], 1)[0].dtype == torch.bfloat16


class AtenCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_fused_cnn_part_under_autocast_runs_the_fused_ops():
    """A tiny fused supernet's CNN part under bf16 autocast: float32 maps, and no fallback to ATen's bf16
    batch norms or batched products (what made --fused --amp bf16 twice as slow as float32); the one ATen
    convolution and batch norm left are the stem's."""
    from emodarts.engine.config import PRESETS
    from emodarts.model.supernet import Supernet

    torch.manual_seed(4)
    model = Supernet(PRESETS["tiny"].model, 16, 4, backend="fused")
    with AtenCalls() as spy, torch.autocast("cpu", torch.bfloat16):
        c0, c1 = model.cnn_part(torch.randn(3, 1, 16, 20))
    assert c0.dtype == c1.dtype == torch.float32
    assert spy.names.count("aten::native_batch_norm") == 1 and spy.names.count("aten::convolution") == 1
    assert not any(n in ("aten::bmm", "aten::einsum") for n in spy.names)
    assert any(n.startswith("emodarts::pointwise_fwd") for n in spy.names)
