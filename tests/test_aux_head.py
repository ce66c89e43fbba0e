"""Final training with DARTS's auxiliary head (weight 0.4 in the paper preset): the head sits after the
second reduction cell, adds aux_weight * CE(aux logits) to the training loss only, and never touches
evaluation or prediction; runs without it, and runs of older versions, still load."""
import json
from dataclasses import replace

import pytest
import torch
from helpers import random_run_data, small_model_config, small_run_config

from emodarts.engine.config import PRESETS, TrainConfig, load_config
from emodarts.engine.evaluation import load_final_network, predict, run_evaluate
from emodarts.engine.losses import sharded_cross_entropy
from emodarts.engine.training import build_final_network, run_train
from emodarts.model.derive import derive_genotype
from emodarts.model.network import DerivedNetwork
from emodarts.model.supernet import Supernet


def _genotype(cfg=None):
    torch.manual_seed(0)
    return derive_genotype(Supernet(cfg or small_model_config(), 10, 4))


def _aux_config(epochs=2, aux_weight=0.4):
    cfg = small_run_config(epochs=epochs)
    return replace(cfg, train=replace(cfg.train, aux_weight=aux_weight))


def test_presets_and_defaults():
    assert PRESETS["paper"].train.aux_weight == 0.4
    assert PRESETS["tiny"].train.aux_weight == 0.0
    assert TrainConfig().aux_weight == 0.0  # what a config.json without the field ran with


@pytest.mark.parametrize("shape", [(10, 13), (1, 1), (2, 3), (20, 47)])
def test_aux_head_in_training_only(shape):
    """The head reads the map after the cell at 2/3 of the depth (the second reduction cell), for any map
    size >= 1; in eval mode the network computes exactly what the same network without a head computes."""
    cfg, g = small_model_config(), _genotype()
    torch.manual_seed(1)
    net = DerivedNetwork(cfg, g, shape[0], 4, auxiliary=True)
    plain = DerivedNetwork(cfg, g, shape[0], 4)
    assert plain.aux_head is None and net.aux_index == 2 == 2 * cfg.cnn_layers // 3
    assert net.cnn_cells[net.aux_index].reduction
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("aux_head.") for k in unexpected)
    x = torch.randn(3, 1, *shape)
    net.train()
    torch.manual_seed(2)
    logits, aux = net.forward_with_aux(x)
    assert logits.shape == aux.shape == (3, 4)
    plain.train()
    torch.manual_seed(2)
    assert torch.equal(plain(x), logits)  # the head draws no random numbers: the main path is unchanged
    net.eval()
    plain.eval()
    assert net.forward_with_aux(x)[1] is None
    assert torch.equal(net(x), plain(x))


def test_training_loss_adds_the_weighted_aux_loss():
    cfg, g = small_model_config(), _genotype()
    net = DerivedNetwork(cfg, g, 10, 4, auxiliary=True).train()
    x, y = torch.randn(5, 1, 10, 13), torch.tensor([0, 1, 2, 3, 0])
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    torch.manual_seed(3)
    loss = sharded_cross_entropy(w, aux_weight=0.4)(net, x, y)
    torch.manual_seed(3)
    logits, aux = net.forward_with_aux(x)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(logits, y, weight=w, reduction="sum") + 0.4 * ce(aux, y, weight=w, reduction="sum")) / w[y].sum()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    torch.manual_seed(3)
    without = sharded_cross_entropy(w)(net, x, y)  # aux_weight 0: the main loss only
    torch.testing.assert_close(without, ce(logits, y, weight=w), rtol=1e-6, atol=1e-7)
    # a batch of one utterance skips the head (its batch norm would see one value per channel)
    assert torch.isfinite(sharded_cross_entropy(w, aux_weight=0.4)(net, x[:1], y[:1]))


def test_final_training_with_the_head_resumes_exactly_and_evaluates_without_it(tmp_path):
    data = random_run_data()
    g = _genotype()
    cfg = _aux_config(epochs=3)
    best_full = run_train(cfg, g, data, tmp_path / "full", progress=False)
    run_train(cfg, g, data, tmp_path / "cut", progress=False, stop_after=1)
    best_cut = run_train(cfg, g, data, tmp_path / "cut", resume=True, progress=False)
    assert best_full == best_cut
    a = torch.load(tmp_path / "full" / "train_checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "train_checkpoint.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["config"]["train"]["aux_weight"] == 0.4
    assert any(k.startswith("aux_head.") for k in a["model"])
    # the head was trained (it takes part in the loss), and it changed the main network's training
    init = build_final_network(cfg, g, data).state_dict()
    assert not torch.equal(init["aux_head.classifier.weight"], a["model"]["aux_head.classifier.weight"])
    run_train(_aux_config(epochs=3, aux_weight=0.0), g, data, tmp_path / "plain", progress=False)
    c = torch.load(tmp_path / "plain" / "train_checkpoint.pt", weights_only=False)["model"]
    assert not any(k.startswith("aux_head.") for k in c)
    assert not torch.equal(c["head.linear.weight"], a["model"]["head.linear.weight"])

    # evaluation: the loaded network has the head, but predicts what it predicts without it
    net = load_final_network(tmp_path / "full", cfg, data)
    assert net.aux_head is not None
    plain = DerivedNetwork(cfg.model, g, data.n_features, len(data.classes))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("aux_head.")})
    assert (predict(net, data.test, "cpu")[0] == predict(plain, data.test, "cpu")[0]).all()
    metrics = run_evaluate(cfg, data, tmp_path / "full")
    assert metrics["n"] == len(data.test)


def _make_legacy(run_dir, cfg):
    """Rewrite a run folder as an older version wrote it: no train.aux_weight, no fold, and the share of the
    search data that trained w as search.weight_fraction."""
    def old(d):
        d = json.loads(json.dumps(d))
        if "alpha_split" in d["search"]:
            d.pop("fold")
            d["train"].pop("aux_weight")
            d["search"]["weight_fraction"] = 1 - d["search"].pop("alpha_split")
        return d

    (run_dir / "config.json").write_text(json.dumps(old(cfg.to_dict())))
    for name in ("model.pt", "train_checkpoint.pt", "checkpoint.pt"):
        path = run_dir / name
        if path.exists():
            state = torch.load(path, weights_only=False)
            state["config"] = old(state["config"])
            torch.save(state, path)


def test_runs_of_older_versions_load_evaluate_resume_and_predict(tmp_path):
    from emodarts.cli.predict import load_predictor

    data = random_run_data()
    g = _genotype()
    cfg = small_run_config(epochs=2)
    run = tmp_path / "run"
    run_train(cfg, g, data, run, progress=False, stop_after=1)
    _make_legacy(run, cfg)
    stored = json.loads((run / "config.json").read_text())
    assert "aux_weight" not in stored["train"] and "alpha_split" not in stored["search"]
    loaded = load_config(run / "config.json")
    assert loaded.train.aux_weight == 0.0 and loaded.search.alpha_split == 0.5 and loaded.fold == 0
    assert loaded == cfg
    run_train(loaded, g, data, run, resume=True, progress=False)  # resumes the old checkpoint
    state = torch.load(run / "train_checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and state["config"]["train"]["aux_weight"] == 0.0
    _make_legacy(run, cfg)
    assert load_final_network(run, loaded, data).aux_head is None
    assert run_evaluate(loaded, data, run)["n"] == len(data.test)
    got_cfg, classes, net = load_predictor(run)
    assert got_cfg == cfg and classes == data.classes and net.aux_head is None


def test_legacy_weight_fraction_other_than_a_half(tmp_path):
    cfg = small_run_config()
    d = cfg.to_dict()
    d["search"].pop("alpha_split")
    d["search"]["weight_fraction"] = 0.2
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert load_config(tmp_path / "config.json").search.alpha_split == 0.8
