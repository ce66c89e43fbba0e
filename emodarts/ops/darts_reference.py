"""The DARTS recurrent cell (method.md, last section) over a whole sequence, in plain PyTorch: the oracle
of the fused epilogue in the extension.

Per time step t, with h the previous output (h0 before the first step):
    [c0 | z0] = x_proj[t] + h W0h                      x_proj = x W0x is computed by the caller
    s0 = h + sigmoid(c0) * (tanh(z0) - h)
    node i = 0 .. S-1 reads every earlier state s_j (j = 0 .. i) through one shared matrix W_i:
    [C_j | Z_j] = s_j W_i,  c_j = sigmoid(C_j)
    s_{i+1} = sum_j sum_f p[e, f] * (s_j + c_j * (f(Z_j) - s_j)),   e = i (i + 1) / 2 + j
    h_t = mean(s_1 .. s_S)
f runs over DARTS_ACTIVATIONS; `none` is never computed (its softmax mass only shrinks the other p).
"""
import torch
from torch import Tensor

DARTS_ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")


def n_darts_edges(steps: int) -> int:
    """Edges of a DARTS recurrent cell with `steps` nodes: node i reads states 0 .. i."""
    return steps * (steps + 1) // 2


def edge_index(node: int, source: int) -> int:
    """Row of the alpha / probs matrix for node `node` reading state `source`."""
    return node * (node + 1) // 2 + source


def activations(z: Tensor) -> Tensor:
    """(F, *z.shape): every candidate activation of z, in DARTS_ACTIVATIONS order."""
    return torch.stack([torch.tanh(z), torch.relu(z), torch.sigmoid(z), z])


def darts_rnn_reference(x_proj: Tensor, h0: Tensor, w0h: Tensor, ws: Tensor, probs: Tensor) -> Tensor:
    """Run the mixed DARTS cell over time.

    x_proj (T, B, 2H), h0 (B, H), w0h (H, 2H), ws (S, H, 2H), probs (S (S + 1) / 2, 4): the mixing weight of
    tanh, relu, sigmoid, identity on every edge. Returns every h_t, (T, B, H).
    """
    steps, hidden = ws.shape[0], h0.shape[-1]
    h, outputs = h0, []
    for t in range(x_proj.shape[0]):
        c0, z0 = (x_proj[t] + h @ w0h).split(hidden, dim=-1)
        states = [h + torch.sigmoid(c0) * (torch.tanh(z0) - h)]
        for i in range(steps):
            prev = torch.stack(states)  # (i + 1, B, H)
            c, z = (prev @ ws[i]).split(hidden, dim=-1)
            c = torch.sigmoid(c)
            blended = prev + c * (activations(z) - prev)  # (F, i + 1, B, H)
            p = probs[edge_index(i, 0) : edge_index(i, 0) + i + 1].t()  # (F, i + 1)
            states.append((p[:, :, None, None] * blended).sum(dim=(0, 1)))
        h = torch.stack(states[1:]).mean(dim=0)
        outputs.append(h)
    return torch.stack(outputs)


__all__ = ["DARTS_ACTIVATIONS", "n_darts_edges", "edge_index", "activations", "darts_rnn_reference"]
