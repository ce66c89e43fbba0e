"""The weights' optimiser step: SGD with momentum and weight decay after clipping the gradients' norm.

A paper-preset supernet has about 9,000 weight tensors and 180 M weights, so the step is bound by memory
traffic, not arithmetic. `clip_grad_norm_` then `SGD.step` reads and writes every weight and gradient
several times (the norm, the in-place scaling, the decayed gradient, the momentum buffer, the update);
PyTorch's fused SGD (`fused=True`, CPU and CUDA) updates each tensor in one pass, and it divides the
gradients by a scale on the way (`grad_scale`, the hook GradScaler uses), which is where the clipping
factor goes: the gradients are read once for the norm and once for the update. Measured on the paper
supernet, 2 threads (Intel Xeon, AVX-512): 396 ms for clip + SGD before, 234 ms fused.
"""
from typing import Sequence

import torch
from torch import Tensor, nn

CLIP_EPS = 1e-6  # clip_grad_norm_'s: coef = max_norm / (norm + 1e-6)


def weight_sgd(params: Sequence[Tensor], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD for the weights, fused (one pass per tensor) where PyTorch supports it for these tensors."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)


def clipped_step(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], max_norm: float) -> None:
    """clip_grad_norm_(params, max_norm) then optimizer.step(). A fused SGD takes the clipping as its
    gradient scale (norm / max_norm when above 1), so the gradients are not rewritten first; any other
    optimiser (e.g. one a checkpoint of an older version restored unfused) clips in place."""
    if not all(g.get("fused") for g in optimizer.param_groups):
        nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return
    grads = [p.grad for p in params if p.grad is not None]
    norm = nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    optimizer.grad_scale = torch.clamp((norm + CLIP_EPS) / max_norm, min=1.0).float()  # the op takes fp32
    optimizer.found_inf = None
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf
