"""Gradients on demand (issue 25): every fused backward computes only the gradients the autograd engine asks
for, and those it computes are bit for bit the ones a backward into every input gives.

For each op: one forward, then torch.autograd.grad into every subset of its inputs (by kind: inputs,
weights, alphas); each subset's gradients must equal the full set's exactly. A dispatch-mode spy checks that
the kernel was told what to skip (its output mask), so a backward that computes everything and drops the
rest would fail here. Then, on the supernet: an alpha step's backward asks no kernel for a weight gradient,
and a weight step's none for an alpha gradient.
"""
import itertools
from typing import Dict, List, Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from emodarts.ops import batch_norms, darts_rnn, mixed_sum, multi_depthwise, pointwise
from emodarts.ops import grouped_recurrent as gr
from emodarts.ops.grad_need import spread


class KernelCalls(TorchDispatchMode):
    """Records the arguments of every emodarts:: op called inside the block."""

    def __init__(self):
        super().__init__()
        self.calls: Dict[str, List[tuple]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith("emodarts::"):
            self.calls.setdefault(name.split("::")[1].split(".")[0], []).append(args)
        return func(*args, **(kwargs or {}))


def subsets(kinds: Dict[str, List[Tensor]]):
    """Every non-empty subset of the input kinds, as (names, tensors)."""
    names = list(kinds)
    for r in range(1, len(names) + 1):
        for combo in itertools.combinations(names, r):
            yield combo, [t for n in combo for t in kinds[n]]


def check_subsets(outputs: Sequence[Tensor], kinds: Dict[str, List[Tensor]], op: str, mask_of):
    """Gradients into each subset equal the full backward's bit for bit; `mask_of(args)` reads the kernel's
    output mask from its recorded arguments, as {kind: bool}, which must be exactly the subset."""
    gen = torch.Generator().manual_seed(5)
    grads_out = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs]
    every = [t for ts in kinds.values() for t in ts]
    full = dict(zip(map(id, every), torch.autograd.grad(outputs, every, grads_out, retain_graph=True)))
    for combo, tensors in subsets(kinds):
        with KernelCalls() as spy:
            got = torch.autograd.grad(outputs, tensors, grads_out, retain_graph=True)
        for t, g in zip(tensors, got):
            assert torch.equal(g, full[id(t)]), f"{op}: gradients into {combo} differ from the full backward's"
        (args,) = spy.calls[op]
        asked = mask_of(args)
        assert asked == {k: k in combo for k in kinds}, f"{op}: asked the kernel for {asked} when {combo} was wanted"


# --------------------------------------------------------------------------------------------------
# the ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16_products"])
@pytest.mark.parametrize("batch", [1, 3])
def test_grouped_recurrent(batch, dtype):
    torch.manual_seed(0)
    mods = [nn.LSTM(5, 4, batch_first=True), nn.RNN(5, 4, batch_first=True), nn.LSTM(5, 4, batch_first=True,
                                                                                     bidirectional=True)]
    x = torch.randn(batch, 7, 5, dtype=dtype, requires_grad=True)  # bf16: float32 weights (csrc/grouped_rnn_bf16.h)
    outs = gr.grouped_recurrent_fused(x, mods)
    kinds = {"x": [x],
             "w_ih": [m.weight_ih_l0 for m in mods] + [mods[2].weight_ih_l0_reverse],
             "w_hh": [m.weight_hh_l0 for m in mods] + [mods[2].weight_hh_l0_reverse],
             "bias": [p for m in mods for n, p in m.named_parameters() if n.startswith("bias")]}
    check_subsets(outs, kinds, "grouped_rnn_backward",
                  lambda args: dict(zip(("x", "w_ih", "w_hh", "bias"), args[-1])))


def test_grouped_recurrent_bias_gradients_are_separate_tensors():
    """b_ih and b_hh get equal gradients in two tensors: clip_grad_norm_ and the optimisers scale gradients in
    place, so one shared tensor would be scaled twice (the concatenated layer of before handed both the same
    memory)."""
    torch.manual_seed(1)
    m = nn.LSTM(3, 2, batch_first=True)
    x = torch.randn(2, 4, 3)
    (y,) = gr.grouped_recurrent_fused(x, [m])
    g_ih, g_hh = torch.autograd.grad(y.sum(), [m.bias_ih_l0, m.bias_hh_l0])
    assert torch.equal(g_ih, g_hh)
    assert g_ih.untyped_storage().data_ptr() != g_hh.untyped_storage().data_ptr()


def test_mixed_sum():
    torch.manual_seed(2)
    alpha = torch.randn(3, 4, requires_grad=True)
    ys = [torch.randn(2, 5, 7, requires_grad=True) for _ in range(5)]
    out = mixed_sum.mixed_sum_cpp(ys, alpha, [(0, 1), (1, 2), (2, 3), (0, 0), (1, 1)])
    check_subsets([out], {"ys": ys, "alpha": [alpha]}, "mixed_sum_bwd",
                  lambda args: dict(zip(("ys", "alpha"), args[-1])))


def test_mixed_sum_triton(monkeypatch):
    """The Triton backward (kernels/mixed_sum.py) is asked for the inputs' gradients and the dot products
    only when wanted, and skips the other: gradients bit for bit the full backward's."""
    from test_mixed_sum import TRITON_DEVICE

    if TRITON_DEVICE is None:
        pytest.skip("Triton needs a CUDA GPU or TRITON_INTERPRET=1")
    km = mixed_sum.kernels_module()
    asked, real = [], km.backward

    def spy(grad, ys, w, need_grads=True, need_dots=True):
        asked.append((need_grads, need_dots))
        grads, dots = real(grad, ys, w, need_grads, need_dots)
        assert (grads is None) != need_grads and (dots is None) != need_dots  # nothing unasked computed
        return grads, dots

    monkeypatch.setattr(km, "backward", spy)
    torch.manual_seed(2)
    alpha = torch.randn(3, 4, device=TRITON_DEVICE, requires_grad=True)
    ys = [torch.randn(2, 5, 7, device=TRITON_DEVICE, requires_grad=True) for _ in range(5)]
    out = mixed_sum.mixed_sum_triton(ys, alpha, [(0, 1), (1, 2), (2, 3), (0, 0), (1, 1)])
    g = torch.randn_like(out)
    every = ys + [alpha]
    full = torch.autograd.grad(out, every, g, retain_graph=True)
    for idx, want in ((range(5), (True, False)), ([5], (False, True)), (range(6), (True, True))):
        asked.clear()
        got = torch.autograd.grad(out, [every[i] for i in idx], g, retain_graph=True)
        assert asked == [want]
        for a, i in zip(got, idx):
            assert torch.equal(a, full[i])


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu_on_read"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_input", "per_candidate_input"])
def test_multi_depthwise(stride, shared, relu):
    torch.manual_seed(3)
    dil = [1, 1, 2, 2, 3]  # kernel 3/5, dilation 1/2 (the blocked kernels) and 3 (the plain loops)
    ws = [torch.randn(6, 1, k, k, requires_grad=True) for k in (3, 5, 3, 5, 3)]
    xs = [torch.randn(2, 6, 9, 11, requires_grad=True) for _ in range(1 if shared else len(ws))]
    outs = multi_depthwise.multi_depthwise_fused(xs, ws, dil, stride, relu=relu)
    check_subsets(outs, {"xs": xs, "ws": ws}, "multi_dw_bwd",
                  lambda args: {"xs": all(args[5]), "ws": all(args[6])})


def test_multi_depthwise_one_weight_of_several():
    """A subset inside a kind: the kernel is asked for the one weight wanted and returns only it."""
    torch.manual_seed(4)
    ws = [torch.randn(3, 1, 3, 3, requires_grad=True) for _ in range(3)]
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    outs = multi_depthwise.multi_depthwise_fused([x], ws, [1, 1, 2], 1)
    full = torch.autograd.grad(sum(o.sum() for o in outs), [x] + ws, retain_graph=True)
    with KernelCalls() as spy:
        (g,) = torch.autograd.grad(sum(o.sum() for o in outs), [ws[1]])
    assert torch.equal(g, full[2])
    (args,) = spy.calls["multi_dw_bwd"]
    assert list(args[5]) == [False] and list(args[6]) == [False, True, False]


@pytest.mark.parametrize("sizes", [(4, 6), (40, 48)], ids=["small_kernel", "gemm"])
def test_pointwise(sizes):
    torch.manual_seed(5)
    c, o = sizes
    xs = [torch.randn(2, c, 5, 3, requires_grad=True) for _ in range(3)]
    ws = [torch.randn(o, c, 1, 1, requires_grad=True) for _ in range(3)]
    outs = pointwise.pointwise_convs_fused(xs, ws)
    check_subsets(outs, {"xs": xs, "ws": ws}, "pointwise_bwd",
                  lambda args: {"xs": all(args[-2]), "ws": all(args[-1])})


def test_darts_rnn():
    torch.manual_seed(6)
    t, b, h, s = 5, 3, 4, 3
    e = s * (s + 1) // 2
    x_proj = torch.randn(t, b, 2 * h, requires_grad=True)
    h0 = torch.randn(b, h, requires_grad=True)
    w0h = (0.3 * torch.randn(h, 2 * h)).requires_grad_(True)
    ws = (0.3 * torch.randn(s, h, 2 * h)).requires_grad_(True)
    probs = torch.softmax(torch.randn(e, 4), -1).requires_grad_(True)
    hs = darts_rnn.darts_rnn_fused(x_proj, h0, w0h, ws, probs)
    names = ("x_proj", "h0", "w0h", "ws", "probs")
    check_subsets([hs], dict(zip(names, [[x_proj], [h0], [w0h], [ws], [probs]])), "darts_rnn_backward",
                  lambda args: dict(zip(names, args[-1])))


def test_batch_norms():
    torch.manual_seed(7)
    xs = [torch.randn(4, 3, 5, 5, requires_grad=True) for _ in range(3)]
    groups = [[nn.BatchNorm2d(3, affine=False)] for _ in xs]
    outs = [o for os_ in batch_norms.batch_norms_fused(xs, groups) for o in os_]
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen) for o in outs]
    full = torch.autograd.grad(outs, xs, grads, retain_graph=True)
    for pick in ([0], [2], [0, 2]):
        with KernelCalls() as spy:
            got = torch.autograd.grad(outs, [xs[i] for i in pick], grads, retain_graph=True)
        assert all(torch.equal(g, full[i]) for g, i in zip(got, pick))
        (args,) = spy.calls["multi_bn_bwd"]
        assert len(args[0]) == len(pick), "the kernel normalised inputs nobody asked a gradient for"


def test_spread_checks_its_count():
    assert spread([torch.ones(1)], [False, True, False])[1] is not None
    with pytest.raises(RuntimeError, match="more gradients"):
        spread([torch.ones(1), torch.ones(1)], [True, False])


# --------------------------------------------------------------------------------------------------
# the steps of a search


def _supernet():
    from emodarts.engine.config import PRESETS
    from emodarts.model.supernet import Supernet

    torch.manual_seed(8)
    return Supernet(PRESETS["tiny"].model, 16, 4, backend="fused")


WEIGHT_MASKS = {  # kernel -> which output-mask entries are weight gradients
    "grouped_rnn_backward": lambda a: list(a[-1])[1:],
    "multi_dw_bwd": lambda a: list(a[6]),  # (grads, xs, ws, dilations, stride, need_x, need_w[, relu])
    "pointwise_bwd": lambda a: list(a[-1]),
    "darts_rnn_backward": lambda a: list(a[-1])[2:4],
}


def _kernel_calls_of_a_step(into) -> KernelCalls:
    """The kernels a tiny supernet's backward into `into(model)` calls (an alpha or a weight step's)."""
    model = _supernet()
    x, y = torch.randn(3, 1, 16, 20), torch.tensor([0, 1, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    with KernelCalls() as spy:
        torch.autograd.grad(loss, into(model))
    return spy


def test_alpha_step_computes_no_weight_gradient():
    spy = _kernel_calls_of_a_step(lambda m: m.arch_parameters())
    called = [k for k in WEIGHT_MASKS if k in spy.calls]
    assert "grouped_rnn_backward" in called and "multi_dw_bwd" in called and "pointwise_bwd" in called
    for kernel in called:
        for args in spy.calls[kernel]:
            assert not any(WEIGHT_MASKS[kernel](args)), f"an alpha step asked {kernel} for a weight gradient"


def test_weight_step_computes_no_alpha_gradient():
    spy = _kernel_calls_of_a_step(lambda m: m.weights())
    assert spy.calls["mixed_sum_bwd"]
    assert not any(args[-1][1] for args in spy.calls["mixed_sum_bwd"]), "a weight step asked for an alpha gradient"
