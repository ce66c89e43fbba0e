"""Feature settings: FeatureConfig, the `paper` and `tiny` presets, and the cache key they give.

The `paper` preset reproduces the published preparation (docs/method.md): resample to 32,750 Hz, keep the
first 8 s (zero-pad shorter clips at the end), 128 MFCCs with librosa defaults (n_fft 2048, hop 512,
Hann, 128 mel bands, power to dB, DCT-II ortho) -> 128 x 512 frames (1 + 262000 // 512; trimmed or
padded to 512 in general), then max-pooled over time by 4 -> 128 x 128. No normalisation.
The `tiny` preset (16 kHz, 3 s, 20 MFCCs, n_fft 512, hop 256, 40 mel bands, time pool 4) gives 20 x 47.
Clips shorter than `min_duration_s` (MIN_DURATION_S by default) are left out as "too short" rather than
zero-padded into a window of mostly silence.

`kind` picks what is computed from that window (FEATURE_KINDS), always `shape` = (n_mfcc rows, frames):
- mfcc: the above (the default, and the paper's);
- logmel: the log mel spectrogram before the DCT, with n_mfcc mel bands (same frames, same pooling);
- spectrogram: the published code's alternative, the STFT magnitude with n_fft 278 and hop 229
  (SPECTROGRAM_N_FFT, SPECTROGRAM_HOP), max-pooled to the preset's shape;
- npy: precomputed arrays (rows x frames) named by the manifest's `features` column, loaded instead of
  audio; their row count replaces n_mfcc (with_rows), their frames are cut or zero-padded to the preset's.
Each kind has its own cache key; `mfcc` keeps the key it had before kinds existed (caches stay valid).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Optional

from emodarts.runtime.errors import DataError

FEATURE_VERSION = 1  # bump when the extraction changes in a way that invalidates caches

# Shortest usable clip, in seconds of audio before padding. Absolute rather than a fraction of the window:
# a fraction of the paper preset's 8 s window large enough to matter (10 %: 0.8 s) could drop genuine short
# utterances (a one-word answer) and change the published utterance counts, while 0.25 s (about one short
# syllable) is shorter than a spoken word and still rejects clicks, cut-off files and near-empty clips
# (0.05 s in the tiny preset's 3 s window would be 98 % padding).
MIN_DURATION_S = 0.25

FEATURE_KINDS = ("mfcc", "logmel", "spectrogram", "npy")
SPECTROGRAM_N_FFT = 278  # the published code's spectrogram: 140 frequency bins ...
SPECTROGRAM_HOP = 229  # ... every 229 samples, then max-pooled to the preset's shape


def feature_kind_problem(kind: Any, name: str = "--features") -> Optional[str]:
    """Why `kind` cannot be a feature kind, or None."""
    if kind not in FEATURE_KINDS:
        return f"{name} is one of {', '.join(FEATURE_KINDS)}; got {kind!r}"
    return None


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int
    duration_s: float
    n_mfcc: int
    n_fft: int
    hop_length: int
    n_mels: int
    time_pool: int
    min_duration_s: float = MIN_DURATION_S  # shorter clips are skipped ("too-short"); part of key()
    kind: str = "mfcc"  # one of FEATURE_KINDS; n_mfcc is the row count of every kind

    def __post_init__(self) -> None:
        problem = feature_kind_problem(self.kind, "the feature kind")
        if problem:
            raise DataError(problem)

    def record(self) -> dict:
        """The settings as stored in a cache entry's index.json (and hashed by key()). `kind` is left out
        for mfcc, so entries written before kinds existed keep their key and stay valid."""
        rec = asdict(self)
        if self.kind == "mfcc":
            del rec["kind"]
        return rec

    def key(self) -> str:
        """A short hash of the settings and FEATURE_VERSION (names cache folders)."""
        blob = json.dumps({"v": FEATURE_VERSION, **self.record()}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def n_samples(self) -> int:
        return int(round(self.sample_rate * self.duration_s))

    @property
    def n_frames(self) -> int:
        """Frames kept before pooling: librosa's centred frame count, trimmed to a multiple of time_pool."""
        raw = 1 + self.n_samples // self.hop_length
        return (raw // self.time_pool) * self.time_pool

    @property
    def shape(self) -> tuple:
        """(F, T) of one utterance's features."""
        return (self.n_mfcc, self.n_frames // self.time_pool)


FEATURE_PRESETS: Dict[str, FeatureConfig] = {
    "paper": FeatureConfig(sample_rate=32750, duration_s=8.0, n_mfcc=128, n_fft=2048, hop_length=512,
                           n_mels=128, time_pool=4),  # 128 x 128
    "tiny": FeatureConfig(sample_rate=16000, duration_s=3.0, n_mfcc=20, n_fft=512, hop_length=256,
                          n_mels=40, time_pool=4),  # 20 x 47: small enough for a CPU search in minutes
}


def feature_config(preset: str, min_duration_s: Optional[float] = None, kind: str = "mfcc") -> FeatureConfig:
    """The feature preset `preset`, with another minimum clip duration when one is given (--min-duration)
    and the feature kind `kind` (--features)."""
    if preset not in FEATURE_PRESETS:
        raise DataError(f"unknown feature preset {preset!r}; choose one of {', '.join(FEATURE_PRESETS)}")
    problem = feature_kind_problem(kind)
    if problem:
        raise DataError(problem)
    cfg = FEATURE_PRESETS[preset]
    if kind != cfg.kind:
        cfg = replace(cfg, kind=kind)
    if min_duration_s is None:
        return cfg
    if not min_duration_s >= 0:
        raise DataError(f"the minimum clip duration must be 0 s or more (got {min_duration_s})")
    return replace(cfg, min_duration_s=float(min_duration_s))


def run_feature_config(run_cfg) -> FeatureConfig:
    """The feature settings of a run (config.RunConfig): its preset, --min-duration and --features."""
    return feature_config(run_cfg.preset, run_cfg.min_duration, getattr(run_cfg, "features", "mfcc"))


def with_rows(cfg: FeatureConfig, rows: int) -> FeatureConfig:
    """`cfg` for arrays of `rows` rows (npy features: the row count comes from the files, not the preset)."""
    return cfg if rows == cfg.n_mfcc else replace(cfg, n_mfcc=int(rows))
