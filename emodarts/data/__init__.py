"""Corpora: each yields a list of `Utterance` records; splits are speaker independent."""
from dataclasses import dataclass
from typing import Optional

EMOTIONS = ("angry", "happy", "neutral", "sad")


@dataclass(frozen=True)
class Utterance:
    """One labelled audio file. `path` is absolute; `label` is one of the corpus classes."""

    utt_id: str
    path: str
    label: str
    speaker: str
    session: Optional[str] = None
