"""One clip's features outside a corpus (`emodarts predict`, the Python API's `load(...).predict`): from an
audio file, from samples already in memory, or (kind npy) from a features file or array.

The extractor is the one `auto` picks (librosa where installed, else torchaudio), so that prediction needs
no librosa; the two agree within torchaudio_extractor.TORCHAUDIO_TOLERANCE. A clip shorter than the run's
--min-duration is refused, as the run's data refused it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from emodarts.features.audio import AudioError, audio_facts, check_duration, read_audio
from emodarts.features.compute import extract_features, features_from_audio
from emodarts.features.config import FeatureConfig
from emodarts.features.extractor_choice import resolve_extractor

Source = Union[str, Path, np.ndarray, "torch.Tensor"]  # noqa: F821 (torch is only named)


def clip_features(source: Source, cfg: FeatureConfig, sample_rate: Optional[int] = None,
                  extractor: str = "auto") -> np.ndarray:
    """cfg.shape float32 features of `source`: a file path, or samples (1-D, or channels x samples, averaged
    to mono) at `sample_rate` Hz; for kind npy, a .npy path or a rows x frames array. DataError (naming the
    file, or "waveform") when it cannot be used."""
    if isinstance(source, (str, Path)):
        return _file_features(str(source), cfg, extractor)
    x = np.asarray(source.detach().cpu() if hasattr(source, "detach") else source, dtype=np.float32)
    if cfg.kind == "npy":
        if x.shape != tuple(cfg.shape):
            raise AudioError(f"features array of shape {x.shape}; the run's network takes {tuple(cfg.shape)}",
                             "wrong-shape")
        return np.ascontiguousarray(x)
    if sample_rate is None:
        raise AudioError("a waveform needs its sample_rate (e.g. predict(y, sample_rate=16000))", "unreadable")
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(f"waveform of shape {tuple(np.shape(source))}: expected samples, 1-D or channels x "
                         "samples", "empty")
    if not np.all(np.isfinite(x)):
        raise AudioError("waveform has NaN or infinite samples", "not-finite")
    check_duration("waveform", x.size / sample_rate, cfg)
    return _from_samples(x, int(sample_rate), cfg, extractor)


def _file_features(path: str, cfg: FeatureConfig, extractor: str) -> np.ndarray:
    if Path(path).is_dir():  # else "audio file not found", which misleads
        raise AudioError(f"{path} is a directory, not an audio file", "missing")
    if cfg.kind == "npy" or not Path(path).is_file():
        return extract_features(path, cfg)  # npy, or the "not found" error naming the file
    facts = audio_facts(path)
    if facts:
        check_duration(path, facts["frames"] / facts["sr"], cfg)
    if resolve_extractor(extractor, cfg.kind) == "librosa":
        return extract_features(path, cfg)  # as the corpus's features were computed
    y, sr, _ = read_audio(path)
    return _from_samples(y, sr, cfg, "torchaudio")


def _from_samples(y: np.ndarray, sr: int, cfg: FeatureConfig, extractor: str) -> np.ndarray:
    if resolve_extractor(extractor, cfg.kind) == "torchaudio":
        from emodarts.features.torchaudio_extractor import features_torch

        return features_torch([y], [sr], cfg, "cpu")[0]
    if sr != cfg.sample_rate:
        import librosa

        y = librosa.resample(y, orig_sr=sr, target_sr=cfg.sample_rate)
    return features_from_audio(np.ascontiguousarray(y, dtype=np.float32), cfg)


__all__ = ["clip_features"]
