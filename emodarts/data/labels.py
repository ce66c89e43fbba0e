"""The classes of a run (`--labels`): which of the corpus's labels each class takes, and their order.

`--labels neutral,happy=happy+excited,sad,angry` makes four classes, in that order (label index i is the
i-th); `happy` takes the corpus's happy and excited items. A source is a label as the corpus writes it or
its name (IEMOCAP's `exc` is `excited`, MSP's `A` is `angry`), matched without regard to case; a class
written alone takes the label of its own name. Items whose label no class takes are left out and listed
in skipped_files.csv as `label-not-selected`. Without --labels a run's classes are the protocol's (every
label of a csv manifest), sorted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from emodarts.runtime.errors import DataError

# Spellings of common emotion labels in manifests (any case) and the class name each becomes; a manifest
# label not listed here is a class under its own spelling.
EMOTION_ALIASES = {
    "angry": "angry", "anger": "angry", "ang": "angry",
    "happy": "happy", "happiness": "happy", "hap": "happy",
    "neutral": "neutral", "neu": "neutral",
    "sad": "sad", "sadness": "sad",
    "disgust": "disgust", "disgusted": "disgust", "dis": "disgust",
    "fear": "fear", "fearful": "fear", "fea": "fear",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise",
    "calm": "calm", "contempt": "contempt", "excited": "excited", "exc": "excited",
    "frustrated": "frustrated", "frustration": "frustrated", "fru": "frustrated",
}

LABELS_HELP = ("a list of classes, each NAME or NAME=LABEL+LABEL..., at least two, no class or label twice "
               "(e.g. neutral,happy=happy+excited,sad,angry)")


def canonical_label(label: str) -> str:
    """A manifest's label as a class name: a known spelling becomes its emotion's name, any other is kept."""
    return EMOTION_ALIASES.get(label.strip().lower(), label.strip())


def split_labels(text: Optional[str]) -> Optional[Tuple[str, ...]]:
    """'neutral,happy=happy+excited' -> ('neutral', 'happy=happy+excited'); None or '' -> None."""
    if not text:
        return None
    return tuple(item.strip() for item in str(text).split(","))


@dataclass(frozen=True)
class LabelSpec:
    """A parsed --labels: the classes in order and the source label (lower case) each class takes."""

    classes: Tuple[str, ...]
    sources: Mapping[str, str]  # source label (_key) -> class
    text: str  # as given, for messages

    def class_of(self, label: str, names: Mapping[str, str]) -> Optional[str]:
        """The class that takes `label` (a corpus label; `names` gives its name), or None."""
        for key in (_key(label), _key(names.get(label, label))):
            if key in self.sources:
                return self.sources[key]
        return None

    def unmatched(self, labels: Sequence[str], names: Mapping[str, str]) -> List[str]:
        """The sources that none of `labels` (the corpus's labels present) matches: typos, most likely."""
        present = {k for label in labels for k in (_key(label), _key(names.get(label, label)))}
        return [s for s in self.sources if s not in present]


def _key(label: str) -> str:
    """How labels are compared: lower case, a known spelling as its emotion (fearful, FEA: fear)."""
    return EMOTION_ALIASES.get(label.strip().lower(), label.strip().lower())


def labels_problem(items: Sequence[str]) -> Optional[str]:
    """Why `items` (the configuration's `labels`) cannot be a --labels list, or None."""
    try:
        parse_labels(items)
    except DataError as exc:
        return str(exc)
    return None


def parse_labels(items: Sequence[str]) -> Optional[LabelSpec]:
    """The LabelSpec of `items` (None for an empty list: the protocol's classes). DataError naming the
    item that is wrong."""
    items = tuple(items)
    if not items:
        return None
    text = ",".join(items)
    classes: List[str] = []
    sources: Dict[str, str] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        name = name.strip()
        srcs = [s.strip() for s in rest.split("+")] if sep else [name]
        if not name or any(not s for s in srcs) or "=" in rest:
            raise DataError(f"--labels {text}: item {item!r} is not NAME or NAME=LABEL+LABEL...")
        if name in classes:
            raise DataError(f"--labels {text}: class {name!r} is given twice")
        classes.append(name)
        for s in srcs:
            if sources.get(_key(s), name) != name:
                raise DataError(f"--labels {text}: label {s!r} is taken by two classes "
                                f"({sources[_key(s)]} and {name})")
            sources[_key(s)] = name
    if len(classes) < 2:
        raise DataError(f"--labels {text}: a classifier needs at least two classes")
    return LabelSpec(tuple(classes), sources, text)


__all__ = ["EMOTION_ALIASES", "LabelSpec", "canonical_label", "labels_problem", "parse_labels",
           "split_labels"]
