"""Issue 13 (GPU readiness): the fused ops on a real GPU. Every test here is marked `gpu` (skipped, with the
reason, where torch.cuda.is_available() is false); `python bench/run_all.py` runs them on a GPU loan.

- two GPUs: every fused op on cuda:1 while cuda:0 is current (device guards);
- no host synchronisation: each fused op's forward and backward under torch.cuda.set_sync_debug_mode("error");
- CUDA graphs: a forward + backward through all three fused ops captured once, replayed on new inputs;
- Triton bf16 mixed sum: the fused bf16 error held against the reference's own bf16 error (both against
  float64), strided inputs and several chunks included;
- torch.compile (Inductor) of a model that calls the Triton mixed sum;
- the DARTS cell at a paper-like size.
The grouped CUDA layer at hidden 128-1024 and T > 7 is in tests/test_grouped_recurrent.py, the DARTS backward's
memory in tests/test_darts_kernel.py, whole search steps in tests/test_gpu_supernet.py.
"""
import copy

import pytest
import torch
from helpers import sync_debug
from parity import assert_parity
from torch import nn

from emodarts.ops import darts_rnn as df
from emodarts.ops import mixed_sum
from emodarts.ops import grouped_recurrent
from emodarts.ops import grouped_recurrent as gr

pytestmark = pytest.mark.gpu

E, M = 5, 8


@pytest.fixture(autouse=True)
def ieee_fp32(monkeypatch):
    """The references must not be rounder than the fused paths they judge: no TF32 (cuDNN uses it by
    default)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture(scope="module")
def cuda_ops():
    gr.ensure_cuda()
    df.ensure_cuda()
    mixed_sum.kernels_module()




# --------------------------------------------------------------------------------------------------
# inputs


def mixed_inputs(device, dtype=torch.float32, k=11, shape=(8, 16, 24, 20), seed=0):
    """k inputs (two chunks of the Triton kernel) with a transposed, a sliced and an expanded one; alpha,
    index and a transposed output gradient."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*s):
        return torch.randn(*s, generator=gen).to(dtype).to(device)

    ys = [randn(*shape) for _ in range(k - 3)]
    ys.append(randn(*reversed(shape)).permute(3, 2, 1, 0))
    ys.append(randn(*shape[:-1], 2 * shape[-1] + 1)[..., ::2][..., : shape[-1]])
    ys.append(randn(shape[0], 1, *shape[2:]).expand(*shape))
    alpha = torch.randn(E, M, generator=gen).to(device)
    pairs = [(e, m) for e in range(E) for m in range(1, M)]
    index = [pairs[(5 * i) % len(pairs)] for i in range(k)]
    g = randn(*reversed(shape)).permute(3, 2, 1, 0)
    return ys, alpha, index, g


def run_mixed(fn, ys, alpha, index, g):
    leaves = [y.detach().clone().requires_grad_(True) for y in ys]
    a = alpha.detach().clone().requires_grad_(True)
    out = fn(leaves, a, index)
    grads = torch.autograd.grad(out, leaves + [a], g)
    return [out.detach()] + list(grads)


def judge_mixed(device, dtype, slack=2.0, **kw):
    """Fused vs reference in `dtype`, both against the float64 reference on the CPU."""
    ys, alpha, index, g = mixed_inputs(device, dtype, **kw)
    got = run_mixed(mixed_sum.mixed_sum_fused, ys, alpha, index, g)
    ref = run_mixed(mixed_sum.mixed_sum_reference, ys, alpha, index, g)
    truth = run_mixed(mixed_sum.mixed_sum_reference, [y.double().cpu() for y in ys], alpha.double().cpu(), index,
                      g.double().cpu())
    names = ["out"] + [f"grad[{i}]" for i in range(len(ys))] + ["grad_alpha"]
    assert all(a.device == ys[0].device for a in got)
    assert_parity([(n, a.cpu(), r.cpu(), t) for n, a, r, t in zip(names, got, ref, truth)], dtype, slack=slack,
                  rel_floor=1e-6 if dtype == torch.float32 else 1e-5, what=f"mixed sum {dtype} on {device}")


def grouped_modules(hidden=32, inputs=24, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return [m.to(dtype) for m in (nn.LSTM(inputs, hidden, batch_first=True), nn.RNN(inputs, hidden, batch_first=True),
                                  nn.LSTM(inputs, hidden, num_layers=2, batch_first=True),
                                  nn.RNN(inputs, hidden, batch_first=True, bidirectional=True))]


def darts_inputs(T=9, B=4, H=32, S=4, dtype=torch.float32, seed=0):
    from test_darts_kernel import make_inputs

    return make_inputs(T, B, H, S, dtype=dtype, seed=seed)


# --------------------------------------------------------------------------------------------------
# item 1: two GPUs


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (torch.cuda.device_count() < 2)")
def test_every_fused_op_runs_on_the_second_gpu(cuda_ops):
    """Inputs on cuda:1 while cuda:0 is current: results on cuda:1, equal to the same ops on cuda:0, and the
    current device unchanged."""
    torch.cuda.set_device(0)
    d0, d1 = torch.device("cuda:0"), torch.device("cuda:1")
    judge_mixed(d1, torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        judge_mixed(d1, dtype)
    assert torch.cuda.current_device() == 0
    # the grouped layer and the DARTS cell: the same numbers on both GPUs
    mods0 = grouped_modules()
    mods1 = [copy.deepcopy(m) for m in mods0]
    x = torch.randn(3, 10, 24)
    outs = []
    for mods, dev in ((mods0, d0), (mods1, d1)):
        mods = [m.to(dev) for m in mods]
        xd = x.to(dev).requires_grad_(True)
        ys = gr.grouped_recurrent_fused(xd, mods)
        gx, = torch.autograd.grad(sum(y.square().sum() for y in ys), [xd])
        assert all(y.device == dev for y in ys) and gx.device == dev
        outs.append([y.detach().cpu() for y in ys] + [gx.cpu()])
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    inputs = darts_inputs()
    res = []
    for dev in (d0, d1):
        leaves = [t.to(dev).requires_grad_(True) for t in inputs]
        hs = df.darts_rnn_fused(*leaves)
        grads = torch.autograd.grad(hs.square().sum(), leaves)
        assert hs.device == dev and all(g.device == dev for g in grads)
        res.append([hs.detach().cpu()] + [g.cpu() for g in grads])
    for a, b in zip(*res):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.cuda.current_device() == 0


# --------------------------------------------------------------------------------------------------
# item 2: no synchronisation, CUDA graphs


def fused_step(ys, alpha, index, x, mods, darts):
    """Forward and backward through all three fused ops; returns the loss and every gradient."""
    out = mixed_sum.mixed_sum_fused(ys, alpha, index)
    hs_group = gr.grouped_recurrent_fused(x, mods)
    hs = df.darts_rnn_fused(*darts)
    loss = out.square().mean() + sum(h.square().mean() for h in hs_group) + hs.square().mean()
    params = [p for m in mods for p in m.parameters()]
    grads = torch.autograd.grad(loss, [*ys, alpha, x, *params, *darts])
    return [loss.detach()] + list(grads)


def fused_step_inputs(seed=0):
    dev = torch.device("cuda")
    ys, alpha, index, _ = mixed_inputs(dev, seed=seed)
    ys = [y.detach().clone().requires_grad_(True) for y in ys]  # leaves (the expanded one made dense)
    alpha = alpha.requires_grad_(True)
    mods = [m.to(dev) for m in grouped_modules(seed=seed)]
    x = torch.randn(3, 10, 24, device=dev, requires_grad=True)
    darts = [t.to(dev).requires_grad_(True) for t in darts_inputs(seed=seed)]
    return ys, alpha, index, x, mods, darts


def test_fused_ops_never_synchronise(cuda_ops):
    """Forward and backward of the mixed sum (strided inputs: the old stride table was copied to the device on
    every call), the grouped layer (its direction flags were) and the DARTS cell, under
    set_sync_debug_mode("error"): any synchronising call (a blocking copy, .item(), ...) raises."""
    args = fused_step_inputs()
    fused_step(*args)  # warm: Triton compiles, the cached (e, m) index
    with sync_debug("error"):
        for _ in range(2):
            fused_step(*args)
    torch.cuda.synchronize()


def test_fused_forward_backward_replays_in_a_cuda_graph(cuda_ops):
    """One capture of forward + backward through the three fused ops; replays on new input values give what
    the eager ops give on them."""
    ys, alpha, index, x, mods, darts = fused_step_inputs()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fused_step(ys, alpha, index, x, mods, darts)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fused_step(ys, alpha, index, x, mods, darts)
    for seed in (1, 2):
        new = fused_step_inputs(seed)
        with torch.no_grad():
            for dst, src in zip([*ys, alpha, x, *darts], [*new[0], new[1], new[3], *new[5]]):
                dst.copy_(src)
            for m, n in zip(mods, new[4]):
                for p, q in zip(m.parameters(), n.parameters()):
                    p.copy_(q)
        graph.replay()
        eager = fused_step(ys, alpha, index, x, mods, darts)
        for i, (a, b) in enumerate(zip(static_out, eager)):
            scale = b.abs().max().item() + 1e-30
            assert (a - b).abs().max().item() <= 1e-5 * scale, f"output {i} differs after replay"


# --------------------------------------------------------------------------------------------------
# item 6: Triton bf16, torch.compile, the DARTS cell at size


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_triton_low_precision_error_within_the_references(cuda_ops, dtype):
    """The fused bf16 (fp16, fp32) mixed sum's error against float64 is at most twice the reference's own
    error in the same precision (or below the floors), strided inputs and two chunks of inputs included."""
    judge_mixed(torch.device("cuda"), dtype, seed=3)
    judge_mixed(torch.device("cuda"), dtype, k=30, shape=(16, 32, 64, 64), seed=4)


class _MixedModel(nn.Module):
    """A convolution, three candidate ops of it (a strided transpose among them) mixed by the fused sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.alpha = nn.Parameter(1e-1 * torch.randn(2, 4))

    def forward(self, x):
        h = self.conv(x)
        ys = [torch.relu(h), torch.tanh(h), h.transpose(2, 3).contiguous().transpose(2, 3), h * h]
        return mixed_sum.mixed_sum_fused(ys, self.alpha, [(0, 1), (0, 2), (1, 3), (1, 1)])


def test_torch_compile_of_a_model_calling_the_triton_path(cuda_ops):
    """torch.compile (Inductor, fullgraph) traces the Triton mixed sum as the custom op emodarts::mixed_sum
    (its fake kernel) and gives the eager results, forward and gradients."""
    torch.manual_seed(0)
    model = _MixedModel().cuda()
    x = torch.randn(2, 4, 8, 8, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    out_e = model(x)
    grads_e = torch.autograd.grad(out_e.square().sum(), list(model.parameters()))
    out_c = compiled(x)
    grads_c = torch.autograd.grad(out_c.square().sum(), list(model.parameters()))
    assert torch.allclose(out_c, out_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads_e):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("T,B,H,S", [(16, 8, 256, 8), (12, 32, 128, 4)])
def test_darts_cell_on_cuda_at_size(cuda_ops, T, B, H, S):
    """The DARTS cell's CUDA kernels at a paper-like size (T > 7, H up to 256, 8 nodes), float32 against the
    float64 reference, as the CPU tests judge."""
    from test_darts_kernel import compare, make_inputs

    compare(make_inputs(T, B, H, S, dtype=torch.float32, probs="none_heavy", seed=T), 1e-4, device="cuda")


def test_grouped_layer_against_the_reference_on_cuda(cuda_ops):
    """The grouped layer on CUDA against the per-module reference (cuDNN, TF32 off), judged against
    float64 (the large-hidden sweep: tests/test_grouped_recurrent.py::test_cuda_large_hidden_long_sequence)."""
    mods = [m.cuda() for m in grouped_modules(hidden=48)]
    x = torch.randn(4, 11, 24, device="cuda")
    gen = torch.Generator().manual_seed(1)

    def run(fn, ms, xx):
        xx = xx.detach().clone().requires_grad_(True)
        outs = fn(xx, ms)
        gs = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
        torch.autograd.backward(outs, [g.to(o.device, o.dtype) for g, o in zip(gs, outs)])
        res = [o.detach().cpu() for o in outs] + [xx.grad.cpu()] + [p.grad.cpu() for m in ms for p in m.parameters()]
        for m in ms:
            m.zero_grad(set_to_none=True)
        return res

    gen.manual_seed(1)
    truth = run(grouped_recurrent.grouped_recurrent_reference, [copy.deepcopy(m).double() for m in mods], x.double())
    gen.manual_seed(1)
    ref = run(grouped_recurrent.grouped_recurrent_reference, [copy.deepcopy(m) for m in mods], x)
    gen.manual_seed(1)
    got = run(gr.grouped_recurrent_fused, mods, x)
    assert_parity([(f"t{i}", a, r, t) for i, (a, r, t) in enumerate(zip(got, ref, truth))], torch.float32,
                  rel_floor=2e-5, what="grouped layer on CUDA")
