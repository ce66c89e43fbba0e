"""Mixed precision and memory layout of a run: bf16 autocast (alphas and optimiser state stay fp32)
and channels_last for the CNN part on CUDA."""
import contextlib

import torch
from torch import Tensor, nn

AMP_MODES = ("none", "bf16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX tiles); without them every bf16 product
    is emulated in float32 plus conversions, slower than float32 itself."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


_told_no_bf16 = False


def autocast(device: str, amp: str):
    """bf16 autocast on `device` when amp == 'bf16', else a no-op context. On a CPU without bf16 units,
    bf16 only adds conversions: the run says so once and computes in float32 (no casts, no copies)."""
    global _told_no_bf16
    if amp not in AMP_MODES:
        raise ValueError(f"unknown --amp {amp!r}; choose one of {', '.join(AMP_MODES)}")
    if amp == "none":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if kind == "cpu" and not cpu_has_bf16_units():
        if not _told_no_bf16:
            _told_no_bf16 = True
            from emodarts.runtime.progress import warn

            warn("--amp bf16: this CPU has no bf16 units (neither AVX512-BF16 nor AMX), where bf16 is slower than "
                 "float32; computing in float32")
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16)


def use_channels_last(device: str, requested: bool) -> bool:
    return requested and torch.device(device).type == "cuda"


def prepare_model(model: nn.Module, device: str, channels_last: bool) -> nn.Module:
    model.to(device)
    if use_channels_last(device, channels_last):
        model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: Tensor, device: str, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True)
    if use_channels_last(device, channels_last) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
