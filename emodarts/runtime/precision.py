"""Mixed precision and memory layout of a run: bf16 autocast (alphas and optimiser state stay fp32)
and channels_last for the CNN part on CUDA."""
import contextlib

import torch
from torch import Tensor, nn

AMP_MODES = ("none", "bf16")


def autocast(device: str, amp: str):
    """bf16 autocast on `device` when amp == 'bf16', else a no-op context."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown --amp {amp!r}; choose one of {', '.join(AMP_MODES)}")
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


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
