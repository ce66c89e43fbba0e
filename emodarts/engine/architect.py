"""Bilevel alpha updates: first order (xi = 0) and the unrolled second-order gradient of DARTS.

Second order: w' = w - xi * (momentum buffer * mu + grad_w L_train(w) + weight_decay * w), then
grad_alpha = grad_alpha L_val(w', alpha) - xi * H, where the mixed second derivative
H = d/dalpha [grad_w L_train(w, alpha)] . grad_w' L_val(w', alpha) is taken by central finite
differences: (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / (2 * eps), w+- = w +- eps * dw',
eps = 0.01 / ||dw'|| (docs/pitfalls.md #4: the published code divides by 2 and multiplies by eps).

What the finite difference differentiates is one function, so the passes see the same randomness and
the same precision:

- Dropout: the w+ and w- passes replay the random-number state of the pass that gave grad_w L_train(w)
  (the one w' is built from), on the CPU and on every CUDA device of the model, so the three passes draw
  the same masks; the difference then measures the change of the weights, not of the masks. Afterwards the
  generators continue from where the pass at w and the validation pass at w' left them (deterministic; the
  finite-difference passes take nothing from the stream).
- Batch norm: the four passes of the unrolled step (at w for w', at w', at w+ and at w-) run in training
  mode (batch statistics), but the running statistics are restored afterwards: only the weight step
  updates them.
- Mixed precision: every change of the weights drops autocast's cached bf16 copies of them (else the pass
  at w' would run with the bf16 copy of w made by the pass before, and w+ and w- both at w: a Hessian
  term of exactly zero). The w+ and w- passes run with autocast off, in float32 (the weights, the perturbation
  eps * dw' and the two gradients), because under bf16 autocast w +- eps * dw' are cast to the same bf16
  weights (eps * dw' is far below bf16's resolution) and the difference is rounding noise / 2 eps. The
  w' pass and the validation pass at w' stay under the run's autocast.
"""
import contextlib
from typing import Callable, List, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from emodarts.runtime.distributed import sum_gradients

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
            grads = _grad(loss, self.model.arch_parameters())
        for a, g in zip(self.model.arch_parameters(), grads):
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
    """Set the weights in place. Autocast keeps one low-precision copy of each weight per autocast region
    and would go on computing with the copy of the old values: drop those copies."""
    for p, v in zip(params, values):
        p.copy_(v)
    torch.clear_autocast_cache()


# ------------------------------------------------------------------- random numbers, batch norm, autocast
class RngState:
    """The generators that dropout draws from: the CPU one and those of the model's CUDA devices."""

    def __init__(self, model: nn.Module):
        self.devices = sorted({t.device for t in model.parameters() if t.device.type == "cuda"}, key=str)
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, s in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(s, d)


@contextlib.contextmanager
def frozen_batch_norm_stats(model: nn.Module):
    """Batch norm in training mode still normalises with the batch's statistics, but the running mean,
    variance and batch count are as before when the block ends (bit for bit)."""
    saved = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            saved.append((m, [None if b is None else b.detach().clone()
                              for b in (m.running_mean, m.running_var, m.num_batches_tracked)]))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, bufs in saved:
                for cur, old in zip((m.running_mean, m.running_var, m.num_batches_tracked), bufs):
                    if cur is not None and old is not None:
                        cur.copy_(old)


@contextlib.contextmanager
def autocast_off(model: nn.Module):
    """Float32 inside, whatever autocast the caller opened (CPU and the model's CUDA devices)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if any(t.device.type == "cuda" for t in model.parameters()):
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def unrolled_alpha_grad(model, w_optimizer, xi: float, x_w, y_w, x_a, y_a, loss_fn: LossFn = cross_entropy_loss):
    """The DARTS second-order alpha gradient; weights and batch-norm running statistics are restored before
    returning (see the module doc for dropout masks and precision)."""
    weights, alphas = model.weights(), model.arch_parameters()
    backup = [w.detach().clone() for w in weights]
    with frozen_batch_norm_stats(model):
        train_rng = RngState(model)  # the masks of L_train(w), replayed by the finite-difference passes
        g_w = _grad(loss_fn(model, x_w, y_w), weights)
        try:
            _assign(weights, _virtual_step(backup, g_w, w_optimizer, xi))
            val_loss = loss_fn(model, x_a, y_a)
            grads = _grad(val_loss, list(alphas) + list(weights))
            g_alpha, dw = grads[: len(alphas)], grads[len(alphas):]
            after = RngState(model)
            hessian = finite_difference_hvp(model, backup, dw, x_w, y_w, loss_fn, rng=train_rng)
            after.restore()
        finally:
            _assign(weights, backup)
    return val_loss, [g - xi * h for g, h in zip(g_alpha, hessian)]


def finite_difference_hvp(model, w0: Sequence[Tensor], v: Sequence[Tensor], x, y, loss_fn: LossFn,
                          rng: "RngState | None" = None) -> List[Tensor]:
    """(grad_alpha L(w0 + eps v) - grad_alpha L(w0 - eps v)) / (2 eps), eps = 0.01 / ||v||, in float32
    (autocast off). Both passes start from the random-number state `rng` (default: the state at the call),
    so they draw the same dropout masks. The model's weights are left at w0 - eps v: the caller restores them."""
    weights, alphas = model.weights(), model.arch_parameters()
    rng = rng if rng is not None else RngState(model)
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
    eps = 0.01 / float(norm) if float(norm) > 0 else 0.01
    grads = []
    with autocast_off(model):
        for sign in (1.0, -1.0):
            _assign(weights, [w + sign * eps * d for w, d in zip(w0, v)])
            rng.restore()
            grads.append(_grad(loss_fn(model, x, y), alphas))
    return [(p - n) / (2.0 * eps) for p, n in zip(*grads)]
