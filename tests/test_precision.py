"""bf16 autocast on the CPU: the search and training run in bf16, alphas and optimiser state stay fp32."""
from dataclasses import replace

import pytest
import torch
from helpers import random_run_data, small_model_config, small_run_config

from emodarts.engine.evaluation import run_evaluate
from emodarts.engine.search import run_search
from emodarts.engine.training import run_train
from emodarts.model.supernet import Supernet
from emodarts.runtime import precision
from emodarts.runtime.precision import autocast


@pytest.fixture
def bf16_cpu(monkeypatch):
    """What bf16 autocast computes is checked on any CPU: a CPU without bf16 units would run float32 instead
    (test_no_bf16_units_runs_float32_and_says_so_once), so these tests take the units as present."""
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_bf16_autocast_forward_backward(backend, bf16_cpu):
    torch.manual_seed(0)
    net = Supernet(small_model_config(), 10, 4, backend=backend)
    x = torch.randn(3, 1, 10, 13)
    with autocast("cpu", "bf16"):
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    assert logits.dtype == torch.bfloat16
    loss.backward()
    for a in net.arch_parameters():
        assert a.dtype == torch.float32 and a.grad.dtype == torch.float32 and torch.isfinite(a.grad).all()
    # bf16 logits stay close to the fp32 ones
    ref = net(x)
    assert float((logits.float() - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 0.05


def test_bf16_search_and_training(tmp_path, bf16_cpu):
    cfg = replace(small_run_config(epochs=1), amp="bf16")
    data = random_run_data()
    genotype = run_search(cfg, data, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["model"]["alpha_seq"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for k, v in state["model"].items() if k.startswith("alpha"))
    run_train(cfg, genotype, data, tmp_path, progress=False)
    metrics = run_evaluate(cfg, data, tmp_path)
    assert 0.0 <= metrics["ua"] <= 1.0 and metrics["n"] == len(data.test)


def test_no_bf16_units_runs_float32_and_says_so_once(monkeypatch, capsys):
    """Without AVX512-BF16 or AMX, bf16 is emulated (slower than float32): --amp bf16 says so once and the
    model computes in float32, so no op casts anything."""
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: False)
    monkeypatch.setattr(precision, "_told_no_bf16", False)
    net = Supernet(small_model_config(), 10, 4, backend="fused")
    x = torch.randn(3, 1, 10, 13)
    for _ in range(2):
        with autocast("cpu", "bf16"):
            assert not torch.is_autocast_enabled("cpu")
            logits = net(x)
    assert logits.dtype == torch.float32
    assert capsys.readouterr().err.count("no bf16 units") == 1


def test_bf16_units_are_detected_here():
    """The detection agrees with what this machine's CPU reports in /proc/cpuinfo (Linux x86)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this platform to compare the detection with")
    has = " avx512_bf16" in flags or " amx_tile" in flags
    assert precision.cpu_has_bf16_units() == has
