"""Corpora: each yields a list of `Utterance` records; splits are speaker independent."""
from dataclasses import dataclass
from typing import Optional

EMOTIONS = ("angry", "happy", "neutral", "sad")


@dataclass(frozen=True)
class Utterance:
    """One labelled audio file. `path` is absolute; `label` is the corpus's own label code when a loader
    returns it, one of the protocol's classes once a protocol has mapped it. `split` is an official
    partition name (MSP-Podcast's Split_Set, a manifest's split column) or None. `features` is an absolute
    path to the utterance's precomputed features (.npy, a manifest's features column; read by
    `--features npy` instead of the audio) or None."""

    utt_id: str
    path: str
    label: str
    speaker: str
    session: Optional[str] = None
    split: Optional[str] = None
    features: Optional[str] = None
