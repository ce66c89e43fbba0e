"""Precomputed features (`--features npy`): one .npy array per utterance, rows x frames, from any extractor.

The manifest's `features` column names each utterance's file (relative to the manifest's folder). They are
checked like audio: a file that cannot be used is a FeatureFileError whose `kind` is its skipped-files
category (missing-features, unreadable-features, wrong-shape, not-finite-features) and whose message
names the file, so it lands in the same skipped-files report. Every file must have the same number of
rows (the corpus's most common count, corpus_rows); frames are cut to the preset's frame count or
zero-padded at the end, as audio is cut to its window or zero-padded.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from emodarts.features.config import FeatureConfig
from emodarts.runtime.errors import DataError


class FeatureFileError(DataError):
    """A precomputed features file that cannot be used; `kind` is the skipped-files category."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _open(path: Optional[str]) -> np.ndarray:
    """The array in `path` (memory-mapped: only its header is read until the values are used)."""
    if not path:
        raise FeatureFileError("no features file: the manifest's `features` column is empty for this "
                               "utterance", "missing-features")
    if not os.path.isfile(path):
        raise FeatureFileError(f"features file not found: {path}", "missing-features")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError/OSError/EOFError/UnpicklingError for damaged or foreign files
        raise FeatureFileError(f"cannot read features file {path} (not a .npy array, or damaged): {exc}",
                               "unreadable-features") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise FeatureFileError(f"cannot read features file {path} (not a numeric .npy array)",
                               "unreadable-features")
    if arr.ndim != 2 or 0 in arr.shape:
        raise FeatureFileError(f"features file is not a rows x frames array (shape {tuple(arr.shape)}): {path}",
                               "wrong-shape")
    return arr


def corpus_rows(paths: Sequence[Optional[str]]) -> Optional[int]:
    """The row count of the corpus's features files: the most common among the readable 2-D arrays (the
    first seen on a tie), or None when none is readable. Reads only the files' headers."""
    counts: Counter = Counter()
    for p in paths:
        try:
            counts[_open(p).shape[0]] += 1
        except DataError:
            continue
    return counts.most_common(1)[0][0] if counts else None


def load_npy_features(path: Optional[str], cfg: FeatureConfig) -> np.ndarray:
    """One utterance's precomputed features as cfg.shape float32: the rows must be cfg.n_mfcc (the
    corpus's count), the frames are cut or zero-padded to the preset's; FeatureFileError otherwise."""
    arr = _open(path)
    rows, frames = cfg.shape
    if arr.shape[0] != rows:
        raise FeatureFileError(f"features file has {arr.shape[0]} rows; the corpus's other features files have "
                               f"{rows}: {path}", "wrong-shape")
    try:
        x = np.array(arr, dtype=np.float32)  # a copy (not the memmap), all of it: a NaN past the kept frames counts
    except Exception as exc:  # a file cut short after its header
        raise FeatureFileError(f"cannot read features file {path} (damaged): {exc}", "unreadable-features") from exc
    if not np.all(np.isfinite(x)):
        raise FeatureFileError(f"features file has NaN or infinite values: {path}", "not-finite-features")
    x = x[:, :frames]
    if x.shape[1] < frames:
        x = np.pad(x, ((0, 0), (0, frames - x.shape[1])))
    return np.ascontiguousarray(x)
