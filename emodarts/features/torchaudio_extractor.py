"""The torchaudio extractor: the librosa features for a batch of decoded signals, on the GPU when there is one.

It needs no librosa. It agrees with the librosa reference within TORCHAUDIO_TOLERANCE (see
tests/test_corpora_features.py); the transforms are built once per (settings, device).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional, Sequence

import numpy as np

from emodarts.features.compute import fix_frames, pool_to
from emodarts.features.config import SPECTROGRAM_HOP, SPECTROGRAM_N_FFT, FeatureConfig
from emodarts.runtime.errors import DataError

# Agreement with the librosa reference, measured on CPU (tests/test_corpora_features.py; speech-like
# synthetic audio, noise and silence; MFCC values up to ~1.1e3 in magnitude):
# - file already at the preset's rate: largest |difference| 2.4e-4 (float32 FFT rounding); bound 5e-3.
# - resampled (torchaudio's Kaiser sinc vs librosa's soxr_hq; 8 / 16 / 44.1 kHz files, both presets):
#   largest |difference| <= 0.3 % of the largest |MFCC|, RMS difference <= 0.42 % of the RMS MFCC;
#   bounds 1 % and 1 %.
TORCHAUDIO_TOLERANCE = {"same_rate_atol": 5e-3, "resampled_rel_max": 0.01, "resampled_rel_rms": 0.01}
# torchaudio's "kaiser_best" resampler settings (close to librosa's soxr_hq)
_RESAMPLE = dict(lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser",
                 beta=14.769656459379492)
_TORCH_OPS: Dict[tuple, tuple] = {}


def torch_device(device: Optional[str] = None) -> str:
    """`device`, or cuda when a GPU is there, else cpu."""
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torchaudio():
    try:
        import torchaudio
    except (ImportError, OSError) as exc:  # a CUDA torchaudio next to a CPU torch raises OSError
        raise DataError(f"--backend torchaudio: torchaudio cannot be imported here ({exc}); "
                        f"use --backend librosa") from exc
    return torchaudio


def _torch_ops(cfg: FeatureConfig, device: str):
    """The transforms of `cfg`'s kind, as librosa's defaults compute them: (mel, dct) for mfcc, (mel, None)
    for logmel (n_mfcc bands), (spectrogram, None) for spectrogram."""
    key = (cfg, device)
    if key not in _TORCH_OPS:
        torchaudio = _torchaudio()
        if cfg.kind == "spectrogram":
            spec = torchaudio.transforms.Spectrogram(n_fft=SPECTROGRAM_N_FFT, hop_length=SPECTROGRAM_HOP,
                                                     power=1.0, center=True, pad_mode="constant")
            _TORCH_OPS[key] = (spec.to(device), None)
            return _TORCH_OPS[key]
        bands = cfg.n_mels if cfg.kind == "mfcc" else cfg.n_mfcc
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=bands,
            f_min=0.0, f_max=None, power=2.0, center=True, pad_mode="constant", norm="slaney",
            mel_scale="slaney").to(device)
        dct = None
        if cfg.kind == "mfcc":
            dct = torchaudio.functional.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho").to(device)
        _TORCH_OPS[key] = (mel, dct)
    return _TORCH_OPS[key]


def resample_torch(y: np.ndarray, orig_sr: int, sr: int, device: str = "cpu"):
    """Resample one signal with torchaudio (Kaiser-windowed sinc); returns a float32 tensor on `device`."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(y)).to(device)
    if orig_sr == sr:
        return x
    import torchaudio

    return torchaudio.functional.resample(x, int(orig_sr), int(sr), **_RESAMPLE)


def _power_to_db(s):
    """librosa.power_to_db(ref=1, amin=1e-10, top_db=80) per utterance of a (B, F, T) batch."""
    import torch

    db = 10.0 * torch.log10(torch.clamp(s, min=1e-10))
    return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 80.0)


def mfcc_batch_torch(waves, cfg: FeatureConfig):
    """librosa.feature.mfcc (defaults) for a batch: waves (B, cfg.n_samples) float32 tensor ->
    (B, n_mfcc, T) after the frame fix and time pooling, on the waves' device."""
    import torch

    mel, dct = _torch_ops(cfg, str(waves.device))
    with torch.no_grad():
        db = _power_to_db(mel(waves))  # (B, n_mels, frames)
        m = torch.matmul(db.transpose(1, 2), dct).transpose(1, 2)  # DCT-II ortho over the mel axis
        return fix_frames(m, cfg.n_frames, cfg.time_pool)


def features_batch_torch(waves, cfg: FeatureConfig):
    """The preset's features for a batch of fixed-length waves (B, cfg.n_samples): (B, F, T), the
    torchaudio twin of compute.features_from_audio."""
    import torch

    if cfg.kind == "mfcc":
        return mfcc_batch_torch(waves, cfg)
    if cfg.kind not in ("logmel", "spectrogram"):
        raise ValueError(f"feature kind {cfg.kind!r} is not computed from audio")
    transform, _ = _torch_ops(cfg, str(waves.device))
    with torch.no_grad():
        if cfg.kind == "logmel":
            return fix_frames(_power_to_db(transform(waves)), cfg.n_frames, cfg.time_pool)
        return pool_to(transform(waves), cfg.shape)


def _windows(signals: Sequence[np.ndarray], rates: Sequence[int], cfg: FeatureConfig, device: str):
    """The signals resampled to the preset's rate and cut/zero-padded to its window: (B, n_samples)."""
    import torch

    rows = []
    for y, r in zip(signals, rates):
        x = resample_torch(y, r, cfg.sample_rate, device)
        n = cfg.n_samples
        rows.append(x[:n] if x.shape[0] >= n else torch.nn.functional.pad(x, (0, n - x.shape[0])))
    return torch.stack(rows)


def features_torch(signals: Sequence[np.ndarray], rates: Sequence[int], cfg: FeatureConfig,
                   device: Optional[str] = None) -> np.ndarray:
    """The preset's features of decoded signals (any rates) with the torchaudio extractor: (n, F, T) float32."""
    device = torch_device(device)
    if not len(signals):
        return np.zeros((0,) + cfg.shape, dtype=np.float32)
    out = features_batch_torch(_windows(signals, rates, cfg, device), cfg)
    return out.float().cpu().numpy().astype(np.float32, copy=False)


def mfcc_torch(signals: Sequence[np.ndarray], rates: Sequence[int], cfg: FeatureConfig,
               device: Optional[str] = None) -> np.ndarray:
    """MFCCs of decoded signals (any rates) with the torchaudio extractor: (n, F, T) float32 numpy."""
    return features_torch(signals, rates, replace(cfg, kind="mfcc"), device)
