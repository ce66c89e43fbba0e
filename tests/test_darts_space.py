"""The DARTS recurrent cell as a second sequential space (`--seq-space darts`): its reference, genotype,
derivation, derived network, a search and training on it, and the command line."""
import copy
import json

import pytest
import torch
from click.testing import CliRunner
from helpers import random_run_data, small_model_config, small_run_config

from emodarts.cli.commands import cli
from emodarts.engine.search import run_search
from emodarts.engine.training import run_train
from emodarts.model.cells.darts import FixedDartsCell, MixedDartsCell
from emodarts.model.derive import derive_cell, derive_genotype
from emodarts.model.network import DerivedNetwork
from emodarts.model.space import (
    DARTS_SEQ_PRIMITIVES,
    CellGenotype,
    check_genotype_fits,
    genotype_from_dict,
    load_genotype,
    n_edges,
    save_genotype,
)
from emodarts.model.supernet import Supernet
from emodarts.ops.backend import get_backend
from emodarts.ops.darts_rnn import DARTS_ACTIVATIONS, darts_rnn_reference, edge_index, n_darts_edges
from emodarts.runtime.errors import GenotypeError

DARTS = dict(seq_space="darts", seq_primitives=DARTS_SEQ_PRIMITIVES, seq_nodes=3)
ACT = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda z: z}


def _scalar_step(x_proj, h, w0h, ws, probs):
    """One time step written out element by element from docs/method.md's formula (a second, independent
    reading of the contract)."""
    H = h.shape[-1]
    pre = x_proj + h @ w0h
    s = [h + torch.sigmoid(pre[..., :H]) * (torch.tanh(pre[..., H:]) - h)]
    for i in range(ws.shape[0]):
        acc = torch.zeros_like(h)
        for j in range(i + 1):
            cz = s[j] @ ws[i]
            c, z = torch.sigmoid(cz[..., :H]), cz[..., H:]
            for f, name in enumerate(DARTS_ACTIVATIONS):
                acc = acc + probs[edge_index(i, j), f] * (s[j] + c * (ACT[name](z) - s[j]))
        s.append(acc)
    return sum(s[1:]) / ws.shape[0]


def test_reference_matches_the_formula_step_by_step():
    g = torch.Generator().manual_seed(0)
    T, B, H, S = 3, 2, 5, 3
    x_proj = torch.randn(T, B, 2 * H, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    w0h = torch.randn(H, 2 * H, generator=g, dtype=torch.float64) * 0.3
    ws = torch.randn(S, H, 2 * H, generator=g, dtype=torch.float64) * 0.3
    probs = torch.softmax(torch.randn(n_darts_edges(S), 5, generator=g, dtype=torch.float64), -1)[:, 1:]
    hs = darts_rnn_reference(x_proj, h0, w0h, ws, probs)
    h = h0
    for t in range(T):
        h = _scalar_step(x_proj[t], h, w0h, ws, probs)
        torch.testing.assert_close(hs[t], h, rtol=1e-12, atol=1e-12)


def test_derived_cell_equals_the_mixed_cell_at_one_hot_weights():
    """A genotype is the mixed cell with all mass on one (predecessor, activation) per node."""
    torch.manual_seed(1)
    genotype = CellGenotype(((("relu", 0),), (("identity", 0),), (("sigmoid", 2),), (("tanh", 1),)))
    cell = FixedDartsCell(genotype, hidden=6, dropout=0.0).double()
    q0, q1 = torch.randn(2, 7, 6, dtype=torch.float64), torch.randn(2, 7, 6, dtype=torch.float64)
    probs = torch.zeros(n_darts_edges(4), 4, dtype=torch.float64)
    for i, (act, src) in enumerate(cell.nodes):
        probs[edge_index(i, src), DARTS_ACTIVATIONS.index(act)] = 1.0
    x_proj, h0 = cell.input.project(q0, q1)
    want = darts_rnn_reference(x_proj, h0, cell.input.w0h, cell.ws, probs).transpose(0, 1)
    torch.testing.assert_close(cell(q0, q1), want, rtol=1e-12, atol=1e-12)


def test_mixing_weights_keep_none_mass_and_order_columns():
    cfg = small_model_config(**{**DARTS, "seq_primitives": ("none", "sigmoid", "tanh", "identity")})
    cell = MixedDartsCell(cfg)
    alpha = torch.randn(n_darts_edges(3), 4)
    probs = cell.mixing_weights(alpha)
    full = torch.softmax(alpha, -1)
    assert probs.shape == (6, 4)
    assert torch.all(probs[:, 1] == 0)  # relu is not a candidate here
    fan_in = torch.tensor([1.0, 2, 2, 3, 3, 3])  # a node averages over its predecessors
    torch.testing.assert_close(probs[:, 2], full[:, 1] / fan_in)  # sigmoid
    torch.testing.assert_close(probs.sum(-1), (1 - full[:, 0]) / fan_in)  # none keeps its share


def test_eight_node_cell_stays_bounded_over_time():
    """From the search's initial alphas, the paper-sized cell's states stay O(1) over 32 steps (summed over
    predecessors instead of averaged, they reach ~1e21)."""
    torch.manual_seed(3)
    cfg = small_model_config(**{**DARTS, "seq_nodes": 8, "hidden": 128})
    cell = MixedDartsCell(cfg)
    q = torch.randn(4, 32, 128) * 0.5
    out = cell(q, q, torch.zeros(n_darts_edges(8), 5), get_backend("reference"))
    assert float(out.detach().abs().max()) < 5.0


def test_supernet_shapes_and_alpha_gradient():
    torch.manual_seed(2)
    cfg = small_model_config(**DARTS, seq_cells=2)
    net = Supernet(cfg, 10, 4)
    assert net.alpha_seq.shape == (n_edges(3, n_inputs=1), len(DARTS_SEQ_PRIMITIVES)) == (6, 5)
    out = net(torch.randn(3, 1, 10, 11))
    assert out.shape == (3, 4)
    out.square().sum().backward()
    assert net.alpha_seq.grad.abs().sum() > 0
    for cell in net.seq_cells:
        assert cell.ws.grad.abs().sum() > 0 and cell.input.w0h.grad.abs().sum() > 0


def test_derive_keeps_one_predecessor_and_best_activation():
    alpha = torch.full((n_darts_edges(3), 5), -5.0)
    alpha[:, 0] = 3.0  # `none` strongest everywhere: never kept
    alpha[edge_index(0, 0), 2] = 1.0  # node 0: relu on s0
    alpha[edge_index(1, 0), 1] = 0.5
    alpha[edge_index(1, 1), 4] = 0.9  # node 1: identity on node 0 (state 1) beats tanh on s0
    alpha[edge_index(2, 2), 3] = 2.0  # node 2: sigmoid on node 1 (state 2)
    cell = derive_cell(alpha, DARTS_SEQ_PRIMITIVES, 3, keep=1, n_inputs=1)
    assert cell.nodes == ((("relu", 0),), (("identity", 1),), (("sigmoid", 2),))


def _darts_genotype(seq):
    base = {"format": "emodarts-genotype/1", "seq_space": "darts",
            "normal": [[["skip_connect", 0], ["max_pool_3x3", 1]], [["avg_pool_3x3", 2], ["skip_connect", 1]]],
            "reduce": [[["max_pool_3x3", 0], ["max_pool_3x3", 1]], [["skip_connect", 2], ["avg_pool_3x3", 0]]],
            "seq": seq}
    return base


def test_genotype_round_trip_and_derived_network(tmp_path):
    cfg = small_model_config(**DARTS)
    net = Supernet(cfg, 10, 4)
    genotype = derive_genotype(net, meta={"epoch": 0})
    assert genotype.seq_space == "darts" and all(len(node) == 1 for node in genotype.seq.nodes)
    save_genotype(genotype, tmp_path / "g.json")
    loaded = load_genotype(tmp_path / "g.json")
    assert loaded == genotype and loaded.seq_space == "darts"
    derived = DerivedNetwork(cfg, loaded, 10, 4)
    assert derived(torch.randn(2, 1, 10, 9)).shape == (2, 4)


@pytest.mark.parametrize("seq,field", [
    ([[["relu", 0], ["tanh", 0]], [["tanh", 1]], [["identity", 0]]], "seq[0]"),  # two pairs in one node
    ([[["relu", 1]], [["tanh", 1]], [["identity", 0]]], "seq[0][0]"),  # node 0 may read s0 only
    ([[["relu", 0]], [["lstm_1", 1]], [["identity", 0]]], "seq[1][0]"),  # not a DARTS activation
    ([[["relu", 0]], [["none", 1]], [["identity", 0]]], "seq[1][0]"),
])
def test_malformed_darts_genotype_names_the_field(seq, field):
    with pytest.raises(GenotypeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        genotype_from_dict(_darts_genotype(seq), where="g.json")


def test_genotype_of_another_space_is_refused():
    g = genotype_from_dict(_darts_genotype([[["relu", 0]], [["tanh", 1]], [["identity", 2]]]))
    with pytest.raises(GenotypeError, match="seq_space"):
        check_genotype_fits(g, small_model_config())  # an emodarts-space configuration
    check_genotype_fits(g, small_model_config(**DARTS))
    bad = _darts_genotype([[["relu", 0]]])
    bad["seq_space"] = "enas"
    with pytest.raises(GenotypeError, match="seq_space"):
        genotype_from_dict(bad)
    legacy = copy.deepcopy(bad)  # a genotype written before the field existed is an emodarts one
    del legacy["seq_space"]
    legacy["seq"] = [[["lstm_1", 0], ["skip_connect", 1]], [["rnn_2", 2], ["lstm_1", 0]]]
    assert genotype_from_dict(legacy).seq_space == "emodarts"


def test_search_is_deterministic_and_training_uses_the_darts_genotype(tmp_path):
    cfg, data = small_run_config(epochs=1, **DARTS), random_run_data()
    g1 = run_search(cfg, data, tmp_path / "a", progress=False)
    g2 = run_search(cfg, data, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]["alpha_seq"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]["alpha_seq"]
    assert torch.equal(a, b) and g1 == g2
    genotype = load_genotype(tmp_path / "a" / "genotype.json")
    assert genotype.seq_space == "darts"
    best = run_train(small_run_config(epochs=1, **DARTS), genotype, data, tmp_path / "t", progress=False)
    assert 0.0 <= best["ua"] <= 1.0


def test_cli_search_darts_space_and_train_from_its_genotype(tmp_path, monkeypatch):
    monkeypatch.setenv("EMODARTS_HOME", str(tmp_path / "home"))
    out = tmp_path / "s"
    result = CliRunner().invoke(cli, ["search", "--seq-space", "darts", "--epochs", "1", "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["seq_space"] == "darts" and cfg["model"]["seq_nodes"] == 4
    assert json.loads((out / "genotype.json").read_text())["seq_space"] == "darts"
    trained = CliRunner().invoke(cli, ["train", "--genotype", str(out / "genotype.json"), "--epochs", "1",
                                       "--out", str(tmp_path / "t"), "--no-progress"])
    assert trained.exit_code == 0, trained.output
    assert json.loads((tmp_path / "t" / "config.json").read_text())["model"]["seq_space"] == "darts"
    report = CliRunner().invoke(cli, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert (out / "report" / "cell_seq.png").stat().st_size > 1000


def test_cli_refuses_candidates_of_the_other_space(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--seq-space", "darts", "--seq-candidates", "lstm",
                                      "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 2 and "--seq-candidates" in result.output


def test_reference_backend_runs_the_reference():
    assert get_backend("reference").darts_rnn is darts_rnn_reference
