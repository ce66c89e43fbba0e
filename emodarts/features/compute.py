"""The librosa backend: one file's features, the reference the torchaudio backend is measured against.

The extraction (extract.py) calls `extract_mfcc` through this module's namespace at call time, so a test
can replace it (monkeypatch emodarts.features.compute.extract_mfcc) to count or fake extractions.
"""
from __future__ import annotations

import numpy as np

from .audio import load_audio
from .config import FeatureConfig


def fix_length(y: np.ndarray, n: int) -> np.ndarray:
    """Keep the first `n` samples, zero-padding a shorter signal at the end (the analysis window)."""
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def fix_frames(m, frames: int, time_pool: int):
    """Trim/pad (edge) the last axis to `frames`, then max-pool it by `time_pool` (numpy or torch)."""
    if m.shape[-1] >= frames:
        m = m[..., :frames]
    else:
        if isinstance(m, np.ndarray):
            m = np.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, frames - m.shape[-1])], mode="edge")
        else:
            import torch

            m = torch.cat([m, m[..., -1:].expand(*m.shape[:-1], frames - m.shape[-1])], dim=-1)
    if time_pool > 1:
        m = m.reshape(*m.shape[:-1], frames // time_pool, time_pool)
        m = m.max(axis=-1) if isinstance(m, np.ndarray) else m.amax(dim=-1)
    return m


def mfcc_from_audio(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Fix the length, MFCC, trim/pad frames, max-pool time. Returns (n_mfcc, T) float32."""
    import librosa

    y = fix_length(y, cfg.n_samples)
    m = librosa.feature.mfcc(y=y, sr=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft,
                             hop_length=cfg.hop_length, n_mels=cfg.n_mels)
    m = fix_frames(m, cfg.n_frames, cfg.time_pool)
    return np.ascontiguousarray(m, dtype=np.float32)


def extract_mfcc(path, cfg: FeatureConfig) -> np.ndarray:
    """MFCC features of one file: (cfg.n_mfcc, cfg.shape[1]) float32."""
    return mfcc_from_audio(load_audio(path, cfg.sample_rate), cfg)


def extract_features(path, cfg: FeatureConfig) -> np.ndarray:
    """One file's features of the preset's kind: cfg.shape float32. AudioError when it cannot be used."""
    return extract_mfcc(path, cfg)  # looked up at call time (tests count the calls)
