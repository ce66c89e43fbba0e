"""--class-weights none|balanced for the search and the final training: the weights (inverse class frequency
of the labels a phase trains on, 1 for a balanced set), where each phase applies them, the defaults that keep
earlier runs as they were (search none, training balanced) and the option and key that set them."""
import dataclasses

import pytest
import torch
from helpers import invoke_cli, one_error_line, random_run_data, small_run_config

from emodarts.engine import search as search_mod
from emodarts.engine.config import PRESETS, config_from_dict
from emodarts.engine.losses import loss_class_weights, sharded_cross_entropy


def test_balanced_weights_are_inverse_frequency():
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    w = loss_class_weights("balanced", y, 4)  # class 3 absent: counted as one
    assert torch.allclose(w, torch.tensor([7 / 12, 7 / 4, 7 / 8, 7 / 4]))  # counts 3, 1, 2 and 1 for the absent
    assert loss_class_weights("none", y, 4) is None
    assert torch.equal(loss_class_weights("balanced", torch.tensor([0, 1, 2, 3]), 4), torch.ones(4))


def test_the_weighted_loss_is_the_weighted_mean_cross_entropy():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(7, 5), torch.tensor([0, 0, 0, 0, 1, 1, 2])
    w = loss_class_weights("balanced", y, 3)
    got = sharded_cross_entropy(w)(model, x, y)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(model(x), y, weight=w))


@pytest.mark.parametrize("kind", ["none", "balanced"])
def test_the_search_trains_with_the_chosen_weights(kind):
    cfg = small_run_config()
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, class_weights=kind))
    data = random_run_data()
    built = search_mod._build_search(cfg, data)
    expected = loss_class_weights(kind, torch.cat([data.search_w.y, data.search_a.y]), len(data.classes))
    assert (built.class_weights is None) if expected is None else torch.equal(built.class_weights, expected)


def test_defaults_keep_earlier_runs_and_their_config_json():
    cfg = PRESETS["tiny"]
    assert cfg.search.class_weights == "none" and cfg.train.class_weights == "balanced"
    d = cfg.to_dict()
    assert "class_weights" not in d["search"] and "class_weights" not in d["train"]  # older config.json files
    assert config_from_dict(d) == cfg


def test_the_option_sets_both_phases_and_bad_values_are_refused(tmp_path):
    import yaml

    result = invoke_cli("config", "--set", "search.class_weights=balanced")
    assert result.exit_code == 0 and yaml.safe_load(result.output)["search"]["class_weights"] == "balanced"
    line = one_error_line(invoke_cli("search", "--set", "train.class_weights=inverse", "--out", str(tmp_path / "r")))
    assert "field 'train.class_weights' is 'inverse'; expected one of none, balanced" in line
    result = invoke_cli("search", "--class-weights", "sideways", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "sideways" in result.output
