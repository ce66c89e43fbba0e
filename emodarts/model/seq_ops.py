"""Sequential candidates of emoDARTS, on sequences (B, T, H) -> (B, T, H).

Every candidate runs over time, per utterance (docs/pitfalls.md #1): an utterance's output never
depends on the other utterances of its batch.
"""
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_RECURRENT = re.compile(r"^(lstm|rnn)(_att)?_(\d)$")


class RecurrentOp(nn.Module):
    """A unidirectional n-layer LSTM or tanh-RNN, hidden size H."""

    def __init__(self, cell: str, hidden: int, layers: int):
        super().__init__()
        module = nn.LSTM if cell == "lstm" else nn.RNN
        self.cell = cell
        self.rnn = module(hidden, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]


class AttentiveRecurrentOp(nn.Module):
    """A bidirectional n-layer LSTM/RNN followed by additive attention over time steps.

    Every step's output joins its own bidirectional state with the attention context of the
    whole utterance: out_t = W [h_t ; sum_s a_s h_s], a = softmax_s(v . tanh(U h_s)).
    """

    def __init__(self, cell: str, hidden: int, layers: int):
        super().__init__()
        module = nn.LSTM if cell == "lstm" else nn.RNN
        self.cell = cell
        self.rnn = module(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.score_hidden = nn.Linear(2 * hidden, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)
        self.out = nn.Linear(4 * hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(self.rnn(x)[0])

    def attend(self, h: Tensor) -> Tensor:
        """The attention part, on the bidirectional states h (B, T, 2H) (lets a grouped call run self.rnn).

        W [h_t ; c] = W_h h_t + W_c c with W = [W_h | W_c]: the context c is the same at every step, so its
        product is taken once per utterance, and no (B, T, 4H) copy of [h ; c] is made."""
        weights = torch.softmax(self.score(torch.tanh(self.score_hidden(h))), dim=1)  # (B, T, 1)
        context = (weights * h).sum(dim=1, keepdim=True)  # (B, 1, 2H)
        width = h.shape[-1]
        w = self.out.weight
        return F.linear(h, w[:, :width], self.out.bias) + F.linear(context, w[:, width:])


class SeqIdentity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def make_seq_op(name: str, hidden: int) -> nn.Module:
    """Build one sequential candidate by name (`skip_connect`, `lstm_2`, `rnn_att_1`, ...)."""
    if name == "skip_connect":
        return SeqIdentity()
    match = _RECURRENT.match(name)
    if not match:
        raise ValueError(f"unknown sequential operation {name!r}")
    cell, att, layers = match.group(1), match.group(2), int(match.group(3))
    return (AttentiveRecurrentOp if att else RecurrentOp)(cell, hidden, layers)


