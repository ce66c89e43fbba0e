"""The mixed CNN cell grouped by source state (docs/grouped-cnn.md): every candidate of every edge leaving one
state is computed together, so what depends only on the state is computed once.

For a state h with E outgoing edges (all of one stride):
- the two pools (max and avg 3x3) in one call of the backend's `pool_pair`, once, and their affine-free batch
  norm once: during the search those candidates have no parameters, so every edge gets the same output
  (each edge's BatchNorm2d still keeps the running statistics the reference keeps);
- skip_connect at stride 1 is h itself, for every edge;
- ReLU(h) once, shared by every convolution candidate (sep_conv, dil_conv, the factorized reduce) of every
  edge; the first depthwise convolutions of all sep_conv / dil_conv candidates of all edges in one
  `multi_depthwise` call, then each candidate's pointwise convolution and batch norm, then the separable
  convolutions' second depthwise convolutions in one more call. Weights stay in the candidates' own
  modules, so checkpoints, genotypes, the derived network and `compare` are unchanged.
The per-candidate path (supernet._mixed_nodes) is the reference twin; the node sums take their inputs in
the same order (source state, then candidate).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops.cnn import DilConv, SepConv
from .partial_channels import bypass, channel_shuffle, node_logits, split_channels
from .space import n_edges

POOLS = {"max_pool_3x3": 0, "avg_pool_3x3": 1}  # name -> position in pool_pair's output

PoolPair = Callable[[Tensor, int], Tuple[Tensor, Tensor]]
MultiDepthwise = Callable[[Sequence[Tensor], Sequence[Tensor], Sequence[int], int], List[Tensor]]


def _plain_training_bns(bns: Sequence[nn.Module]) -> bool:
    """Whether one batch-statistics pass stands for all of them: plain affine-free BatchNorm2d in training
    mode (the data-parallel GlobalBatchNorm2d and eval mode go module by module)."""
    return all(type(b) is nn.BatchNorm2d and b.training and not b.affine and b.track_running_stats
               and b.running_mean is not None for b in bns)


def shared_batch_norm(x: Tensor, bns: Sequence[nn.Module]) -> List[Tensor]:
    """Each module's output for the same input x: in training, one normalisation with the batch's statistics
    (the same for all of them) and each module's running statistics updated as its own forward would."""
    if not _plain_training_bns(bns):
        return [bn(x) for bn in bns]
    first = bns[0]
    # native_batch_norm hands back the batch mean and 1 / sqrt(biased var + eps) it normalised with: the
    # running statistics follow from them without a second pass over x
    y, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, first.eps)
    with torch.no_grad():
        n = x.numel() // x.shape[1]
        var = (invstd.double().pow(-2) - first.eps) * (n / max(n - 1, 1))
        for bn in bns:
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.to(bn.running_var.dtype), alpha=m)
    return [y] * len(bns)


def _depthwise_args(dil_conv: DilConv) -> Tuple[Tensor, int, int]:
    """(weight, dilation, stride) of a DilConv's depthwise convolution."""
    conv = dil_conv[1]
    return conv.weight, conv.dilation[0], conv.stride[0]


def _batchable(op: nn.Module) -> bool:
    """DilConv or SepConv whose depthwise convolutions have the padding multi_depthwise assumes."""
    halves = [op] if type(op) is DilConv else list(op) if type(op) is SepConv else []
    return bool(halves) and all(
        h[2].kernel_size == (1, 1) and h[2].bias is None and h[2].stride == (1, 1) and h[1].padding == (h[1].dilation[0] * (h[1].kernel_size[0] - 1) // 2,) * 2 and h[1].kernel_size[0] % 2 == 1
        for h in halves)


def pointwise(conv: nn.Conv2d, y: Tensor) -> Tensor:
    """A bias-free 1x1 convolution as one batched GEMM over (B, C, H*W) (on the CPU several times faster than
    the convolution kernel at these channel counts, forward and backward)."""
    b, c, h, w = y.shape
    return torch.einsum("oc,bcp->bop", conv.weight.view(conv.out_channels, c), y.reshape(b, c, h * w)).view(
        b, conv.out_channels, h, w)


def _conv_outputs(relu_h: Tensor, convs: List[nn.Module], stride: int,
                  multi_depthwise: MultiDepthwise) -> List[Tensor]:
    """The outputs of DilConv / SepConv candidates that all read state h: the first depthwise convolutions
    of all of them in one multi_depthwise call on the shared ReLU(h), their pointwise convolutions and batch
    norms per candidate, then the separable convolutions' second halves in one more call."""
    first = [op if type(op) is DilConv else op[0] for op in convs]
    args = [_depthwise_args(m) for m in first]
    assert all(s == stride for _, _, s in args), "a candidate's stride differs from its state's"
    dw = multi_depthwise([relu_h], [w for w, _, _ in args], [d for _, d, _ in args], stride)
    outs = [m[3](pointwise(m[2], y)) for m, y in zip(first, dw)]
    sep = [i for i, op in enumerate(convs) if type(op) is SepConv]
    if sep:
        second = [convs[i][1] for i in sep]
        args2 = [_depthwise_args(m) for m in second]
        dw2 = multi_depthwise([F.relu(outs[i]) for i in sep], [w for w, _, _ in args2], [d for _, d, _ in args2], 1)
        for i, m, y in zip(sep, second, dw2):
            outs[i] = m[3](pointwise(m[2], y))
    return outs


def state_outputs(h: Tensor, edge_ops: Sequence[nn.ModuleDict], active: Sequence[Tuple[int, str]], stride: int,
                  pool_pair: PoolPair, multi_depthwise: MultiDepthwise) -> List[Dict[int, Tensor]]:
    """{candidate index: output} for each edge in `edge_ops`, all leaving state h with `stride`."""
    out: List[Dict[int, Tensor]] = [{} for _ in edge_ops]
    names = [name for _, name in active]
    pools = [(k, name) for k, name in active if name in POOLS]
    if pools:
        pooled = pool_pair(h, stride)
        for k, name in pools:
            bns = [ops[name][1] for ops in edge_ops]
            for e, y in enumerate(shared_batch_norm(pooled[POOLS[name]], bns)):
                out[e][k] = y
    relu_h = F.relu(h) if any(hasattr(ops[n], "forward_from_relu") for ops in edge_ops for n in names) else None
    batched = []  # (edge, candidate, module) of the convolutions computed together
    for k, name in active:
        if name in POOLS:
            continue
        for e, ops in enumerate(edge_ops):
            op = ops[name]
            if _batchable(op):
                batched.append((e, k, op))
            else:
                out[e][k] = op.forward_from_relu(relu_h) if hasattr(op, "forward_from_relu") else op(h)
    if batched:
        ys = _conv_outputs(relu_h, [op for _, _, op in batched], stride, multi_depthwise)
        for (e, k, _), y in zip(batched, ys):
            out[e][k] = y
    return out


def grouped_cnn_nodes(states: List[Tensor], edges: nn.ModuleList, active: Sequence[Tuple[int, str]],
                      alpha: Tensor, n_nodes: int, reduction: bool, mixed_sum: Callable,
                      pool_pair: PoolPair, multi_depthwise: MultiDepthwise, k: int = 1,
                      beta: Optional[Tensor] = None) -> List[Tensor]:
    """The cell's n_nodes mixed nodes from its two input states, grouped by source state (module docstring);
    node i sums its inputs in the order of supernet._mixed_nodes. With PC-DARTS' K > 1 the candidates see
    a state's first C/K channels, and each node is one mixed sum of the candidates weighted by beta_j p_jk,
    one of the bypassed channels weighted by beta_j, and one shuffle (emodarts/partial_channels.py)."""
    first = [n_edges(i) for i in range(n_nodes)]  # index of node i's first incoming edge
    pending: List[list] = [[] for _ in range(n_nodes)]  # node i -> [(source j, candidate k, y)]
    bypassed: List[Tensor] = []  # state j -> its channels that skip the candidates (K > 1)

    def run_source(j: int, h: Tensor) -> None:
        targets = list(range(max(0, j - 1), n_nodes))  # node i reads states 0 .. i + 1
        stride = 2 if reduction and j < 2 else 1
        if k > 1:
            h, rest = split_channels(h, k)
            bypassed.append(bypass(rest, stride))
        outs = state_outputs(h, [edges[first[i] + j] for i in targets], active, stride, pool_pair, multi_depthwise)
        for i, ys in zip(targets, outs):
            pending[i].extend((j, k, ys[k]) for k, _ in active)

    states = list(states)
    run_source(0, states[0])
    run_source(1, states[1])
    for i in range(n_nodes):
        entries = sorted(pending[i], key=lambda e: (e[0], e[1]))
        rows = slice(first[i], first[i] + 2 + i)
        ys, index = [e[2] for e in entries], [(e[0], e[1]) for e in entries]
        if k == 1:
            node = mixed_sum(ys, alpha[rows], index)
        else:
            cand_logits, bypass_logits = node_logits(alpha[rows], beta[rows])
            part = mixed_sum(ys, cand_logits, index)
            rest = mixed_sum(bypassed[: 2 + i], bypass_logits, [(j, 0) for j in range(2 + i)])
            node = channel_shuffle(torch.cat([part, rest], dim=1), k)
        states.append(node)
        if i + 1 < n_nodes:
            run_source(2 + i, node)
    return states[2:]

