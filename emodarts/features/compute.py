"""The librosa extractor: one file's features, the reference the torchaudio extractor is measured against.

The extraction (extract.py) calls `extract_mfcc` through this module's namespace at call time, so a test
can replace it (monkeypatch emodarts.features.compute.extract_mfcc) to count or fake extractions.
"""
from __future__ import annotations

import numpy as np

from emodarts.features.audio import load_audio
from emodarts.features.config import SPECTROGRAM_HOP, SPECTROGRAM_N_FFT, FeatureConfig
from emodarts.features.npy import load_npy_features


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


def pool_to(m, shape: tuple):
    """Max-pool the last two axes of `m` (numpy or torch) to `shape` with PyTorch's adaptive windows (the
    spectrogram's 140 bins x 1 + n // 229 frames do not divide the preset's shape evenly)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(m)) if isinstance(m, np.ndarray) else m
    lead = t.shape[:-2]
    out = torch.nn.functional.adaptive_max_pool2d(t.reshape(-1, 1, *t.shape[-2:]), shape)
    out = out.reshape(*lead, *shape)
    return out.numpy() if isinstance(m, np.ndarray) else out


def logmel_from_audio(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Fix the length, log mel spectrogram with n_mfcc bands (the MFCC's settings, before its DCT), trim/pad
    frames, max-pool time. Returns cfg.shape float32."""
    import librosa

    y = fix_length(y, cfg.n_samples)
    s = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                       n_mels=cfg.n_mfcc)
    m = fix_frames(librosa.power_to_db(s), cfg.n_frames, cfg.time_pool)
    return np.ascontiguousarray(m, dtype=np.float32)


def spectrogram_from_audio(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Fix the length, STFT magnitude (n_fft 278, hop 229, Hann, centred), max-pooled to cfg.shape float32."""
    import librosa

    y = fix_length(y, cfg.n_samples)
    s = np.abs(librosa.stft(y, n_fft=SPECTROGRAM_N_FFT, hop_length=SPECTROGRAM_HOP)).astype(np.float32)
    return np.ascontiguousarray(pool_to(s, cfg.shape), dtype=np.float32)


_FROM_AUDIO = {"mfcc": mfcc_from_audio, "logmel": logmel_from_audio, "spectrogram": spectrogram_from_audio}


def features_from_audio(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The preset's features of samples already at cfg.sample_rate: cfg.shape float32."""
    if cfg.kind not in _FROM_AUDIO:
        raise ValueError(f"feature kind {cfg.kind!r} is not computed from audio")
    return _FROM_AUDIO[cfg.kind](y, cfg)


def extract_mfcc(path, cfg: FeatureConfig) -> np.ndarray:
    """MFCC features of one file: (cfg.n_mfcc, cfg.shape[1]) float32."""
    return mfcc_from_audio(load_audio(path, cfg.sample_rate), cfg)


def extract_features(path, cfg: FeatureConfig) -> np.ndarray:
    """One utterance's features of the preset's kind: cfg.shape float32. `path` is the audio file, or the
    .npy file for kind npy. AudioError / FeatureFileError (naming the file) when it cannot be used."""
    if cfg.kind == "mfcc":
        return extract_mfcc(path, cfg)  # looked up at call time (tests count the calls)
    if cfg.kind == "npy":
        return load_npy_features(path, cfg)
    return features_from_audio(load_audio(path, cfg.sample_rate), cfg)
