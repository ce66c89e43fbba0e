"""Plain-PyTorch twins of every fused kernel: the oracle for all kernel tests."""
from typing import Sequence, Tuple

import torch
from torch import Tensor


def mixed_sum(ys: Sequence[Tensor], alpha: Tensor, index: Sequence[Tuple[int, int]]) -> Tensor:
    """Weighted sum of one node's candidate outputs.

    out = sum_i softmax(alpha, -1)[e_i, m_i] * ys[i]

    alpha: (E, M) logits of the node's E incoming edges over all M candidates, `none` included
    (a `none` candidate has no entry in `ys`: it costs nothing but its softmax mass).
    ys: tensors of one shape and dtype; index[i] = (edge, candidate) of ys[i].
    """
    if len(ys) != len(index):
        raise ValueError(f"mixed_sum: {len(ys)} inputs but {len(index)} index entries")
    p = torch.softmax(alpha.to(torch.promote_types(alpha.dtype, torch.float32)), dim=-1)  # float64 stays
    out = None
    for y, (e, m) in zip(ys, index):
        term = p[e, m].to(y.dtype) * y
        out = term if out is None else out + term
    if out is None:
        raise ValueError("mixed_sum needs at least one input")
    return out
