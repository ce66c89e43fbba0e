"""The one backend switch: the model asks its backend for an op (`mixed_sum`, `pool_pair`, ...), never a
kernel module. Every op's home (emodarts/ops/<home>.py) holds `<op>_reference` (plain PyTorch, the oracle)
and `<op>_fused` (Triton on CUDA, the C++ extension on the CPU); a backend is one of the two columns.
"""
import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from emodarts.runtime.errors import BackendError

BACKENDS = ("reference", "fused")
HOMES = {  # Backend field -> (module under emodarts.ops, op name in it)
    "mixed_sum": ("mixed_sum", "mixed_sum"),
    "grouped_recurrent": ("grouped_recurrent", "grouped_recurrent"),
    "darts_rnn": ("darts_rnn", "darts_rnn"),
    "pool_pair": ("pools", "pool3x3_pair"),
    "multi_depthwise": ("multi_depthwise", "multi_depthwise"),
    "batch_norms": ("batch_norms", "batch_norms"),
    "pointwise_convs": ("pointwise", "pointwise_convs"),
    "offset_grids": ("offset_grids", "offset_grids"),
}


@dataclass(frozen=True)
class Backend:
    name: str
    mixed_sum: Callable  # (ys, alpha, index) -> weighted sum of one node's candidates
    grouped_recurrent: Callable  # (x, rnns) -> [rnn(x)[0] for rnn in rnns], all candidates reading x
    darts_rnn: Callable  # (x_proj, h0, w0h, ws, probs) -> hs: the mixed DARTS recurrent cell over time
    pool_pair: Callable  # (x, stride) -> (max_pool_3x3(x), avg_pool_3x3(x)), the search space's two pools
    multi_depthwise: Callable  # (xs, weights, dilations, stride, relu=False) -> depthwise conv of each candidate
    batch_norms: Callable  # (xs, groups of BatchNorm2d) -> per x, every module of its group run on x
    pointwise_convs: Callable  # (xs, weights) -> bias-free 1x1 convolution of each x with its weight
    offset_grids: Callable  # x -> (even, odd) sampling grids of the factorized reduce


def get_backend(name: str) -> Backend:
    """Return the named backend; a fused backend that is not built is an error, never a silent fallback."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    ops = {}
    for field, (home, op) in HOMES.items():
        try:
            ops[field] = getattr(importlib.import_module(f"emodarts.ops.{home}"), f"{op}_{name}")
        except ImportError as exc:
            raise BackendError(
                f"the {name} backend is not built in this installation: its kernels are missing ({exc}). "
                "Run without --fused to use the reference backend.") from exc
    return Backend(name, **ops)


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
        from emodarts.ops import mixed_sum
        from emodarts.ops.compiled.cpp import load_extension

        if mixed_sum.default_impl(torch.device(torch.device(device).type)) == "cpp":
            load_extension()
        else:
            mixed_sum.kernels_module()
    return backend
