"""A whole supernet step with the fused backend (C++ mixed sum + grouped recurrent layer on the CPU) equals
the reference backend: logits and the gradient of every weight and alpha, on fresh random inputs."""
import pytest
import torch

from emodarts.space import DARTS_SEQ_PRIMITIVES
from emodarts.supernet import Supernet

from helpers import small_model_config

ALL_SEQ = ("none", "skip_connect", "lstm_1", "lstm_2", "rnn_1", "rnn_3", "lstm_att_1", "rnn_att_2")


def _grads(backend, cfg, state, x, y):
    net = Supernet(cfg, x.shape[2], 4, backend=backend)
    net.load_state_dict(state)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    params = [p for _, p in net.named_parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return net(x).detach(), {n: g for (n, _), g in zip(net.named_parameters(), grads)}


@pytest.mark.parametrize("batch,frames,seq_nodes,seq_space", [(1, 9, 2, "emodarts"), (3, 13, 3, "emodarts"),
                                                           (2, 21, 2, "emodarts"), (1, 9, 1, "darts"),
                                                           (3, 13, 4, "darts")])
def test_fused_supernet_step_equals_reference(batch, frames, seq_nodes, seq_space):
    torch.manual_seed(batch * 100 + frames)
    prims = DARTS_SEQ_PRIMITIVES if seq_space == "darts" else ALL_SEQ
    cfg = small_model_config(dropout=0.0, seq_nodes=seq_nodes, seq_cells=2, seq_primitives=prims, seq_space=seq_space)
    state = Supernet(cfg, 10, 4).state_dict()
    x, y = torch.randn(batch, 1, 10, frames), torch.randint(0, 4, (batch,))
    ref_out, ref = _grads("reference", cfg, state, x, y)
    fused_out, fused = _grads("fused", cfg, state, x, y)
    torch.testing.assert_close(fused_out, ref_out, rtol=1e-4, atol=1e-5)
    worst = 0.0
    for name, g in ref.items():
        if g is None:
            assert fused[name] is None, name
            continue
        scale = float(g.abs().max()) + 1e-12
        err = float((fused[name] - g).abs().max()) / scale
        worst = max(worst, err)
        assert err < 1e-3, (name, err)
    print("worst relative gradient error", worst)
