"""Bilevel alpha updates: first order (xi = 0) and the unrolled second-order gradient of DARTS.

Second order: w' = w - xi * (momentum buffer * mu + grad_w L_train(w) + weight_decay * w), then
grad_alpha = grad_alpha L_val(w', alpha) - xi * H, where the mixed second derivative
H = d/dalpha [grad_w L_train(w, alpha)] . grad_w' L_val(w', alpha) is taken by central finite
differences: (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / (2 * eps), w+- = w +- eps * dw',
eps = 0.01 / ||dw'|| (pitfalls.md #4: the published code divides by 2 and multiplies by eps).
"""
from typing import Callable, List, Sequence

import torch
from torch import Tensor, nn

from .distributed import sum_gradients

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def cross_entropy_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _grad(loss: Tensor, params: Sequence[Tensor]) -> List[Tensor]:
    """Gradient of `loss`, summed across data-parallel ranks (a no-op in a single process); zeros for
    parameters the loss does not reach."""
    grads = sum_gradients(torch.autograd.grad(loss, params, allow_unused=True))
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class Architect:
    def __init__(self, model, w_optimizer: torch.optim.SGD, alpha_optimizer: torch.optim.Optimizer,
                 second_order: bool = False, loss_fn: LossFn = cross_entropy_loss):
        self.model = model
        self.w_optimizer = w_optimizer
        self.alpha_optimizer = alpha_optimizer
        self.second_order = second_order
        self.loss_fn = loss_fn

    def step(self, x_w: Tensor, y_w: Tensor, x_a: Tensor, y_a: Tensor) -> Tensor:
        """One alpha update from the alpha-split batch (x_a, y_a); returns the alpha-split loss."""
        self.alpha_optimizer.zero_grad(set_to_none=True)
        if self.second_order:
            lr = self.w_optimizer.param_groups[0]["lr"]
            loss, grads = unrolled_alpha_grad(self.model, self.w_optimizer, lr, x_w, y_w, x_a, y_a, self.loss_fn)
        else:
            loss = self.loss_fn(self.model, x_a, y_a)
            grads = _grad(loss, self.model.alphas())
        for a, g in zip(self.model.alphas(), grads):
            a.grad = g
        self.alpha_optimizer.step()
        return loss.detach()


def _virtual_step(weights: Sequence[Tensor], grads: Sequence[Tensor], optimizer: torch.optim.SGD,
                  xi: float) -> List[Tensor]:
    """The w that one SGD step (momentum, weight decay) would give, without touching the optimiser."""
    group = optimizer.param_groups[0]
    mu, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
    out = []
    for w, g in zip(weights, grads):
        buf = optimizer.state.get(w, {}).get("momentum_buffer")
        d = g + wd * w
        if buf is not None and mu:
            d = d + mu * buf
        out.append(w - xi * d)
    return out


@torch.no_grad()
def _assign(params: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for p, v in zip(params, values):
        p.copy_(v)


def unrolled_alpha_grad(model, w_optimizer, xi: float, x_w, y_w, x_a, y_a, loss_fn: LossFn = cross_entropy_loss):
    """The DARTS second-order alpha gradient; weights are restored before returning."""
    weights, alphas = model.weights(), model.alphas()
    backup = [w.detach().clone() for w in weights]
    g_w = _grad(loss_fn(model, x_w, y_w), weights)
    try:
        _assign(weights, _virtual_step(backup, g_w, w_optimizer, xi))
        val_loss = loss_fn(model, x_a, y_a)
        grads = _grad(val_loss, list(alphas) + list(weights))
        g_alpha, dw = grads[: len(alphas)], grads[len(alphas):]
        hessian = finite_difference_hvp(model, backup, dw, x_w, y_w, loss_fn)
    finally:
        _assign(weights, backup)
    return val_loss, [g - xi * h for g, h in zip(g_alpha, hessian)]


def finite_difference_hvp(model, w0: Sequence[Tensor], v: Sequence[Tensor], x, y, loss_fn: LossFn) -> List[Tensor]:
    """(grad_alpha L(w0 + eps v) - grad_alpha L(w0 - eps v)) / (2 eps), eps = 0.01 / ||v||."""
    weights, alphas = model.weights(), model.alphas()
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
    eps = 0.01 / float(norm) if float(norm) > 0 else 0.01
    grads = []
    for sign in (1.0, -1.0):
        _assign(weights, [w + sign * eps * d for w, d in zip(w0, v)])
        grads.append(_grad(loss_fn(model, x, y), alphas))
    return [(p - n) / (2.0 * eps) for p, n in zip(*grads)]
