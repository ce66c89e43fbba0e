"""The weights' optimiser step (engine/optim.py): the fused SGD with the clipping folded into its gradient
scale follows clip_grad_norm_ + plain SGD to rounding, clipping or not, and a restored unfused optimiser
still clips in place."""
import pytest
import torch
from torch import nn

from emodarts.engine.optim import clipped_step, weight_sgd


def _params(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float32).requires_grad_(True) for s in ((7, 5), (3,), (2, 3, 4))]


@pytest.mark.parametrize("grad_size", [0.01, 10.0], ids=["below_the_clip", "clipped"])
def test_fused_clipped_step_follows_clip_then_sgd(grad_size):
    fused, plain = _params(0), _params(0)
    opt_f = weight_sgd(fused, 0.05, 0.9, 3e-4)
    opt_p = torch.optim.SGD(plain, 0.05, momentum=0.9, weight_decay=3e-4, foreach=False)
    assert opt_f.param_groups[0]["fused"]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = [grad_size * torch.randn(p.shape, generator=gen) for p in fused]
        for pf, pp, g in zip(fused, plain, grads):
            pf.grad, pp.grad = g.clone(), g.clone()
        clipped_step(opt_f, fused, 5.0)
        nn.utils.clip_grad_norm_(plain, 5.0)
        opt_p.step()
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
    assert not hasattr(opt_f, "grad_scale")  # the scale is the step's only


def test_unfused_optimizer_clips_in_place():
    ps = _params(2)
    opt = torch.optim.SGD(ps, 0.1, momentum=0.9)
    for p in ps:
        p.grad = 100 * torch.ones_like(p)
    clipped_step(opt, ps, 1.0)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in ps))
    assert abs(float(total) - 1.0) < 1e-5
