"""The DARTS recurrent cell as a sequential cell (`--seq-space darts`): the mixed cell of the search and
the fixed cell a genotype derives.

Like an emoDARTS sequential cell it reads the two previous sequences (B, T, H) and returns one; here they
are concatenated per time step into x_t, and the cell runs over time (docs/method.md, last section): an initial
state s0 from x_t and h_{t-1}, then `seq_nodes` nodes, each averaging over its predecessors the mixed
activations of one shared GEMM (search; see `MixedDartsCell.mixing_weights`) or applying one activation to
one predecessor (derived). h_t is the mean of the nodes. The time loop of the
mixed cell is the backend's `darts_rnn` (plain PyTorch, or the extension's fused epilogue).
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emodarts.model.config import ModelConfig
from emodarts.model.dropout import BatchDropout
from emodarts.model.space import CellGenotype
from emodarts.ops.backend import Backend
from emodarts.ops.darts_rnn import DARTS_ACTIVATIONS

INIT_RANGE = 0.04  # uniform initialisation of the recurrent matrices, as the DARTS code does


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-INIT_RANGE, INIT_RANGE))


def activation_columns(primitives: Sequence[str]) -> List[int]:
    """For each of DARTS_ACTIVATIONS, its column in the alpha matrix, or -1 when it is not a candidate."""
    return [list(primitives).index(a) if a in primitives else -1 for a in DARTS_ACTIVATIONS]


class _DartsInput(nn.Module):
    """x_t = [q0_t, q1_t] projected to [c0 | z0] for every step at once (the x half of W0)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.w0x = nn.Linear(2 * hidden, 2 * hidden, bias=False)
        nn.init.uniform_(self.w0x.weight, -INIT_RANGE, INIT_RANGE)
        self.w0h = _uniform(hidden, 2 * hidden)

    def project(self, q0: Tensor, q1: Tensor) -> Tuple[Tensor, Tensor]:
        """(x_proj (T, B, 2H), h0 (B, H) = 0)."""
        x_proj = self.w0x(torch.cat([q0, q1], dim=-1)).transpose(0, 1)
        return x_proj, x_proj.new_zeros(x_proj.shape[1], self.hidden)


class MixedDartsCell(nn.Module):
    """Every node reads every earlier state through its own shared matrix and mixes the activations."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input = _DartsInput(cfg.hidden)
        self.ws = _uniform(cfg.seq_nodes, cfg.hidden, 2 * cfg.hidden)
        self.columns = activation_columns(cfg.seq_primitives)
        fan_in = [i + 1 for i in range(cfg.seq_nodes) for _ in range(i + 1)]  # predecessors of each edge's node
        self.register_buffer("fan_in", torch.tensor(fan_in, dtype=torch.float32)[:, None], persistent=False)
        self.dropout = BatchDropout(cfg.dropout)

    def mixing_weights(self, alpha: Tensor) -> Tensor:
        """softmax over every candidate (so `none` keeps its mass), then the columns of the activations in
        DARTS_ACTIVATIONS order (zero for an activation that is not a candidate), each node's rows divided by
        its number of predecessors.

        That division makes a node the mean, not the sum, over its predecessors. Summed, node i weighs its
        inputs by about i + 1, so the 8-node cell's states grow geometrically over nodes and time steps
        (|h| ~ 1e21 after 32 steps at H = 128 from the initial alphas); the DARTS code hides this with a batch
        norm of every state, which would put batch statistics inside the recurrence. Averaged, the states stay
        O(1), and a derived node (one predecessor) is exactly the mixed node at one-hot weights."""
        probs = torch.softmax(alpha.float(), dim=-1)
        cols = [probs[:, k] if k >= 0 else probs.new_zeros(probs.shape[0]) for k in self.columns]
        return torch.stack(cols, dim=-1) / self.fan_in

    def forward(self, q0: Tensor, q1: Tensor, alpha: Tensor, backend: Backend) -> Tensor:
        x_proj, h0 = self.input.project(q0, q1)
        hs = backend.darts_rnn(x_proj, h0, self.input.w0h, self.ws, self.mixing_weights(alpha))
        return self.dropout(hs.transpose(0, 1))


_ACT = {"tanh": torch.tanh, "relu": F.relu, "sigmoid": torch.sigmoid, "identity": lambda z: z}


class FixedDartsCell(nn.Module):
    """The derived cell: node i applies its one activation to its one predecessor through its matrix."""

    def __init__(self, cell: CellGenotype, hidden: int, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.input = _DartsInput(hidden)
        self.nodes = [node[0] for node in cell.nodes]  # (activation, predecessor state)
        self.ws = _uniform(len(self.nodes), hidden, 2 * hidden)
        self.dropout = BatchDropout(dropout)

    def step(self, x_proj_t: Tensor, h: Tensor) -> Tensor:
        c0, z0 = (x_proj_t + h @ self.input.w0h).split(self.hidden, dim=-1)
        states = [h + torch.sigmoid(c0) * (torch.tanh(z0) - h)]
        for i, (act, src) in enumerate(self.nodes):
            prev = states[src]
            c, z = (prev @ self.ws[i]).split(self.hidden, dim=-1)
            states.append(prev + torch.sigmoid(c) * (_ACT[act](z) - prev))
        return torch.stack(states[1:]).mean(dim=0)

    def forward(self, q0: Tensor, q1: Tensor) -> Tensor:
        x_proj, h = self.input.project(q0, q1)
        outputs = []
        for t in range(x_proj.shape[0]):
            h = self.step(x_proj[t], h)
            outputs.append(h)
        return self.dropout(torch.stack(outputs, dim=1))
