"""PC-DARTS (`--partial-channels K`, emodarts/model/partial_channels.py): K = 1 is plain DARTS exactly; the grouped
engine's one-mixed-sum-per-node form equals the edge-by-edge form of the paper (float64, every gradient,
alphas and betas included, and every running statistic); the fused backend is judged against the float64
oracle; edge normalisation enters the derived genotype."""
import copy
from dataclasses import replace

import pytest
import torch
from helpers import small_model_config
from parity import assert_parity
from test_fused_supernet import judge_step, step_grads

from emodarts.model.derive import derive_genotype
from emodarts.model.partial_channels import (
    bypass,
    channel_shuffle,
    check_partial_channels,
    edge_weights,
    node_logits,
)
from emodarts.model.supernet import ALPHA_NAMES, BETA_NAMES, Supernet



def _grads(net: Supernet, x, y, train: bool = True):
    net.train(train)
    logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    named = list(net.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    return logits.detach(), {n: g for (n, _), g in zip(named, grads)}, buffers


def test_k1_is_plain_darts():
    """K = 1 builds and draws exactly what the search without the option does: same parameters (no betas),
    same random stream afterwards, same logits."""
    torch.manual_seed(4)
    plain = Supernet(small_model_config(dropout=0.0), 10, 4)
    after_plain = torch.rand(3)
    torch.manual_seed(4)
    k1 = Supernet(small_model_config(dropout=0.0, partial_channels=1), 10, 4)
    assert torch.equal(torch.rand(3), after_plain)
    assert k1.arch_names == ALPHA_NAMES and not any(n.startswith("beta") for n, _ in k1.named_parameters())
    assert k1.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(k1.state_dict().values(), plain.state_dict().values()))
    x = torch.randn(2, 1, 10, 13)
    for backend in ("reference", "fused"):
        plain.set_backend(backend)
        k1.set_backend(backend)
        assert torch.equal(k1(x), plain(x)), backend
    assert k1.edge_weights("normal") is None and set(k1.alpha_probs()) == set(ALPHA_NAMES)


def test_k_must_divide_the_channels():
    check_partial_channels(4, 8)
    for k, channels in ((3, 8), (0, 8), (-2, 8), (16, 8)):
        with pytest.raises(ValueError, match="partial-channels"):
            check_partial_channels(k, channels)
    with pytest.raises(ValueError, match="must divide"):
        Supernet(small_model_config(partial_channels=4, cnn_channels=6), 10, 4)


def test_node_logits_weigh_candidates_by_beta():
    """softmax of each row is [beta_j * softmax(alpha_j), 1 - beta_j], in float64 to rounding, and stays
    finite when one edge takes nearly all the weight."""
    torch.manual_seed(0)
    alpha, beta = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    b, p = torch.softmax(beta, 0), torch.softmax(alpha, -1)
    cand_logits, bypass_logits = node_logits(alpha, beta)
    got = torch.softmax(cand_logits, -1)
    torch.testing.assert_close(got[:, :5], b[:, None] * p, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(got[:, 5], 1 - b, rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(torch.softmax(bypass_logits, -1)[:, 0], b, rtol=1e-14, atol=1e-16)
    extreme = torch.tensor([80.0, -80.0, 0.0], requires_grad=True)
    logits = node_logits(torch.zeros(3, 4), extreme)[0]
    logits.softmax(-1)[:, :4].sum().backward()
    assert torch.isfinite(logits[:, :4]).all() and torch.isfinite(extreme.grad).all()


def test_edge_weights_are_a_softmax_per_node():
    beta = torch.randn(9, dtype=torch.float64)  # 3 nodes: 2 + 3 + 4 edges
    w = edge_weights(beta, 3)
    for lo, hi in ((0, 2), (2, 5), (5, 9)):
        torch.testing.assert_close(w[lo:hi], torch.softmax(beta[lo:hi], 0))


def test_channel_shuffle_and_bypass():
    x = torch.arange(2 * 6 * 3 * 5, dtype=torch.float64).view(2, 6, 3, 5)
    out = channel_shuffle(x, 3)  # 3 groups of 2: output channel i*3 + g is input channel g*2 + i
    for g in range(3):
        for i in range(2):
            assert torch.equal(out[:, i * 3 + g], x[:, g * 2 + i])
    odd = torch.randn(1, 2, 7, 9)
    assert bypass(odd, 2).shape[-2:] == (4, 5)  # ceil(H/2), as the stride-2 candidates
    assert bypass(odd, 1) is odd


CASES = {
    # name: (model changes, batch, n_features, frames)
    "k2_odd_sizes": ({"partial_channels": 2}, 3, 11, 13),
    "k2_batch1": ({"partial_channels": 2}, 1, 10, 9),
    "k4_three_nodes": ({"partial_channels": 4, "cnn_channels": 4, "cnn_nodes": 3}, 2, 10, 15),
    "k2_one_node": ({"partial_channels": 2, "cnn_nodes": 1}, 2, 9, 7),
    "k2_pools_and_skip_only": ({"partial_channels": 2,
                                "cnn_primitives": ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")}, 2, 7, 9),
    "k2_one_candidate": ({"partial_channels": 2, "cnn_primitives": ("none", "sep_conv_5x5")}, 2, 10, 11),
    "k4_all_channels_one": ({"partial_channels": 4, "cnn_channels": 4}, 2, 9, 11),  # 1 channel per edge in cell 0
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_equals_edge_by_edge_float64(case):
    """The grouped engine's form (one mixed sum for the candidates, one for the bypasses, one shuffle per
    node) against the paper's edge-by-edge form: in float64 every quantity within 1e-10, alphas' and betas'
    gradients included, in training and eval mode."""
    changes, batch, n_features, frames = CASES[case]
    torch.manual_seed(len(case))
    ref = Supernet(small_model_config(dropout=0.0, **changes), n_features, 4).double()
    grouped = copy.deepcopy(ref)
    grouped.grouped_cnn = True  # the grouping with the reference's kernels
    x = torch.randn(batch, 1, n_features, frames, dtype=torch.float64)
    if case == "k2_odd_sizes":
        x = torch.randn(batch, 1, frames, n_features, dtype=torch.float64).transpose(2, 3)  # not contiguous
    y = torch.randint(0, 4, (batch,))
    for train in (True, False):
        out_r, g_r, b_r = _grads(ref, x, y, train)
        out_g, g_g, b_g = _grads(grouped, x, y, train)
        assert_parity([("logits", out_g, None, out_r)], torch.float64, rel_floor=1e-10, what=f"{case} logits")
        assert all((g_g[n] is None) == (g is None) for n, g in g_r.items())
        assert all(g_r[n] is not None and g_r[n].abs().max() > 0 for n in BETA_NAMES)
        assert_parity([(n, g_g[n], None, g) for n, g in g_r.items() if g is not None], torch.float64,
                      rel_floor=1e-10, what=f"{case} gradients")
        for n, b in b_r.items():
            if b.is_floating_point():
                assert_parity([(n, b_g[n], None, b)], torch.float64, rel_floor=1e-10, what=f"{case} buffer")
            else:
                assert torch.equal(b_g[n], b), n


@pytest.mark.parametrize("k,channels,batch,frames", [(2, 2, 3, 13), (4, 4, 1, 9)])
def test_fused_step_against_float64_oracle(k, channels, batch, frames):
    """The fused backend (C++ mixed sum, pools and depthwise kernels on the split channels) within the
    float32 reference's own error of the float64 oracle, every gradient and running statistic."""
    torch.manual_seed(k * 10 + batch)
    cfg = small_model_config(dropout=0.0, partial_channels=k, cnn_channels=channels)
    state = Supernet(cfg, 10, 4).state_dict()
    x, y = torch.randn(batch, 1, 10, frames), torch.randint(0, 4, (batch,))
    judge_step(step_grads("reference", cfg, state, x, y, torch.float64), step_grads("reference", cfg, state, x, y),
               step_grads("fused", cfg, state, x, y))


def test_betas_enter_the_derived_edges():
    """Node 0 of the normal cell: state 0's best candidate is stronger than state 1's, but beta favours
    state 1 so much that the product ranks it first; with the betas equal, state 0 wins."""
    torch.manual_seed(0)
    net = Supernet(small_model_config(partial_channels=2, cnn_nodes=2), 10, 4)
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.alpha_normal[0, 4] = 3.0  # n0 <- s0: sep_conv_3x3 strong
        net.alpha_normal[1, 5] = 2.0  # n0 <- s1: sep_conv_5x5 weaker
        net.alpha_normal[2:, :] = 0.0
        net.beta_normal.zero_()
    with torch.no_grad():
        net.alpha_normal[2, 4] = 3.0  # n1 <- s0 strong, n1 <- s1 and n1 <- n0 equal
        net.alpha_normal[3, 5] = 2.0
        net.alpha_normal[4, 6] = 2.0
    assert {src for _, src in derive_genotype(net).normal.nodes[1]} == {0, 1}  # s0 first, then the lower index
    with torch.no_grad():
        net.beta_normal[2:5] = torch.tensor([-3.0, 0.0, 3.0])  # n1: edges from s0, s1, n0
    kept = derive_genotype(net).normal.nodes[1]
    assert kept == (("sep_conv_5x5", 1), ("dil_conv_3x3", 2)), kept
    probs = net.alpha_probs()
    assert set(probs) == set(ALPHA_NAMES + BETA_NAMES) and probs["beta_normal"].shape == (5,)
    torch.testing.assert_close(probs["beta_normal"][2:5].sum(), torch.tensor(1.0))


@pytest.mark.usefixtures("one_thread")
def test_search_resume_and_report_with_betas(tmp_path):
    """A K = 2 search logs the betas, resumes bit-exactly (betas in the checkpoint and the alpha optimiser),
    and its report shows them; the genotype keeps its form."""
    import json

    from helpers import random_run_data, small_run_config

    from emodarts.engine.search import run_search
    from emodarts.model.space import load_genotype
    from emodarts.report import write_report

    cfg = small_run_config(epochs=2, partial_channels=2)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_search(cfg, random_run_data(), whole, progress=False)
    run_search(cfg, random_run_data(), cut, progress=False, stop_after=1)
    run_search(cfg, random_run_data(), cut, resume=True, progress=False)
    logs = [json.loads(x) for x in (whole / "alphas.jsonl").read_text().splitlines()]
    assert [len(r["beta_normal"]) for r in logs] == [5, 5] and abs(sum(logs[-1]["beta_reduce"][:2]) - 1) < 1e-6
    assert (cut / "alphas.jsonl").read_text() == (whole / "alphas.jsonl").read_text()
    assert load_genotype(cut / "genotype.json") == load_genotype(whole / "genotype.json")
    (whole / "config.json").write_text(json.dumps(cfg.to_dict()))
    md = write_report(whole).read_text()
    assert "Edge weights (PC-DARTS, --partial-channels 2)" in md and "| n1<-s2 |" in md
    assert (whole / "report" / "betas.png").stat().st_size > 0


def test_config_field_only_written_when_used():
    """config.json and checkpoints of plain DARTS runs keep their form (older runs stay resumable); K > 1 is
    written and read back."""
    from emodarts.engine.config import PRESETS, config_from_dict

    plain = PRESETS["tiny"]
    assert "partial_channels" not in plain.to_dict()["model"]
    pc = replace(plain, model=replace(plain.model, partial_channels=4))
    assert pc.to_dict()["model"]["partial_channels"] == 4
    assert config_from_dict(pc.to_dict()) == pc and config_from_dict(plain.to_dict()) == plain
