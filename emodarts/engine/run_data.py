"""The tensors one run searches, trains and evaluates on, built from a corpus's cached features.

`pipeline.prepare_data` (one split of a corpus) and `cv.prepare_fold_data` (one fold of a protocol) both
end here, so that a run folder's data is cut the same way whichever command made it; search and training only
read it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from emodarts.data import Utterance
from emodarts.data.splits import Split, search_halves
from emodarts.runtime.errors import DataError

if TYPE_CHECKING:  # features.py is heavy (audio, MFCC backends); only its type is needed here
    from emodarts.features import FeatureSet

PARTS = ("search_w", "search_a", "train", "dev", "test")


@dataclass
class TensorSplit:
    """Features (N, 1, F, T) float32 and labels (N,) int64 of one split."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class RunData:
    """The five parts of a run's data, over one list of classes (label i is classes[i])."""

    classes: List[str]
    search_w: TensorSplit  # trains the weights during the search
    search_a: TensorSplit  # trains the alphas during the search
    train: TensorSplit  # final training (training speakers minus dev speakers)
    dev: TensorSplit  # model selection (held-out training speakers)
    test: TensorSplit  # evaluated once

    @property
    def n_features(self) -> int:
        return int(self.train.x.shape[2])


def tensor_split(features: "FeatureSet", utts: Sequence[Utterance], classes: Sequence[str]) -> TensorSplit:
    """The cached features of `utts` with a channel axis, and their labels as indices into `classes`
    (every label must be one of them)."""
    index = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(features.take(utts)).unsqueeze(1)
    y = torch.tensor([index[u.label] for u in utts], dtype=torch.int64)
    return TensorSplit(x, y)


def empty_split(features: "FeatureSet") -> TensorSplit:
    """A split of no utterances with the features' shape, for the search parts of a run that searches
    nothing (training a given genotype)."""
    shape = (0, 1) + tuple(features.shape[1:])
    return TensorSplit(torch.zeros(shape), torch.zeros(0, dtype=torch.int64))


def check_parts(split: Split, classes: Sequence[str], where: str = "") -> None:
    """DataError naming the class and the part when a class has no utterance in train, dev or test: its
    recall could not be measured, or it could not be learnt."""
    for name in ("train", "dev", "test"):
        present = {u.label for u in getattr(split, name)}
        missing = [c for c in classes if c not in present]
        if missing:
            raise DataError(f"class {missing[0]!r} has no utterance in the {name} part{where} "
                            f"({len(getattr(split, name))} utterances, classes {', '.join(sorted(present))}): "
                            f"leave it out or merge it into another class with --labels, or choose another "
                            f"--protocol or --seed")


def build_run_data(features: "FeatureSet", split: Split, classes: Sequence[str], seed: int, alpha_split: float,
                   with_search: bool = True, where: str = "") -> RunData:
    """Tensors of a speaker-independent split: its training speakers' utterances cut into the weight and
    alpha parts of the search by `alpha_split` (data/splits.py: search_halves, seeded by `seed`), then
    train, dev and test. With with_search=False the search parts are left empty (and `alpha_split` is not
    looked at), which saves the memory of a copy of the training set. Every class must be in train, dev and
    test (check_parts; `where` names the fold in the message)."""
    classes = list(classes)
    check_parts(split, classes, where)
    if with_search:
        w_part, a_part = search_halves(split.train, seed, alpha_split=alpha_split)
        search_w, search_a = tensor_split(features, w_part, classes), tensor_split(features, a_part, classes)
    else:
        search_w = search_a = empty_split(features)
    return RunData(classes=classes, search_w=search_w, search_a=search_a,
                   train=tensor_split(features, split.train, classes), dev=tensor_split(features, split.dev, classes),
                   test=tensor_split(features, split.test, classes))


def split_summary(data: RunData) -> Dict[str, List[int]]:
    """Utterances per class in each part, to check a split's balance at a glance."""
    return {name: np.bincount(getattr(data, name).y.numpy(), minlength=len(data.classes)).tolist()
            for name in PARTS}


def feature_stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-feature-row mean and std over utterances and time: (F,), (F,)."""
    return x.mean(dim=(0, 1, 3)), x.std(dim=(0, 1, 3))


def batches(split: TensorSplit, batch_size: int, generator: Optional[torch.Generator]) -> Iterator[Tuple[Tensor, Tensor]]:
    """Shuffled (when a generator is given) batches; the last short batch is kept."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]


def epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)
