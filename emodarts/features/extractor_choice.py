"""Which feature extractor a run uses: `auto` (the default) is librosa, the reference, where it is installed,
else torchaudio, which needs no librosa (the GPU machine has torchaudio but no librosa; features agree within
torchaudio_extractor.TORCHAUDIO_TOLERANCE and the cache entry records which one wrote it)."""
from __future__ import annotations

import importlib.util

from emodarts.runtime.errors import DataError

EXTRACTORS = ("librosa", "torchaudio")
EXTRACTOR_CHOICES = ("auto",) + EXTRACTORS


def librosa_installed() -> bool:
    return importlib.util.find_spec("librosa") is not None


def resolve_extractor(name: str, kind: str = "mfcc") -> str:
    """The extractor `name` stands for: `auto` -> librosa when installed, else torchaudio. An unknown name, or
    librosa asked for where it is not installed (for audio features: npy files need neither), is a DataError
    that says what to do."""
    if name == "auto":
        return "librosa" if librosa_installed() else "torchaudio"
    if name not in EXTRACTORS:
        raise DataError(f"unknown feature extractor (--backend) {name!r}; choose one of {', '.join(EXTRACTOR_CHOICES)}")
    if name == "librosa" and kind != "npy" and not librosa_installed():
        raise DataError("--backend librosa: librosa is not installed here; use --backend torchaudio (or auto), "
                        "or install librosa")
    return name


__all__ = ["EXTRACTORS", "EXTRACTOR_CHOICES", "librosa_installed", "resolve_extractor"]
