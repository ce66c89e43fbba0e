"""The one backend switch: the model asks its backend for `mixed_sum`, never a kernel module.

reference: plain PyTorch (the oracle). fused: Triton on CUDA, the C++ extension on CPU.
"""
from dataclasses import dataclass
from typing import Callable

from ..errors import BackendError
from . import reference

BACKENDS = ("reference", "fused")


@dataclass(frozen=True)
class Backend:
    name: str
    mixed_sum: Callable


def get_backend(name: str) -> Backend:
    """Return the named backend; a fused backend that is not built is an error, never a silent fallback."""
    if name == "reference":
        return Backend("reference", reference.mixed_sum)
    if name == "fused":
        try:
            from . import fused  # noqa: F401
        except ImportError as exc:
            raise BackendError(
                "the fused backend is not built in this installation: its kernels are missing "
                f"({exc}). Run without --fused to use the reference backend."
            ) from exc
        return Backend("fused", fused.mixed_sum)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def check_backend(name: str, device: str) -> Backend:
    """Fail early, with a clear message, when `name` cannot run on `device` (e.g. --fused without its
    compiled extension or without Triton)."""
    backend = get_backend(name)
    if name == "fused":
        import torch

        from . import fused

        kind = torch.device(device).type
        if fused.default_impl(torch.device(kind)) == "cpp":
            from .extension import load_extension

            load_extension()
        else:
            fused.kernels_module()
    return backend
