"""Plain-PyTorch twin of the grouped recurrent layer (emodarts/ops/grouped_recurrent.py): the oracle.

`grouped_recurrent(x, rnns)` calls each candidate module on the shared input, one at a time, exactly as the
reference supernet does: cuDNN on a GPU, PyTorch's CPU kernels (oneDNN for float32 LSTMs) on the CPU.
"""
from typing import List, Sequence

from torch import Tensor, nn


def grouped_recurrent(x: Tensor, rnns: Sequence[nn.Module]) -> List[Tensor]:
    """[rnn(x)[0] for rnn in rnns]: each candidate's output sequence ((B, T, D) when batch_first)."""
    return [rnn(x)[0] for rnn in rnns]


__all__ = ["grouped_recurrent"]
