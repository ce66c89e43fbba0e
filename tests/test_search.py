"""Determinism on CPU (same seed, same alphas) and exact resume of the search and of final training."""
import json

import pytest
import torch
from helpers import random_run_data, small_run_config

from emodarts.engine.evaluation import run_evaluate
from emodarts.engine.search import run_search
from emodarts.engine.training import run_train
from emodarts.runtime.errors import CheckpointError


def _alphas(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    return {k: v for k, v in state["model"].items() if k.startswith("alpha_")}, state["model"]


@pytest.mark.parametrize("second_order", [False, True])
def test_same_seed_same_alphas(tmp_path, second_order):
    cfg, data = small_run_config(epochs=1, second_order=second_order), random_run_data()
    run_search(cfg, data, tmp_path / "a", progress=False)
    run_search(cfg, data, tmp_path / "b", progress=False)
    a, _ = _alphas(tmp_path / "a")
    b, _ = _alphas(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k])
    torch.manual_seed(cfg.seed)  # the alphas moved from their initial values: the steps did happen
    from emodarts.model.supernet import Supernet
    init = Supernet(cfg.model, 10, 4).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)


@pytest.mark.parametrize("second_order", [False, True])
def test_search_resume_equals_uninterrupted(tmp_path, second_order):
    """Also second order with dropout on (the finite-difference passes replay the masks of the w' pass and
    put the generator back where the other passes left it)."""
    cfg, data = small_run_config(epochs=3, second_order=second_order), random_run_data()
    full = run_search(cfg, data, tmp_path / "full", progress=False)
    run_search(cfg, data, tmp_path / "cut", progress=False, stop_after=1)
    resumed = run_search(cfg, data, tmp_path / "cut", resume=True, progress=False)
    _, m_full = _alphas(tmp_path / "full")
    _, m_cut = _alphas(tmp_path / "cut")
    for k in m_full:
        assert torch.equal(m_full[k], m_cut[k]), k
    assert resumed == full
    lines = lambda p: [json.loads(x) for x in p.read_text().splitlines()]  # noqa: E731
    assert [r["epoch"] for r in lines(tmp_path / "cut" / "genotypes.jsonl")] == [0, 1, 2]
    assert lines(tmp_path / "cut" / "alphas.jsonl") == lines(tmp_path / "full" / "alphas.jsonl")


def test_train_resume_equals_uninterrupted_and_evaluates(tmp_path):
    cfg, data = small_run_config(epochs=3), random_run_data()
    g = run_search(small_run_config(epochs=1), data, tmp_path / "s", progress=False)
    best_full = run_train(cfg, g, data, tmp_path / "full", progress=False)
    run_train(cfg, g, data, tmp_path / "cut", progress=False, stop_after=2)
    best_cut = run_train(cfg, g, data, tmp_path / "cut", resume=True, progress=False)
    assert best_full == best_cut
    a = torch.load(tmp_path / "full" / "train_checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "train_checkpoint.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    metrics = run_evaluate(cfg, data, tmp_path / "full")
    assert set(metrics) >= {"ua", "wa", "macro_f1", "confusion"}
    assert sum(map(sum, metrics["confusion"])) == len(data.test)


def test_resume_refuses_another_configuration(tmp_path):
    data = random_run_data()
    run_search(small_run_config(epochs=1), data, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="hidden"):
        run_search(small_run_config(epochs=2, hidden=12), data, tmp_path, resume=True, progress=False)


def test_resume_with_more_epochs_follows_the_longer_schedule(tmp_path):
    """--resume --epochs N on a finished 1-epoch search: epochs 1.. run at the learning rates of an N-epoch
    search (not the old schedule's, which past its end climbs again)."""
    data = random_run_data()
    longer = small_run_config(epochs=3)
    run_search(small_run_config(epochs=1), data, tmp_path / "cut", progress=False)
    run_search(longer, data, tmp_path / "cut", resume=True, progress=False)
    run_search(longer, data, tmp_path / "full", progress=False)
    lines = lambda p: [json.loads(x) for x in p.read_text().splitlines()]  # noqa: E731
    lr_cut = [r["lr"] for r in lines(tmp_path / "cut" / "metrics.jsonl")]
    lr_full = [r["lr"] for r in lines(tmp_path / "full" / "metrics.jsonl")]
    assert len(lr_cut) == len(lr_full) == 3
    assert lr_cut[1:] == pytest.approx(lr_full[1:], rel=1e-12)  # epoch 0 ran on the 1-epoch schedule
    assert lr_cut[2] == pytest.approx(longer.search.w_lr_min, rel=1e-12)
