"""The search's affine-free batch norms: `batch_norms_reference` (every BatchNorm2d module on its own input, one
ATen call each) and `batch_norms_fused` (one call for all).

The reference twin of emodarts.ops.batch_norms.batch_norms_fused: every BatchNorm2d module on its own input,
one ATen call each.

The search's affine-free batch norms in one call: the `--fused` twin of batch_norms_reference.

    outs = batch_norms(xs, groups)   # outs[i]== groups[i][j](xs[i]) for BatchNorm2d modules

A group is every module that normalises the same input (a pool's batch norm on every edge leaving a state:
during the search they have no parameters, so one normalisation serves them all); most groups hold one
module. Groups of plain affine-free BatchNorm2d modules in training mode are normalised together with each
module's running statistics moved as its own forward would move them (momentum, or the cumulative average
where momentum is None); anything else (eval mode, affine, the data-parallel GlobalBatchNorm2d, modules of
one group with different eps) goes module by module.

CPU float32/float64 run the C++ ops of csrc/multi_bn.cpp (every input in one call, forward and backward;
the backward needs only the outputs and 1/std, so the inputs are not kept); other devices and dtypes run
ATen's native_batch_norm once per group; under CPU autocast, bf16 and fp16 inputs are normalised in float32
by the C++ ops (emodarts/ops/cpu_amp.py). Double backward is not supported.
"""
from typing import List, Sequence

import torch
from torch import Tensor, nn

from emodarts.ops.cpu_amp import result_dtype
from emodarts.ops.grad_need import wanted

# --------------------------------------------------------------------------------------------------
# the reference twin

def batch_norms_reference(xs: Sequence[Tensor], groups: Sequence[Sequence[nn.Module]]) -> List[List[Tensor]]:
    """For each x, the outputs of its group of batch-norm modules, each module run on x."""
    return [[bn(x) for bn in group] for x, group in zip(xs, groups)]


# --------------------------------------------------------------------------------------------------
# the fused op

_FAST_DTYPES = (torch.float32, torch.float64)


def ops():
    """torch.ops.emodarts with the multi batch-norm ops loaded (JIT-building the extension if needed)."""
    from emodarts.ops.compiled.cpp import load_ops

    return load_ops("emodarts::multi_bn_fwd", "emodarts::multi_bn_bwd", "csrc/multi_bn.cpp",
                    lambda xs, rms, rvs, counts, momenta, sizes, eps: (
                        [torch.empty_like(x) for x in xs], [x.new_empty(x.shape[1]) for x in xs]),
                    lambda grads, ys, invstds: [torch.empty_like(y) for y in ys])


def plain_training(bns: Sequence[nn.Module]) -> bool:
    """Whether one batch-statistics pass stands for all of them: plain affine-free BatchNorm2d in training
    mode, sharing one eps (the data-parallel GlobalBatchNorm2d and eval mode go module by module)."""
    return bool(bns) and all(
        type(b) is nn.BatchNorm2d and b.training and not b.affine and b.track_running_stats
        and b.running_mean is not None and b.eps == bns[0].eps for b in bns)


class _MultiBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, eps: float, groups: Sequence[Sequence[nn.Module]], *xs: Tensor):
        mods = [bn for g in groups for bn in g]
        ys, invstds = ops().multi_bn_fwd(
            list(xs), [bn.running_mean for bn in mods], [bn.running_var for bn in mods],
            [bn.num_batches_tracked for bn in mods], [-1.0 if bn.momentum is None else float(bn.momentum) for bn in mods],
            [len(g) for g in groups], eps)
        ctx.save_for_backward(*ys, *invstds)
        ctx.n = len(xs)
        ctx.mark_non_differentiable(*invstds)
        return tuple(ys)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        saved = ctx.saved_tensors
        need = wanted(ctx)  # one flag per input: only the wanted inputs' normalisations go to the kernel
        idx = [i for i in range(ctx.n) if need[i]]
        ys, invstds = [saved[i] for i in idx], [saved[ctx.n + i] for i in idx]
        gs = [torch.zeros_like(saved[i]) if grads[i] is None else grads[i].contiguous() for i in idx]
        gxs = iter(ops().multi_bn_bwd(gs, ys, invstds) if idx else [])
        return (None, None, *[next(gxs) if n else None for n in need])


def _runs_in_op(x: Tensor, group: Sequence[nn.Module]) -> bool:
    return x.device.type == "cpu" and x.dtype in _FAST_DTYPES and all(
        bn.running_mean.device.type == "cpu" and bn.running_mean.is_contiguous() and bn.running_var.is_contiguous()
        for bn in group)


def _native_once(x: Tensor, group: Sequence[nn.Module]) -> Tensor:
    """One ATen normalisation of x for every module of the group, each module's running statistics and batch
    count moved as its own training forward would move them."""
    eps = group[0].eps
    # native_batch_norm hands back the batch mean and 1 / sqrt(biased var + eps) it normalised with: the
    # running statistics follow from them without a second pass over x
    y, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, eps)
    with torch.no_grad():
        count = x.numel() // x.shape[1]
        var = (invstd.double().pow(-2) - eps) * (count / max(count - 1, 1))
        for bn in group:
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.to(bn.running_var.dtype), alpha=m)
    return y


def batch_norms_fused(xs: Sequence[Tensor], groups: Sequence[Sequence[nn.Module]]) -> List[List[Tensor]]:
    """Same contract as batch_norms_reference (module docstring)."""
    outs: List[List[Tensor]] = [[] for _ in xs]
    in_op: dict = {}  # (eps, dtype) -> indices normalised together by the C++ op
    # under CPU autocast, bf16 / fp16 inputs in float32, as the other fused CNN ops (emodarts/ops/cpu_amp.py)
    xs = [x.float() if x.device.type == "cpu" and result_dtype(x.dtype) != x.dtype and plain_training(group) else x
          for x, group in zip(xs, groups)]
    for i, (x, group) in enumerate(zip(xs, groups)):
        if not plain_training(group):
            outs[i] = [bn(x) for bn in group]
        elif _runs_in_op(x, group):
            in_op.setdefault((group[0].eps, x.dtype), []).append(i)
        else:
            outs[i] = [_native_once(x, group)] * len(group)
    for (eps, _), idx in in_op.items():
        ys = _MultiBatchNorm.apply(eps, [groups[i] for i in idx], *[xs[i].contiguous() for i in idx])
        for i, y in zip(idx, ys):
            outs[i] = [y] * len(groups[i])
    return outs
