"""The CNN cells grouped by source state (emodarts/model/cells/cnn_grouped.py) against the per-candidate reference path:
the same logits, every gradient and every batch-norm running statistic, on fresh random inputs, at awkward
shapes. The grouping runs here with the reference's kernels (Supernet.grouped_cnn with the reference backend), so any
difference is the grouping's own; tests/test_fused_supernet.py checks it with the fused kernels."""
import copy

import pytest
import torch
from helpers import small_model_config
from parity import assert_parity

from emodarts.model.space import CNN_PRIMITIVES
from emodarts.model.supernet import Supernet



def _step(net: Supernet, x, y, train: bool = True):
    net.train(train)
    logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    names = [n for n, _ in net.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in net.named_parameters()], allow_unused=True)
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    return logits.detach(), dict(zip(names, grads)), buffers


def _pair(cfg, n_features, dtype, seed):
    torch.manual_seed(seed)
    ref = Supernet(cfg, n_features, 4).to(dtype)
    grouped = copy.deepcopy(ref)
    grouped.grouped_cnn = True  # the grouping with the reference's kernels
    return ref, grouped


CASES = {
    # name: (model changes, batch, n_features, frames)
    "odd_sizes": ({}, 3, 11, 13),
    "batch1": ({}, 1, 10, 9),
    "one_node": ({"cnn_nodes": 1}, 2, 9, 7),  # node 0's inputs each have one outgoing edge
    "three_nodes_four_cells": ({"cnn_nodes": 3, "cnn_layers": 4}, 2, 10, 15),
    "pools_and_skip_only": ({"cnn_primitives": ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")}, 2, 7, 9),
    "one_candidate": ({"cnn_primitives": ("none", "sep_conv_5x5")}, 2, 10, 11),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_equals_per_candidate_float64(case):
    """In float64 the grouping changes nothing but summation order: every quantity within 1e-10."""
    changes, batch, n_features, frames = CASES[case]
    cfg = small_model_config(dropout=0.0, **changes)
    ref, grouped = _pair(cfg, n_features, torch.float64, seed=len(case))
    x = torch.randn(batch, 1, n_features, frames, dtype=torch.float64)
    y = torch.randint(0, 4, (batch,))
    for train in (True, False):  # eval mode: each edge's own running statistics
        out_r, g_r, b_r = _step(ref, x, y, train)
        out_g, g_g, b_g = _step(grouped, x, y, train)
        assert_parity([("logits", out_g, None, out_r)], torch.float64, rel_floor=1e-10, what=f"{case} logits")
        grads = [(n, g_g[n], None, g) for n, g in g_r.items() if g is not None]
        assert all((g_g[n] is None) == (g is None) for n, g in g_r.items())
        assert_parity(grads, torch.float64, rel_floor=1e-10, what=f"{case} gradients")
        for n, b in b_r.items():
            if b.is_floating_point():
                assert_parity([(n, b_g[n], None, b)], torch.float64, rel_floor=1e-10, what=f"{case} buffer")
            else:
                assert torch.equal(b_g[n], b), n


def test_grouped_float32_against_float64_oracle():
    """float32: the grouped path's error against the float64 reference within 4x the per-candidate path's own."""
    cfg = small_model_config(dropout=0.0, cnn_nodes=3)
    ref64, _ = _pair(cfg, 10, torch.float64, seed=3)
    ref32, grouped32 = _pair(cfg, 10, torch.float32, seed=3)
    x = torch.randn(2, 1, 10, 13, dtype=torch.float64)
    y = torch.randint(0, 4, (2,))
    o, g_o, b_o = _step(ref64, x, y)
    r, g_r, b_r = _step(ref32, x.float(), y)
    f, g_f, b_f = _step(grouped32, x.float(), y)
    assert_parity([("logits", f, r, o)], torch.float32, rel_floor=1e-5, what="logits")
    assert_parity([(n, g_f[n], g_r[n], g) for n, g in g_o.items() if g is not None], torch.float32, rel_floor=1e-4,
                  what="gradients")
    assert_parity([(n, b_f[n], b_r[n], b) for n, b in b_o.items() if b.is_floating_point()], torch.float32,
                  rel_floor=1e-6, what="running statistics")


def test_non_contiguous_input():
    cfg = small_model_config(dropout=0.0)
    ref, grouped = _pair(cfg, 10, torch.float64, seed=5)
    base = torch.randn(2, 1, 13, 10, dtype=torch.float64)
    x = base.transpose(2, 3)  # (2, 1, 10, 13), not contiguous
    y = torch.tensor([1, 3])
    out_r, g_r, _ = _step(ref, x, y)
    out_g, g_g, _ = _step(grouped, x, y)
    assert_parity([("logits", out_g, None, out_r)], torch.float64, rel_floor=1e-10)
    assert_parity([(n, g_g[n], None, g) for n, g in g_r.items() if g is not None], torch.float64, rel_floor=1e-10)


def test_all_primitives_are_known():
    """The grouping covers every CNN candidate (a new one would need a rule in model/cells/cnn_grouped.py)."""
    from emodarts.model.cells.cnn_grouped import POOLS, _batchable
    from emodarts.model.cnn_ops import FactorizedReduce, make_cnn_op

    for name in CNN_PRIMITIVES:
        if name == "none":
            continue
        for stride in (1, 2):
            op = make_cnn_op(name, 4, stride, affine=False)
            parameter_free = name in POOLS or (name == "skip_connect" and stride == 1)
            assert parameter_free or _batchable(op) or isinstance(op, FactorizedReduce), (name, stride)
