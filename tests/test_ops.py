"""Shape and gradient of every candidate operation and cell; batch independence of recurrent candidates."""
import pytest
import torch
from helpers import small_model_config

from emodarts.model.cnn_ops import make_cnn_op
from emodarts.model.config import ModelConfig
from emodarts.model.seq_ops import make_seq_op
from emodarts.model.space import CNN_PRIMITIVES, RECURRENT_PRIMITIVES, SEQ_PRIMITIVES
from emodarts.model.supernet import Supernet


@pytest.mark.parametrize("name", [p for p in CNN_PRIMITIVES if p != "none"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 11), (1, 1)])
def test_cnn_op_shape_and_grad(name, stride, size):
    op = make_cnn_op(name, 4, stride, affine=True)
    x = torch.randn(3, 4, *size, requires_grad=True)
    y = op(x)
    expect = tuple(-(-s // stride) for s in size)  # ceil(n / stride)
    assert y.shape == (3, 4) + expect
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in op.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", [p for p in SEQ_PRIMITIVES if p != "none"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (3, 16)])
def test_seq_op_shape_and_grad(name, shape):
    op = make_seq_op(name, 6)
    x = torch.randn(*shape, 6, requires_grad=True)
    y = op(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in op.parameters():
        assert p.grad is not None


def test_skip_connect_is_not_a_copy():
    x = torch.randn(2, 3, 5, 5)
    assert make_cnn_op("skip_connect", 3, 1, affine=False)(x) is x
    s = torch.randn(2, 5, 6)
    assert make_seq_op("skip_connect", 6)(s) is s


@pytest.mark.parametrize("name", RECURRENT_PRIMITIVES)
def test_recurrent_output_independent_of_batch_mates(name):
    """docs/pitfalls.md #1: utterance i's output must not change when the other utterances change."""
    torch.manual_seed(0)
    op = make_seq_op(name, 5).eval()
    x = torch.randn(4, 9, 5)
    other = x.clone()
    other[1:] = torch.randn(3, 9, 5)
    torch.testing.assert_close(op(x)[0], op(other)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(op(x[:1])[0], op(x)[0], rtol=0, atol=1e-6)


def test_supernet_output_independent_of_batch_mates():
    torch.manual_seed(0)
    net = Supernet(small_model_config(), 10, 4).eval()
    x = torch.randn(5, 1, 10, 13)
    other = x.clone()
    other[1:] = torch.randn(4, 1, 10, 13)
    torch.testing.assert_close(net(x)[0], net(other)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,frames", [(1, 13), (2, 17), (3, 9), (1, 5)])
def test_supernet_forward_backward(batch, frames):
    torch.manual_seed(1)
    net = Supernet(small_model_config(), 10, 4)
    x = torch.randn(batch, 1, 10, frames)
    logits = net(x)
    assert logits.shape == (batch, 4)
    logits.sum().backward()
    for a in net.arch_parameters():
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    used = [p for p in net.weights() if p.grad is not None]
    assert len(used) == len(net.weights())


def test_each_cell_shape_and_grad():
    torch.manual_seed(2)
    cfg = small_model_config(cnn_layers=4, cnn_nodes=3, seq_cells=2, seq_nodes=3)
    net = Supernet(cfg, 10, 4)
    x = torch.randn(2, 1, 10, 15)
    s0 = s1 = net.stem(x)
    for cell in net.cnn_cells:
        alpha = net.alpha_reduce if cell.reduction else net.alpha_normal
        out = cell(s0, s1, alpha, net.backend)
        assert out.shape[1] == cfg.cnn_nodes * cell.pre[1][1].out_channels
        assert out.shape[2] == -(-s1.shape[2] // (2 if cell.reduction else 1))
        s0, s1 = s1, out
    q0, q1 = net.handoff(s0, s1)
    assert q0.shape == q1.shape == (2, s1.shape[3], cfg.hidden)
    for cell in net.seq_cells:
        q0, q1 = q1, cell(q0, q1, net.alpha_seq, net.backend)
        assert q1.shape == q0.shape
    q1.sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in net.arch_parameters())


def test_paper_preset_builds_with_all_candidates():
    cfg = ModelConfig()
    assert len(cfg.cnn_primitives) == 8 and len(cfg.seq_primitives) == 14
    net = Supernet(ModelConfig(cnn_layers=2, seq_cells=1, hidden=16), 16, 4)
    assert net(torch.randn(1, 1, 16, 12)).shape == (1, 4)
