"""Data-parallel search and training through torch.distributed (torchrun): NCCL on GPUs, gloo on CPU.

Every rank holds the same weights and alphas (same seed, same updates). Each step the global batch is cut
into one contiguous shard per rank; losses are sums over the shard divided by the global batch's
denominator, and gradients are summed across ranks, so a step equals the single-process step on the
global batch. Batch norm uses statistics of the global batch (`GlobalBatchNorm2d`), also on gloo where
torch's SyncBatchNorm does not run. Only rank 0 writes files.
"""
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


def info() -> DistInfo:
    return _INFO


def init_from_env(device: str) -> tuple:
    """Join the process group that torchrun describes (WORLD_SIZE > 1); returns (DistInfo, device)."""
    global _INFO
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _INFO, device
    if not dist.is_initialized():
        kind = torch.device(device).type
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    _INFO = DistInfo(dist.get_rank(), dist.get_world_size())
    if torch.device(device).type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return _INFO, device


def set_info(value: DistInfo) -> None:
    """For tests that create the process group themselves."""
    global _INFO
    _INFO = value


def barrier() -> None:
    if _INFO.active:
        import torch.distributed as dist

        dist.barrier()


def shard(n: int) -> slice:
    """This rank's contiguous part of a global batch of n items."""
    per, extra = divmod(n, _INFO.world)
    start = _INFO.rank * per + min(_INFO.rank, extra)
    return slice(start, start + per + (1 if _INFO.rank < extra else 0))


_GLOBAL_BATCH: Optional[int] = None


@contextmanager
def global_batch(n: int) -> Iterator[slice]:
    """While the model runs on this rank's shard of a global batch of n items, random per-sample masks are
    drawn for all n and cut to the shard (`batch_mask`), so every rank draws the same numbers one process
    would, and the data-parallel step equals the single-process step with dropout on."""
    global _GLOBAL_BATCH
    outer, _GLOBAL_BATCH = _GLOBAL_BATCH, n
    try:
        yield shard(n)
    finally:
        _GLOBAL_BATCH = outer


def batch_mask(shape: Sequence[int], keep: float, device, dtype) -> Tensor:
    """Bernoulli(keep) mask of `shape` (dim 0 the batch), drawn as for the whole global batch when one is
    active (global_batch) and cut to this rank's rows; with one process, simply a mask of `shape`."""
    n = _GLOBAL_BATCH
    if n is None or not _INFO.active:
        return torch.empty(tuple(shape), device=device, dtype=dtype).bernoulli_(keep)
    part = shard(n)
    if part.stop - part.start != shape[0]:
        raise RuntimeError(f"batch_mask: a shard of {shape[0]} rows, but this rank's part of {n} is {part}")
    return torch.empty((n, *shape[1:]), device=device, dtype=dtype).bernoulli_(keep)[part]




def sum_gradients(grads: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
    """Sum gradients across ranks in one flat all-reduce (None stays None on every rank)."""
    if not _INFO.active:
        return list(grads)
    import torch.distributed as dist

    present = [g for g in grads if g is not None]
    if not present:
        return list(grads)
    flat = torch.cat([g.reshape(-1).float() for g in present])
    dist.all_reduce(flat)
    out, offset = [], 0
    for g in grads:
        if g is None:
            out.append(None)
            continue
        out.append(flat[offset : offset + g.numel()].view_as(g).to(g.dtype))
        offset += g.numel()
    return out


def check_replicas(named: Sequence[tuple]) -> None:
    """Raise when the given (name, tensor) pairs differ between ranks: every tensor's sum and sum of
    squares are compared through MAX and MIN all-reduces (cheap, even for a large supernet)."""
    if not _INFO.active:
        return
    import torch.distributed as dist

    sig = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().square().sum()])
                       for _, t in named]).flatten()
    hi, lo = sig.clone(), sig.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    bad = (hi != lo).view(-1, 2).any(dim=1)
    if bool(bad.any()):
        names = [n for (n, _), b in zip(named, bad.tolist()) if b]
        raise RuntimeError(f"data-parallel replicas diverged in {', '.join(names[:5])}")


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across ranks (differentiable
    all-reduce of the per-channel sums), on any process-group backend."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _INFO.active):
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import (
            all_reduce,  # differentiable; its successor is private
        )

        c = x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            packed = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count]))
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def use_global_batch_norm(model: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for GlobalBatchNorm2d in place (same parameters and buffers)."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new.to(next(child.buffers()).device))
        else:
            use_global_batch_norm(child)
    return model


def for_data_parallel(model: nn.Module) -> None:
    """Under torchrun, batch norm normalises over the global batch, as the single process does."""
    if info().active:
        use_global_batch_norm(model)
