"""The second-order alpha gradient (finite differences / 2 eps) against autograd's exact Hessian-vector product."""
import torch

from emodarts.architect import Architect, _virtual_step, cross_entropy_loss, unrolled_alpha_grad
from emodarts.supernet import Supernet

from helpers import small_model_config


SMOOTH_CNN = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def _setup(monkeypatch):
    """A float64 supernet made smooth: a finite difference of a piecewise-linear network (ReLU, max-pool)
    jumps wherever the perturbation crosses a kink, so the algorithm is checked with ReLU -> SiLU and
    without max-pool. The architect code itself is unchanged."""
    monkeypatch.setattr(torch.nn.ReLU, "forward", lambda self, x: torch.nn.functional.silu(x))
    torch.manual_seed(0)
    net = Supernet(small_model_config(dropout=0.0, cnn_primitives=SMOOTH_CNN), 10, 4).double()
    x_w, x_a = torch.randn(6, 1, 10, 9, dtype=torch.float64), torch.randn(6, 1, 10, 9, dtype=torch.float64)
    y_w, y_a = torch.randint(0, 4, (6,)), torch.randint(0, 4, (6,))
    opt = torch.optim.SGD(net.weights(), lr=0.5, momentum=0.9, weight_decay=3e-4)
    # one real step so the momentum buffer takes part in the virtual step
    loss = cross_entropy_loss(net, x_w, y_w)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    for a in net.alphas():
        a.data.normal_(0, 0.5)
    return net, opt, (x_w, y_w, x_a, y_a)


def _exact_unrolled_grad(net, opt, xi, x_w, y_w, x_a, y_a):
    weights, alphas = net.weights(), net.alphas()
    w0 = [w.detach().clone() for w in weights]
    g_w = torch.autograd.grad(cross_entropy_loss(net, x_w, y_w), weights)
    w1 = _virtual_step(w0, g_w, opt, xi)
    with torch.no_grad():
        for w, v in zip(weights, w1):
            w.copy_(v)
    val = cross_entropy_loss(net, x_a, y_a)
    grads = torch.autograd.grad(val, list(alphas) + list(weights))
    g_alpha, dw = grads[: len(alphas)], grads[len(alphas):]
    with torch.no_grad():
        for w, v in zip(weights, w0):
            w.copy_(v)
    g_train = torch.autograd.grad(cross_entropy_loss(net, x_w, y_w), weights, create_graph=True)
    dot = sum((g * d).sum() for g, d in zip(g_train, dw))
    hvp = torch.autograd.grad(dot, alphas)
    return [ga - xi * h for ga, h in zip(g_alpha, hvp)], hvp


def test_second_order_matches_exact_hessian_vector_product(monkeypatch):
    net, opt, batch = _setup(monkeypatch)
    xi = 0.5
    before = [w.detach().clone() for w in net.weights()]
    _, approx = unrolled_alpha_grad(net, opt, xi, *batch)
    for w, b in zip(net.weights(), before):  # weights are restored
        assert torch.equal(w, b)
    exact, hvp = _exact_unrolled_grad(net, opt, xi, *batch)
    flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
    # the Hessian term must matter for this check to mean anything
    assert float(flat(hvp).norm()) * xi > 1e-3 * float(flat(exact).norm())
    rel = float((flat(approx) - flat(exact)).norm() / flat(exact).norm())
    print("relative error", rel)
    assert rel < 1e-3, rel


def test_first_order_is_plain_alpha_gradient(monkeypatch):
    net, opt, (x_w, y_w, x_a, y_a) = _setup(monkeypatch)
    a_opt = torch.optim.SGD(net.alphas(), lr=1.0)
    before = [a.detach().clone() for a in net.alphas()]
    expected = torch.autograd.grad(cross_entropy_loss(net, x_a, y_a), net.alphas())
    Architect(net, opt, a_opt, second_order=False).step(x_w, y_w, x_a, y_a)
    for a, b, g in zip(net.alphas(), before, expected):
        torch.testing.assert_close(a.detach(), b - g, rtol=1e-10, atol=1e-12)
