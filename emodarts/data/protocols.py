"""Named evaluation protocols (`--protocol`): which utterances and labels a corpus contributes, and its folds.

A protocol maps the corpus's own label codes to classes (dropping the rest), may keep only some utterances
(IEMOCAP paper-code: improvised only), and yields folds. Each fold is a Split(train, dev, test): test holds
the fold's held-out speakers; dev is carved from the training speakers (never from the test speakers) for
model selection, unless the corpus has an official development set (MSP-Podcast official). No speaker is
in two parts of a fold, except MSP-Podcast's official split, which is taken as published.

| corpus      | protocol        | folds                                                                   |
| ----------- | --------------- | ----------------------------------------------------------------------- |
| iemocap     | standard        | leave one session out (5); improvised + scripted; exc merged into happy |
| iemocap     | paper-code      | the published code: improvised only, no exc merge, 5 folds of 2        |
|             |                 | speakers (Ses01M+Ses02F, Ses02M+Ses03F, ..., Ses05M+Ses01F)             |
| msp-improv  | sessions        | leave one session out (6); consensus labels when the file is there      |
| msp-improv  | paper-code      | the published code: read (R) clips, file-name letters, test sessions    |
|             |                 | 1, 2, 3 and 5 (4 folds)                                                 |
| msp-podcast | official        | Train / Development / Test1 (1 fold); Test2/Test3 left out              |
| msp-podcast | speakers        | 5 speaker folds over identified speakers (every split set)              |
| msp-podcast | official-8class | the same with all 8 emotion classes (A C D F H N S U)                   |
| msp-podcast | speakers-8class | the same with all 8 emotion classes                                     |
| synthetic   | speakers        | 5 speaker folds (fewer when there are fewer speakers); also sessions    |
| csv         | speakers        | as synthetic; sessions (session column); split (split column)           |

The classes are the protocol's (a csv manifest's: every label in it), sorted; `--labels` (data/labels.py)
chooses, orders and merges them instead.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from emodarts.data import Utterance
from emodarts.data.labels import LabelSpec
from emodarts.data.splits import Split, _speaker_order
from emodarts.runtime.errors import DataError

Folds = Callable[[List[Utterance], int], List["Fold"]]


@dataclass
class Fold:
    index: int
    name: str
    split: Split

    def speakers(self) -> Dict[str, List[str]]:
        return self.split.speakers()

    @property
    def test_speakers(self) -> List[str]:
        return sorted({u.speaker for u in self.split.test})


@dataclass(frozen=True)
class Protocol:
    corpus: str
    name: str
    description: str
    folds_fn: Folds
    label_map: Optional[Dict[str, str]] = None  # corpus label -> class; None keeps every label
    label_names: Dict[str, str] = field(default_factory=dict)  # corpus label code -> its name (for --labels)
    keep: Optional[Callable[[Utterance], bool]] = None  # utterance filter
    keep_note: str = ""  # why `keep` leaves an utterance out (for the counts)
    loader_options: Dict[str, object] = field(default_factory=dict)
    disjoint: bool = True  # folds must be speaker independent (checked)

    def select(self, utts: Sequence[Utterance], spec: Optional[LabelSpec] = None,
               report=None) -> Tuple[List[Utterance], Dict[str, int]]:
        """(utterances relabelled to the protocol's classes, counts of what was left out and why). With
        `spec` (--labels, data/labels.py) its classes replace the protocol's mapping: an item whose label
        no class takes goes to `report` as label-not-selected; a label of `spec` that no item has is a
        DataError (a typo, most likely)."""
        kept, excluded, seen = [], Counter(), set()
        for u in utts:
            if self.keep is not None and not self.keep(u):
                excluded[self.keep_note or "filtered"] += 1
                continue
            seen.add(u.label)
            if spec is not None:
                cls = spec.class_of(u.label, self.label_names)
                if cls is None:
                    if report is not None:
                        report.skip(u.path, "label-not-selected", f"{u.path}: label {u.label!r} is in no class "
                                    f"of --labels {spec.text}", u.utt_id)
                    continue
            else:
                cls = u.label if self.label_map is None else self.label_map.get(u.label)
                if cls is None:
                    excluded[f"label {u.label}"] += 1
                    continue
            if cls != u.label:
                u = replace(u, label=cls)  # every other field (the npy features file too) kept
            kept.append(u)
        if spec is not None:
            unmatched = spec.unmatched(sorted(seen), self.label_names)
            if unmatched:
                shown = ", ".join(sorted({self.label_names.get(x, x) for x in seen}))
                raise DataError(f"--labels {spec.text}: no utterance of corpus {self.corpus} ({self.name}) has "
                                f"the label {unmatched[0]!r} (its labels: {shown})")
        return kept, dict(sorted(excluded.items()))

    def make_folds(self, utts: Sequence[Utterance], seed: int) -> List[Fold]:
        """The folds over `utts` (already selected); checked for empty parts and speaker overlap."""
        folds = self.folds_fn(list(utts), seed)
        if not folds:
            raise DataError(f"protocol {self.corpus}/{self.name}: no fold has test utterances")
        for f in folds:
            check_fold(f, f"protocol {self.corpus}/{self.name}", self.disjoint)
        return folds


def check_fold(fold: Fold, where: str, disjoint: bool = True) -> None:
    empty = [name for name in ("train", "dev", "test") if not getattr(fold.split, name)]
    if empty:
        raise DataError(f"{where}, fold {fold.index} ({fold.name}): no utterances in {', '.join(empty)}")
    if disjoint:
        sp = fold.speakers()
        for a, b in (("test", "train"), ("test", "dev"), ("dev", "train")):
            both = set(sp[a]) & set(sp[b])
            if both:
                raise DataError(f"{where}, fold {fold.index}: speaker(s) {', '.join(sorted(both))} in {a} and {b}")


# ------------------------------------------------------------------------------------ fold builders
def n_dev_speakers(n_train_speakers: int) -> int:
    """Dev speakers carved from a fold's training speakers: 1 of up to 3, 2 of up to 20, else 10 %."""
    if n_train_speakers <= 3:
        return 1
    if n_train_speakers <= 20:
        return 2
    return max(2, int(round(0.1 * n_train_speakers)))


def carve_dev(pool: Sequence[Utterance], seed: int, salt: int) -> Tuple[List[Utterance], List[Utterance]]:
    """(train, dev): dev = n_dev_speakers() of the pool's speakers, seeded, gender-alternating when the
    speaker ids carry F/M."""
    speakers = sorted({u.speaker for u in pool})
    if len(speakers) < 2:
        raise DataError(f"{len(speakers)} training speaker(s) cannot be split into train and dev speakers")
    n_dev = n_dev_speakers(len(speakers))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE5, int(salt)]))
    dev = set(_speaker_order(speakers, rng)[:n_dev])
    return [u for u in pool if u.speaker not in dev], [u for u in pool if u.speaker in dev]


def _fold(index: int, name: str, utts: Sequence[Utterance], test_speakers, seed: int) -> Fold:
    test_speakers = set(test_speakers)
    test = [u for u in utts if u.speaker in test_speakers]
    pool = [u for u in utts if u.speaker not in test_speakers]
    train, dev = carve_dev(pool, seed, index)
    return Fold(index, name, Split(train, dev, test))


def session_folds(utts: List[Utterance], seed: int) -> List[Fold]:
    """Leave one session out: one fold per session (sorted), the session's speakers for test."""
    missing = [u for u in utts if not u.session]
    if missing:
        raise DataError(f"{len(missing)} utterance(s) have no session (e.g. {missing[0].path}): session folds "
                        f"need one for every utterance")
    sessions = sorted({u.session for u in utts}, key=_natural)
    if len(sessions) < 2:
        raise DataError(f"session folds need at least 2 sessions (found {', '.join(sessions) or 'none'})")
    folds = []
    for i, s in enumerate(sessions):
        spk = {u.speaker for u in utts if u.session == s}
        clash = {u.session for u in utts if u.speaker in spk and u.session != s}
        if clash:
            raise DataError(f"speaker(s) of session {s} also appear in session(s) {', '.join(sorted(clash))}: "
                            f"session folds would not be speaker independent")
        folds.append(_fold(i, f"test {s}", utts, spk, seed))
    return folds


def fixed_speaker_folds(groups: Sequence[Sequence[str]]) -> Folds:
    """One fold per group of test speakers; groups whose speakers are all absent are dropped."""
    def build(utts: List[Utterance], seed: int) -> List[Fold]:
        present = {u.speaker for u in utts}
        folds = []
        for group in groups:
            if not present & set(group):
                continue
            folds.append(_fold(len(folds), "test " + "+".join(group), utts, group, seed))
        return folds
    return build


def fixed_session_folds(sessions: Sequence[str]) -> Folds:
    def build(utts: List[Utterance], seed: int) -> List[Fold]:
        folds = []
        for s in sessions:
            spk = {u.speaker for u in utts if u.session == s}
            if spk:
                folds.append(_fold(len(folds), f"test {s}", utts, spk, seed))
        return folds
    return build


def balanced_speaker_groups(utts: Sequence[Utterance], k: int, seed: int) -> List[List[str]]:
    """k groups of speakers with about equal utterance counts: speakers (F first, then M, then others),
    largest first, each to the group with the fewest utterances so far; ties broken by a seeded order."""
    counts = Counter(u.speaker for u in utts)
    speakers = sorted(counts)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF01D]))
    rank = {s: int(r) for s, r in zip(speakers, rng.permutation(len(speakers)))}
    from emodarts.data.splits import speaker_gender

    groups: List[List[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    for g in ("F", "M", None):
        block = [s for s in speakers if speaker_gender(s) == g]
        for s in sorted(block, key=lambda s: (-counts[s], rank[s])):
            j = min(range(k), key=lambda j: (sizes[j], len(groups[j]), j))
            groups[j].append(s)
            sizes[j] += counts[s]
    return [sorted(gr) for gr in groups]


def speaker_folds(k: int = 5) -> Folds:
    """k speaker folds (fewer when there are fewer speakers), balanced by utterance count."""
    def build(utts: List[Utterance], seed: int) -> List[Fold]:
        n = len({u.speaker for u in utts})
        if n < 3:
            raise DataError(f"speaker folds need at least 3 speakers (found {n})")
        kk = min(k, n)
        groups = balanced_speaker_groups(utts, kk, seed)
        return [_fold(i, f"speaker group {i}", utts, g, seed) for i, g in enumerate(groups)]
    return build


SPLIT_ALIASES = {"train": "train", "training": "train",
                 "dev": "dev", "development": "dev", "devel": "dev", "valid": "dev", "validation": "dev", "val": "dev",
                 "test": "test", "test1": "test"}


def official_split(aliases: Dict[str, str] = SPLIT_ALIASES, name: str = "official") -> Folds:
    """One fold from each utterance's `split` (through `aliases`; other split names are left out)."""
    def build(utts: List[Utterance], seed: int) -> List[Fold]:
        parts = {"train": [], "dev": [], "test": []}
        for u in utts:
            part = aliases.get((u.split or "").lower())
            if part:
                parts[part].append(u)
        return [Fold(0, name, Split(parts["train"], parts["dev"], parts["test"]))]
    return build


def _has_official_split(u: Utterance, aliases: Dict[str, str] = SPLIT_ALIASES) -> bool:
    return (u.split or "").lower() in aliases


def _natural(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ------------------------------------------------------------------------------------ the protocols
IEMOCAP_STANDARD = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
IEMOCAP_PAPER = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}
MSP_FOUR = {"A": "angry", "H": "happy", "S": "sad", "N": "neutral"}
MSP_PODCAST_EIGHT = {**MSP_FOUR, "U": "surprise", "F": "fear", "D": "disgust", "C": "contempt"}
PODCAST_SPLITS = {"train": "train", "development": "dev", "test1": "test"}
# the names of the corpora's label codes, which --labels may use instead of the codes
IEMOCAP_NAMES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
                 "fru": "frustrated", "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other",
                 "xxx": "no-agreement"}
MSP_NAMES = {**MSP_PODCAST_EIGHT, "O": "other", "X": "no-agreement"}

PAPER_CODE_IEMOCAP_GROUPS = (("Ses01M", "Ses02F"), ("Ses02M", "Ses03F"), ("Ses03M", "Ses04F"),
                             ("Ses04M", "Ses05F"), ("Ses05M", "Ses01F"))


def _improvised(u: Utterance) -> bool:
    return "_impro" in u.utt_id


def _msp_read(u: Utterance) -> bool:
    from emodarts.data.msp_improv import parse_name

    info = parse_name(u.utt_id)
    return info is not None and info["scenario"] == "R"


def _known_speaker(u: Utterance) -> bool:
    from emodarts.data.msp_podcast import UNKNOWN_SPEAKER

    return u.speaker != UNKNOWN_SPEAKER


_PROTOCOLS: Dict[str, Dict[str, Protocol]] = {}
_DEFAULTS: Dict[str, str] = {}


def register_protocol(p: Protocol, default: bool = False) -> None:
    _PROTOCOLS.setdefault(p.corpus, {})[p.name] = p
    if default or p.corpus not in _DEFAULTS:
        _DEFAULTS[p.corpus] = p.name


def _generic(corpus: str) -> Protocol:
    return Protocol(corpus, "speakers", "5 speaker folds over every utterance, labels as the corpus gives them",
                    speaker_folds(5))


def known_protocols(corpus: str) -> List[str]:
    return sorted(_PROTOCOLS.get(corpus, {"speakers": None}))


def default_protocol(corpus: str) -> str:
    return _DEFAULTS.get(corpus, "speakers")


def get_protocol(corpus: str, name: Optional[str] = None) -> Protocol:
    """The protocol `name` of `corpus` (None: the corpus's default). Raises DataError listing the known ones."""
    name = name or default_protocol(corpus)
    table = _PROTOCOLS.get(corpus)
    if table is None:
        if name == "speakers":
            return _generic(corpus)
        raise DataError(f"unknown protocol {name!r} for corpus {corpus!r}; known: speakers")
    if name not in table:
        raise DataError(f"unknown protocol {name!r} for corpus {corpus!r}; known: {', '.join(sorted(table))}")
    return table[name]


register_protocol(Protocol(
    "iemocap", "standard",
    "improvised and scripted, excited merged into happy, 4 classes (5,531 utterances on the full corpus); "
    "leave one session out (5 folds)",
    session_folds, IEMOCAP_STANDARD, IEMOCAP_NAMES), default=True)
register_protocol(Protocol(
    "iemocap", "paper-code",
    "as the published emoDARTS code: improvised only, no excited merge (hap only), 4 classes; 5 folds of 2 "
    "test speakers (Ses01M+Ses02F, Ses02M+Ses03F, Ses03M+Ses04F, Ses04M+Ses05F, Ses05M+Ses01F); all "
    "improvised utterances kept (the code kept about half)",
    fixed_speaker_folds(PAPER_CODE_IEMOCAP_GROUPS), IEMOCAP_PAPER, IEMOCAP_NAMES, keep=_improvised,
    keep_note="scripted (improvised only)"))
register_protocol(Protocol(
    "msp-improv", "sessions",
    "all scenario types, consensus labels when Evalution.txt is present (else the file-name letter), "
    "4 classes; leave one session out (6 folds)",
    session_folds, MSP_FOUR, MSP_NAMES), default=True)
register_protocol(Protocol(
    "msp-improv", "paper-code",
    "as the published emoDARTS code: read (R) clips, the file-name target letter, 4 classes; test sessions "
    "1, 2, 3 and 5 (4 folds)",
    fixed_session_folds(("session1", "session2", "session3", "session5")), MSP_FOUR, MSP_NAMES, keep=_msp_read,
    keep_note="not a read (R) clip", loader_options={"labels": "target"}))
for _suffix, _map, _classes in (("", MSP_FOUR, "4 classes (A, H, N, S)"),
                                ("-8class", MSP_PODCAST_EIGHT, "8 classes (A, C, D, F, H, N, S, U)")):
    register_protocol(Protocol(
        "msp-podcast", "official" + _suffix,
        f"the official split: Train / Development / Test1 (Test2 and Test3 left out), {_classes}",
        official_split(PODCAST_SPLITS), _map, MSP_NAMES, keep=lambda u: _has_official_split(u, PODCAST_SPLITS),
        keep_note="split set not Train/Development/Test1", disjoint=False), default=not _suffix)
    register_protocol(Protocol(
        "msp-podcast", "speakers" + _suffix,
        f"5 speaker folds over identified speakers of every split set, {_classes}",
        speaker_folds(5), _map, MSP_NAMES, keep=_known_speaker, keep_note="speaker unknown"))
for _corpus in ("synthetic", "csv"):
    register_protocol(Protocol(_corpus, "speakers", "5 speaker folds (fewer with fewer speakers)",
                               speaker_folds(5)), default=True)
    register_protocol(Protocol(_corpus, "sessions", "leave one session out", session_folds))
register_protocol(Protocol(
    "csv", "split", "the manifest's split column (train / dev / test; also training, development, valid, "
    "validation, val, test1; other values left out)",
    official_split(), keep=_has_official_split, keep_note="split not train/dev/test", disjoint=False))


__all__ = ["Fold", "Protocol", "get_protocol", "known_protocols", "default_protocol", "register_protocol",
           "carve_dev", "n_dev_speakers",
           "session_folds", "speaker_folds", "official_split", "balanced_speaker_groups"]
