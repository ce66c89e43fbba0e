"""The loss of a global batch sharded over ranks, and one weight step on it."""
from typing import Optional

import torch
from torch import Tensor, nn

from emodarts.engine.optim import clipped_step
from emodarts.runtime.distributed import global_batch, sum_gradients


def loss_class_weights(kind: str, y: Tensor, n_classes: int) -> Optional[Tensor]:
    """The cross entropy's class weights (--class-weights): none, or balanced: inverse class frequency in `y`
    (the labels the phase trains on), normalised so that a balanced set gets weight 1."""
    if kind == "none":
        return None
    counts = torch.bincount(y, minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


def summed_over_ranks(loss: Tensor) -> float:
    """A loss of this rank's shard of a global batch, summed over the ranks: the global batch's loss."""
    return float(sum_gradients([loss])[0])


def sharded_cross_entropy(class_weights: Optional[Tensor] = None, aux_weight: float = 0.0):
    """loss_fn(model, x, y) over a global batch: this rank's shard of it, summed and divided by the global
    batch's denominator, so that summing gradients across ranks gives the single-process gradient (with
    one process it is the plain mean cross entropy).

    With aux_weight > 0 and a model with an auxiliary head (DerivedNetwork in training mode), the loss is
    CE(logits) + aux_weight * CE(auxiliary logits), as DARTS trains. A global batch of one utterance
    (a last short batch) skips the head: its batch norm after the 2x2 convolution would see one value per
    channel."""

    def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        aux = None
        with global_batch(len(y)) as part:  # dropout masks drawn as one process draws them
            if aux_weight and len(y) > 1 and getattr(model, "aux_head", None) is not None:
                logits, aux = model.forward_with_aux(x[part])
            else:
                logits = model(x[part])
        total = nn.functional.cross_entropy(logits, y[part], weight=class_weights, reduction="sum")
        if aux is not None:
            total = total + aux_weight * nn.functional.cross_entropy(aux, y[part], weight=class_weights,
                                                                     reduction="sum")
        denominator = class_weights[y].sum() if class_weights is not None else y.new_tensor(len(y), dtype=total.dtype)
        return total / denominator

    return loss_fn


def weight_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, clip: float,
                class_weights: Optional[Tensor] = None, aux_weight: float = 0.0) -> float:
    """One SGD step on the weights only (alphas, if any, get no gradient), from a global batch; with
    aux_weight, the auxiliary head's loss is added (see sharded_cross_entropy)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss = sharded_cross_entropy(class_weights, aux_weight)(model, x, y)
    grads = sum_gradients(torch.autograd.grad(loss, params, allow_unused=True))
    for p, g in zip(params, grads):
        p.grad = g
    clipped_step(optimizer, params, clip)
    return summed_over_ranks(loss.detach())
