"""How the fused CPU CNN ops meet bf16 / fp16 autocast: they are on autocast's float32 list.

Their kernels (csrc/pointwise.cpp, multi_depthwise.cpp, multi_bn.cpp) are float32 / float64 kernels blocked
for the search's 4-64 channels, where a product has too few terms for bf16 units to pay (measured at the
paper preset, 2 threads, Xeon with AMX: the CNN part's forward+backward took 6.1 s with these ops falling back
to ATen's bf16 kernels and casts, 3.0 s in float32). So under CPU autocast they take any float input, compute
in float32 and hand back float32, as autocast itself does for the ops on its float32 list; the next fused op
then reads float32 without a cast. The heavy products of the search, the sequential cells' recurrent layer,
do run in bf16 (emodarts/ops/grouped_recurrent.py, csrc/grouped_rnn_bf16.h).
"""
from typing import Optional, Sequence

import torch
from torch import Tensor


def work_dtype(ts: Sequence[Tensor]) -> Optional[torch.dtype]:
    """The dtype a fused CPU kernel computes `ts` in: float64 when all are float64, float32 when none is
    (float32, bf16, fp16 inputs); None for a mix of float64 and others (the caller's fallback)."""
    n64 = sum(t.dtype == torch.float64 for t in ts)
    if n64 == len(ts):
        return torch.float64
    if n64 or not all(t.dtype in (torch.float32, torch.bfloat16, torch.float16) for t in ts):
        return None
    return torch.float32


def result_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """float32 under CPU autocast (the float32 list, module docstring), else the input's dtype; float64 stays
    float64, as autocast leaves it."""
    return torch.float32 if torch.is_autocast_enabled("cpu") and input_dtype != torch.float64 else input_dtype
