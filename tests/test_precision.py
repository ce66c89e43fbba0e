"""bf16 autocast on the CPU: the search and training run in bf16, alphas and optimiser state stay fp32."""
from dataclasses import replace

import pytest
import torch
from helpers import random_run_data, small_model_config, small_run_config

from emodarts.engine.evaluation import run_evaluate
from emodarts.engine.search import run_search
from emodarts.engine.training import run_train
from emodarts.model.supernet import Supernet
from emodarts.runtime.precision import autocast


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_bf16_autocast_forward_backward(backend):
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


def test_bf16_search_and_training(tmp_path):
    cfg = replace(small_run_config(epochs=1), amp="bf16")
    data = random_run_data()
    genotype = run_search(cfg, data, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["model"]["alpha_seq"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for k, v in state["model"].items() if k.startswith("alpha"))
    run_train(cfg, genotype, data, tmp_path, progress=False)
    metrics = run_evaluate(cfg, data, tmp_path)
    assert 0.0 <= metrics["ua"] <= 1.0 and metrics["n"] == len(data.test)
