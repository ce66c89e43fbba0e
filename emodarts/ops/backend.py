"""The one backend switch: the model asks its backend for `mixed_sum`, never a kernel module.

reference: plain PyTorch (the oracle). fused: Triton on CUDA, the C++ extension on CPU.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from emodarts.ops import reference
from emodarts.runtime.errors import BackendError

BACKENDS = ("reference", "fused")


@dataclass(frozen=True)
class Backend:
    name: str
    mixed_sum: Callable  # (ys, alpha, index) -> weighted sum of one node's candidates
    grouped_recurrent: Callable  # (x, rnns) -> [rnn(x)[0] for rnn in rnns], all candidates reading x
    darts_rnn: Callable  # (x_proj, h0, w0h, ws, probs) -> hs: the mixed DARTS recurrent cell over time
    pool_pair: Callable  # (x, stride) -> (max_pool_3x3(x), avg_pool_3x3(x)), the search space's two pools
    multi_depthwise: Callable  # (xs, weights, dilations, stride) -> depthwise conv of each candidate
    batch_norms: Callable  # (xs, groups of BatchNorm2d) -> per x, every module of its group run on x
    pointwise_convs: Callable  # (xs, weights) -> bias-free 1x1 convolution of each x with its weight
    offset_grids: Callable  # x -> (even, odd) sampling grids of the factorized reduce
    group_cnn: bool = False  # CNN cells grouped by source state (emodarts/model/cnn_grouped.py), not per candidate


def _fp32_grouped(grouped: Callable) -> Callable:
    """The grouped kernel runs in float32/float64: under bf16/fp16 autocast it takes a float32 copy of x
    and hands back outputs in x's dtype, as the mixed sum expects one dtype per node."""

    def run(x, rnns):
        if x.dtype in (torch.float32, torch.float64):
            return grouped(x, rnns)
        with torch.autocast(x.device.type, enabled=False):
            return [y.to(x.dtype) for y in grouped(x.float(), rnns)]

    return run


def _pool_pair() -> Callable:
    """The fused pool pair (C++ on the CPU) when it is built in, else the reference's ATen pools."""
    try:
        from emodarts.ops.pool_fused import pool3x3_pair
    except ImportError:
        from emodarts.ops.pool_reference import pool3x3_pair
    return pool3x3_pair


def get_backend(name: str) -> Backend:
    """Return the named backend; a fused backend that is not built is an error, never a silent fallback."""
    if name == "reference":
        from emodarts.ops import (
            bn_reference,
            dw_reference,
            grids_reference,
            grouped_reference,
            pool_reference,
            pw_reference,
        )
        from emodarts.ops.darts_reference import darts_rnn_reference

        return Backend("reference", reference.mixed_sum, grouped_reference.grouped_recurrent, darts_rnn_reference,
                       pool_reference.pool3x3_pair, dw_reference.multi_depthwise, bn_reference.batch_norms,
                       pw_reference.pointwise_convs, grids_reference.offset_grids)
    if name == "fused":
        try:
            from emodarts.ops import (
                bn_fused,
                darts_fused,
                dw_fused,
                fused,
                grids_fused,
                grouped_recurrent,
                pw_fused,
            )
        except ImportError as exc:
            raise BackendError(
                "the fused backend is not built in this installation: its kernels are missing "
                f"({exc}). Run without --fused to use the reference backend."
            ) from exc
        return Backend("fused", fused.mixed_sum, _fp32_grouped(grouped_recurrent.grouped_recurrent),
                       darts_fused.darts_rnn_fused, _pool_pair(), dw_fused.multi_depthwise, bn_fused.batch_norms,
                       pw_fused.pointwise_convs, grids_fused.offset_grids, group_cnn=True)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def check_device(device: str) -> str:
    """Refuse, in one line and before any work, a device this machine cannot use: an unknown name, cuda
    without a visible GPU, cuda:N beyond the GPUs (torch would fail much later, in a long traceback).
    Returns `device` unchanged."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise BackendError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        raise BackendError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise BackendError(f"--device {device}: no CUDA device is visible on this machine "
                           "(torch.cuda.is_available() is false); use --device cpu")
    n = torch.cuda.device_count()
    if dev.index is not None and not 0 <= dev.index < n:
        raise BackendError(f"--device {device}: there is no GPU {dev.index}; this machine has {n} "
                           f"(cuda:0..cuda:{n - 1})")
    return device


def check_backend(name: str, device: str) -> Backend:
    """Fail early, with a clear message, when `name` cannot run on `device` (e.g. --fused without its
    compiled extension or without Triton, or a device that is not there)."""
    check_device(device)
    backend = get_backend(name)
    if name == "fused":
        from emodarts.ops import fused

        kind = torch.device(device).type
        if fused.default_impl(torch.device(kind)) == "cpp":
            from emodarts.ops.extension import load_extension

            load_extension()
        else:
            fused.kernels_module()
    return backend
