"""A whole supernet step with the fused backend (CNN cells grouped by source state, C++ mixed sum, pools and
grouped recurrent layer on the CPU) equals the reference backend: logits, the gradient of every weight and
alpha, and every batch-norm running statistic, on fresh random inputs.

Judged as `emodarts compare` judges (tests/parity.py): each tensor against the reference run in float64,
the fused error within 4x the float32 reference's own error, or below a floor."""
import os

import pytest
import torch
from helpers import run_in_fresh_process, small_model_config
from parity import assert_parity

from emodarts.model.space import DARTS_SEQ_PRIMITIVES
from emodarts.model.supernet import Supernet

ALL_SEQ = ("none", "skip_connect", "lstm_1", "lstm_2", "rnn_1", "rnn_3", "lstm_att_1", "rnn_att_2")
# per-tensor floor (relative to the tensor's own largest magnitude), as compare's floors for gradients
REL_FLOOR = {"logits": 1e-5, "grad": 1e-4}


def step_grads(backend, cfg, state, x, y, dtype=torch.float32, device="cpu"):
    """(logits, {name: gradient, or "buffer NAME": running statistic}) of one training forward+backward, on
    the CPU whatever `device` ran it."""
    net = Supernet(cfg, x.shape[2], 4, backend=backend)
    net.load_state_dict(state)
    net.to(device=device, dtype=dtype)
    logits = net(x.to(device, dtype))
    loss = torch.nn.functional.cross_entropy(logits, y.to(device))
    params = [p for _, p in net.named_parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    named = {n: None if g is None else g.cpu() for (n, _), g in zip(net.named_parameters(), grads)}
    named.update({f"buffer {n}": b.detach().cpu() for n, b in net.named_buffers() if b.is_floating_point()})
    return logits.detach().cpu(), named


def check_step(batch, frames, seq_nodes, seq_space):
    """One fused step against the float32 reference, both judged against the float64 reference."""
    torch.manual_seed(batch * 100 + frames)
    prims = DARTS_SEQ_PRIMITIVES if seq_space == "darts" else ALL_SEQ
    cfg = small_model_config(dropout=0.0, seq_nodes=seq_nodes, seq_cells=2, seq_primitives=prims, seq_space=seq_space)
    state = Supernet(cfg, 10, 4).state_dict()
    x, y = torch.randn(batch, 1, 10, frames), torch.randint(0, 4, (batch,))
    verdicts = judge_step(step_grads("reference", cfg, state, x, y, torch.float64),
                          step_grads("reference", cfg, state, x, y), step_grads("fused", cfg, state, x, y))
    return max(v.fused_err / v.bound for v in verdicts if v.bound > 0)


def judge_step(oracle_run, ref_run, fused_run):
    """(logits, {name: gradient or buffer}) of the float64 reference, the float32 reference and the fused
    backend: logits and then every gradient and buffer judged together (tests/parity.py); returns the
    gradients' verdicts."""
    (oracle_out, oracle), (ref_out, ref), (fused_out, fused) = oracle_run, ref_run, fused_run
    assert_parity([("logits", fused_out, ref_out, oracle_out)], torch.float32, rel_floor=REL_FLOOR["logits"],
                  what="logits")
    triples = []
    for name, g in oracle.items():
        if g is None:
            assert ref[name] is None and fused[name] is None, name
            continue
        triples.append((name, fused[name], ref[name], g))
    return assert_parity(triples, torch.float32, rel_floor=REL_FLOOR["grad"], what="gradients")


@pytest.mark.parametrize("batch,frames,seq_nodes,seq_space", [(1, 9, 2, "emodarts"), (3, 13, 3, "emodarts"),
                                                           (2, 21, 2, "emodarts"), (1, 9, 1, "darts"),
                                                           (3, 13, 4, "darts")])
def test_fused_supernet_step_equals_reference(batch, frames, seq_nodes, seq_space):
    print("worst error / bound", check_step(batch, frames, seq_nodes, seq_space))


def test_fused_supernet_step_without_avx2():
    """The same judgement with the extension's baseline (SSE2) float32 kernels, as on a CPU without AVX2
    (EMODARTS_GROUPED_NO_AVX2 is read once per process, hence a fresh one)."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            "import torch; torch.set_num_threads(1)\n"
            "from test_fused_supernet import check_step\n"
            "print(check_step(3, 13, 3, 'emodarts')); print(check_step(3, 13, 4, 'darts'))\n")
    run_in_fresh_process(code, EMODARTS_GROUPED_NO_AVX2="1", OMP_NUM_THREADS="1")
