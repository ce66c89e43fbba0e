"""The mixed CNN cell grouped by source state (docs/grouped-cnn.md): every candidate of every edge leaving one
state is computed together, so what depends only on the state is computed once.

For a state h with E outgoing edges (all of one stride):
- the two pools (max and avg 3x3) in one call of the backend's `pool_pair`, once, and their affine-free batch
  norm once: during the search those candidates have no parameters, so every edge gets the same output
  (each edge's BatchNorm2d still keeps the running statistics the reference keeps);
- skip_connect at stride 1 is h itself, for every edge;
- ReLU(h) once, shared by every convolution candidate (sep_conv, dil_conv, the factorized reduce) of every
  edge (applied by `multi_depthwise` as it reads h, `relu=True`); the first depthwise convolutions of all
  sep_conv / dil_conv candidates of all edges in one `multi_depthwise` call, all their 1x1 convolutions (and
  the factorized reduces') in one `pointwise_convs` call, every batch norm ending a candidate or a separable
  convolution's first half in one `batch_norms` call, then the separable convolutions' second halves the same
  way (one call of each). Weights stay in the
  candidates' own modules, so checkpoints, genotypes, the derived network and `compare` are unchanged.
The per-candidate path (cells/cnn.py, _mixed_nodes) is the reference twin; the node sums take their inputs in
the same order (source state, then candidate).
"""
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emodarts.model.cells.schedule import Entry, nodes_by_source
from emodarts.model.cnn_ops import DilConv, FactorizedReduce, SepConv
from emodarts.model.partial_channels import (
    bypass,
    channel_shuffle,
    node_logits,
    split_channels,
)
from emodarts.model.space import edge_stride, node_edges

if TYPE_CHECKING:
    from emodarts.ops.backend import Backend

POOLS = {"max_pool_3x3": 0, "avg_pool_3x3": 1}  # name -> position in pool_pair's output

BatchNorms = Callable[[Sequence[Tensor], Sequence[Sequence[nn.Module]]], List[List[Tensor]]]


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


def factorized_reduces_pre_bn(ops: Sequence[FactorizedReduce], x_relu: Tensor, backend: "Backend") -> List[Tensor]:
    """FactorizedReduce ops that all read x, up to their batch norms: every 1x1 convolution in one call."""
    even, odd = backend.offset_grids(x_relu)
    ys = backend.pointwise_convs([even] * len(ops) + [odd] * len(ops),
                                 [op.conv1.weight for op in ops] + [op.conv2.weight for op in ops])
    return [torch.cat([a, b], dim=1) for a, b in zip(ys[: len(ops)], ys[len(ops):])]


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.bias is None


def _pre_bn(op: nn.Module, x: Tensor, backend: "Backend") -> Tensor:
    """A ReLUConvBN or FactorizedReduce up to its batch norm."""
    if isinstance(op, FactorizedReduce):
        return factorized_reduces_pre_bn([op], F.relu(x), backend)[0]
    conv = op[1]
    return backend.pointwise_convs([F.relu(x)], [conv.weight])[0] if _is_pointwise(conv) else conv(F.relu(x))


def preprocess(pre: nn.ModuleList, s0: Tensor, s1: Tensor, backend: "Backend") -> List[Tensor]:
    """A cell's two preprocessing ops (ReLUConvBN or FactorizedReduce), their batch norms in one batch_norms
    call."""
    zs = [_pre_bn(op, s, backend) for op, s in zip(pre, (s0, s1))]
    bns = [[op.bn if isinstance(op, FactorizedReduce) else op[2]] for op in pre]
    return [ys[0] for ys in backend.batch_norms(zs, bns)]


class _BatchNormCall:
    """Pre-batch-norm tensors gathered from a state's candidates, normalised in one batch_norms call; each
    entry says where its output goes."""

    def __init__(self):
        self.xs: List[Tensor] = []
        self.groups: List[List[nn.Module]] = []
        self.targets: List[list] = []

    def add(self, x: Tensor, bns: List[nn.Module], targets: list) -> None:
        self.xs.append(x)
        self.groups.append(bns)
        self.targets.append(targets)

    def run(self, batch_norms: BatchNorms) -> List[Tuple[list, Tensor]]:
        if not self.xs:
            return []
        return [(t, ys[0]) for t, ys in zip(self.targets, batch_norms(self.xs, self.groups))]


def state_outputs(h: Tensor, edge_ops: Sequence[nn.ModuleDict], active: Sequence[Tuple[int, str]], stride: int,
                  backend: "Backend") -> List[Dict[int, Tensor]]:
    """{candidate index: output} for each edge in `edge_ops`, all leaving state h with `stride`: the pools
    once, the first depthwise convolutions of every sep/dil candidate in one call, every batch norm that
    ends a candidate or the first half of a separable convolution in one batch_norms call, then the second
    halves (one depthwise call, one batch_norms call)."""
    out: List[Dict[int, Tensor]] = [{} for _ in edge_ops]
    first_bns = _BatchNormCall()
    pools = [(k, name) for k, name in active if name in POOLS]
    if pools:
        pooled = backend.pool_pair(h, stride)
        for k, name in pools:
            first_bns.add(pooled[POOLS[name]], [ops[name][1] for ops in edge_ops],
                          [(e, k) for e in range(len(edge_ops))])
    batched = []  # (edge, candidate, module) of the sep/dil convolutions computed together
    reduces = []  # (edge, candidate, module) of the factorized reduces
    for k, name in active:
        if name in POOLS:
            continue
        for e, ops in enumerate(edge_ops):
            op = ops[name]
            if _batchable(op):
                batched.append((e, k, op))
            elif isinstance(op, FactorizedReduce):
                reduces.append((e, k, op))
            else:
                out[e][k] = op(h)
    if reduces:
        zs = factorized_reduces_pre_bn([op for *_, op in reduces], F.relu(h), backend)
        for (e, k, op), z in zip(reduces, zs):
            first_bns.add(z, [op.bn], [(e, k)])
    if batched:
        heads = [op if type(op) is DilConv else op[0] for _, _, op in batched]
        for (e, k, op), head, z in zip(batched, heads, _pointwise_outputs([h], heads, stride, backend)):
            first_bns.add(z, [head[3]], [(e, k, op[1]) if type(op) is SepConv else (e, k)])
    second = []  # (edge, candidate, second half, its input) of the separable convolutions
    for targets, y in first_bns.run(backend.batch_norms):
        for t in targets:
            if len(t) == 3:
                second.append((*t, y))
            else:
                out[t[0]][t[1]] = y
    if second:
        zs = _pointwise_outputs([y for *_, y in second], [m for _, _, m, _ in second], 1, backend)
        second_bns = _BatchNormCall()
        for (e, k, m, _), z in zip(second, zs):
            second_bns.add(z, [m[3]], [(e, k)])
        for targets, y in second_bns.run(backend.batch_norms):
            for e, k in targets:
                out[e][k] = y
    return out


def _pointwise_outputs(xs: List[Tensor], halves: List[DilConv], stride: int, backend: "Backend") -> List[Tensor]:
    """ReLU, depthwise then pointwise convolution of each DilConv-shaped half (its batch norm not yet applied):
    every depthwise convolution in one multi_depthwise call, on one shared input or one input each, the ReLU
    applied as it reads them."""
    args = [_depthwise_args(m) for m in halves]
    assert all(s == stride for _, _, s in args), "a candidate's stride differs from its state's"
    dw = backend.multi_depthwise(xs, [w for w, _, _ in args], [d for _, d, _ in args], stride, relu=True)
    return backend.pointwise_convs(dw, [m[2].weight for m in halves])


def grouped_cnn_nodes(states: List[Tensor], edges: nn.ModuleList, active: Sequence[Tuple[int, str]],
                      alpha: Tensor, n_nodes: int, reduction: bool, backend: "Backend", partial_channels: int = 1,
                      beta: Optional[Tensor] = None) -> List[Tensor]:
    """The cell's n_nodes mixed nodes from its two input states, grouped by source state (module docstring;
    schedule.nodes_by_source). With PC-DARTS' K = partial_channels > 1 the candidates see a state's first C/K
    channels, and each node is one mixed sum of the candidates weighted by beta_j p_jk, one of the bypassed
    channels weighted by beta_j, and one shuffle (emodarts/model/partial_channels.py)."""
    bypassed: List[Tensor] = []  # state j -> its channels that skip the candidates (K > 1)

    def run_source(j: int, h: Tensor, nodes: range) -> Dict[int, List[Entry]]:
        stride = edge_stride(reduction, j)
        if partial_channels > 1:
            h, rest = split_channels(h, partial_channels)
            bypassed.append(bypass(rest, stride))
        outs = state_outputs(h, [edges[node_edges(i).start + j] for i in nodes], active, stride, backend)
        return {i: [(j, cand, ys[cand]) for cand, _ in active] for i, ys in zip(nodes, outs)}

    def make_node(i: int, entries: List[Entry]) -> Tensor:
        rows = node_edges(i)
        ys, index = [e[2] for e in entries], [(e[0], e[1]) for e in entries]
        if partial_channels == 1:
            return backend.mixed_sum(ys, alpha[rows], index)
        cand_logits, bypass_logits = node_logits(alpha[rows], beta[rows])
        part = backend.mixed_sum(ys, cand_logits, index)
        n_in = rows.stop - rows.start
        rest = backend.mixed_sum(bypassed[:n_in], bypass_logits, [(j, 0) for j in range(n_in)])
        return channel_shuffle(torch.cat([part, rest], dim=1), partial_channels)

    return nodes_by_source(states, n_nodes, run_source, make_node)
