"""Speaker-independent splits and the two halves of the bilevel search data."""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from emodarts.data import Utterance
from emodarts.runtime.errors import DataError


@dataclass
class Split:
    """train: fits the weights; dev: speakers held out of training for model selection; test: held-out
    speakers reported once. No speaker appears in two parts."""

    train: List[Utterance]
    dev: List[Utterance]
    test: List[Utterance]

    def speakers(self) -> Dict[str, List[str]]:
        return {name: sorted({u.speaker for u in part})
                for name, part in (("train", self.train), ("dev", self.dev), ("test", self.test))}


def speaker_gender(speaker: str) -> Optional[str]:
    """'F' or 'M' when the speaker id carries a one-letter gender token (F01, M03, Ses01F, spk_M_2),
    else None."""
    tokens = re.findall(r"[A-Za-z]+", speaker)
    for tok in (tokens[-1:] + tokens[:1]) if tokens else []:
        if tok.upper() in ("F", "M"):
            return tok.upper()
    return None


def _speaker_order(speakers: Sequence[str], rng: np.random.Generator) -> List[str]:
    """A seeded speaker order; when every speaker has a gender, genders alternate (so any prefix is
    as gender-balanced as it can be)."""
    speakers = sorted(speakers)
    genders = {s: speaker_gender(s) for s in speakers}
    if any(g is None for g in genders.values()):
        return [speakers[i] for i in rng.permutation(len(speakers))]
    groups = {g: [s for s in speakers if genders[s] == g] for g in ("F", "M")}
    for g in groups:
        groups[g] = [groups[g][i] for i in rng.permutation(len(groups[g]))]
    first = "F" if rng.random() < 0.5 else "M"
    order_g = [first, "M" if first == "F" else "F"]
    out = []
    while groups["F"] or groups["M"]:
        for g in order_g:
            if groups[g]:
                out.append(groups[g].pop(0))
    return out


def speaker_split(utts: Sequence[Utterance], seed: int, n_test_speakers: int = 3,
                  n_dev_speakers: int = 2) -> Split:
    """Split by speaker: `n_test_speakers` speakers for test, `n_dev_speakers` others for dev, the rest
    for training. Deterministic from `seed` (and independent of the order of `utts`); gender-balanced
    when speaker ids carry F/M. Each part keeps the input order of its utterances."""
    speakers = sorted({u.speaker for u in utts})
    if n_test_speakers < 1 or n_dev_speakers < 0:
        raise DataError(f"need n_test_speakers >= 1 and n_dev_speakers >= 0 "
                        f"(got {n_test_speakers}, {n_dev_speakers})")
    if len(speakers) < n_test_speakers + n_dev_speakers + 1:
        raise DataError(
            f"{len(speakers)} speakers cannot give {n_test_speakers} test + {n_dev_speakers} dev "
            f"speakers and at least one training speaker"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B11]))
    order = _speaker_order(speakers, rng)
    test = set(order[:n_test_speakers])
    dev = set(order[n_test_speakers:n_test_speakers + n_dev_speakers])
    return Split(
        train=[u for u in utts if u.speaker not in test and u.speaker not in dev],
        dev=[u for u in utts if u.speaker in dev],
        test=[u for u in utts if u.speaker in test],
    )


def search_halves(train: Sequence[Utterance], seed: int, weight_fraction: float = 0.5, *,
                  alpha_split: Optional[float] = None) -> Tuple[List[Utterance], List[Utterance]]:
    """Split the search data into (w_part, alpha_part): `weight_fraction` of each label's utterances
    train the weights, the rest the architecture parameters; or, given `alpha_split` (the --alpha-split
    of a run), 1 - alpha_split of them train the weights (with the same rounding: alpha_split 0.5 gives the
    split weight_fraction 0.5 gives). Each label with 2 or more utterances has at least one in each part.
    Stratified by label, deterministic from `seed` (independent of input order); each part keeps the
    input order."""
    if alpha_split is not None:
        if not 0.0 < alpha_split < 1.0:
            raise DataError(f"--alpha-split must be strictly between 0 and 1, got {alpha_split}")
        weight_fraction = 1.0 - alpha_split
    if not 0.0 < weight_fraction < 1.0:
        raise DataError(f"weight_fraction must be in (0, 1), got {weight_fraction}")
    by_label: Dict[str, List[Utterance]] = defaultdict(list)
    for u in train:
        by_label[u.label].append(u)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA1FA]))
    w_ids = set()
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda u: u.utt_id)
        perm = rng.permutation(len(group))
        n_w = int(round(weight_fraction * len(group)))
        if len(group) >= 2:
            n_w = min(max(n_w, 1), len(group) - 1)  # both halves see every label that has 2+ examples
        w_ids.update(group[i].utt_id for i in perm[:n_w])
    w_part = [u for u in train if u.utt_id in w_ids]
    a_part = [u for u in train if u.utt_id not in w_ids]
    if not w_part or not a_part:
        which = "weight" if not w_part else "alpha"
        how = (f"--alpha-split {alpha_split} leaves the {which} part empty" if alpha_split is not None
               else f"weight_fraction {weight_fraction} leaves the {which} part empty")
        raise DataError(f"cannot split the {len(train)} search utterances of the training speakers in two: {how} "
                        f"(each label has one utterance; give more data or another --alpha-split)"
                        if len(train) else "no search utterances: the training speakers have none")
    return w_part, a_part
