"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalisation (`--partial-channels K`).

On every CNN edge only the first C/K channels of the source state go through the candidates; the other
channels bypass them (max-pooled 2x2 on a stride-2 edge, with ceil_mode so that odd sizes meet the
candidates' ceil(H/2)), the two parts are concatenated and shuffled in K channel groups. Each edge also gets
a weight beta_j, a softmax over the edges entering its node, that multiplies the edge's output (edge
normalisation) and the edge's strength when the genotype is derived. K = 1 is plain DARTS: no split, no
shuffle and no betas at all.

Because the split, the concatenation and the shuffle are the same linear map for every edge of a node,

    node = sum_j beta_j * shuffle(cat(sum_k p_jk op_k(x_j[:C/K]), bypass(x_j[C/K:])))
         = shuffle(cat(sum_j sum_k beta_j p_jk op_k(...), sum_j beta_j bypass(...)))

so the grouped engine keeps one mixed sum per node for the candidates and one for the bypasses: the weight
beta_j * p_jk is the softmax of one row of `node_logits` (the node's logits plus one column that
holds the mass 1 - beta_j, which no input reads), so the mixed-sum kernels run unchanged and autograd carries
the gradients to alpha and beta.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from emodarts.model.space import node_edges


def check_partial_channels(k: int, channels: int) -> None:
    """Refuse a K that is not a positive divisor of the CNN channel count (every cell's width is a
    multiple of it)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"--partial-channels is K >= 1 (1/K of the channels go through the candidates); got {k!r}")
    if channels % k:
        raise ValueError(f"--partial-channels {k} must divide the CNN channel count --channels {channels}")


def split_channels(h: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """(the first C/K channels, the rest): views of h, no copy."""
    c = h.shape[1] // k
    return h[:, :c], h[:, c:]


def bypass(rest: Tensor, stride: int) -> Tensor:
    """The channels that skip the candidates, brought to the edge's output size."""
    return rest if stride == 1 else F.max_pool2d(rest, 2, 2, ceil_mode=True)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle (as PC-DARTS): (B, g*c, H, W) -> channel i*g + j takes channel j*c + i."""
    b, ch, h, w = x.shape
    return x.view(b, groups, ch // groups, h, w).transpose(1, 2).reshape(b, ch, h, w)


def edge_weights(beta: Tensor, n_nodes: int, n_inputs: int = 2) -> Tensor:
    """softmax(beta) over the edges entering each node, laid out like beta (one entry per edge)."""
    return torch.cat([torch.softmax(_at_least_float32(beta[node_edges(i, n_inputs)]), dim=-1) for i in range(n_nodes)])


def _at_least_float32(t: Tensor) -> Tensor:
    """t in float32, or float64 when it is (the float64 oracle keeps its precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _log_weights(beta_rows: Tensor) -> Tuple[Tensor, Tensor]:
    """(log beta_j, log(1 - beta_j)) of one node's edges, both stable (the second as a log-sum-exp over the
    other edges, finite for two or more edges)."""
    b = _at_least_float32(beta_rows)
    lse = torch.logsumexp(b, dim=0)
    n = b.shape[0]
    others = b.expand(n, n).masked_fill(torch.eye(n, dtype=torch.bool, device=b.device), float("-inf"))
    return b - lse, torch.logsumexp(others, dim=1) - lse


def node_logits(alpha_rows: Tensor, beta_rows: Tensor) -> Tuple[Tensor, Tensor]:
    """The two logit tables of one node's mixed sums, from one pass over its betas:
    - candidates, (E, M + 1): row softmax [beta_j * softmax(alpha_j), 1 - beta_j] (the last column is read by
      no input), so the mixed sum weighs candidate k of edge j by beta_j p_jk;
    - bypasses, (E, 2): row softmax [beta_j, 1 - beta_j], read at column 0."""
    log_beta, log_rest = _log_weights(beta_rows)
    candidates = torch.cat([torch.log_softmax(_at_least_float32(alpha_rows), dim=-1) + log_beta[:, None],
                            log_rest[:, None]], dim=1)
    return candidates, torch.stack([log_beta, log_rest], dim=1)
