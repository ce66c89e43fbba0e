"""Audio -> features, and an on-disk feature cache.

One job per module:
- config.py: FeatureConfig, the `paper` and `tiny` presets, the cache key;
- audio.py: reading audio files and deciding whether they can be used (AudioError kinds);
- compute.py: the librosa backend (one file at a time; the reference);
- torch_backend.py: the torchaudio backend (batched, on the GPU when there is one; needs no librosa);
- cache.py: cache entries and FeatureSet; shards.py: the chunks of an unfinished extraction;
- extract.py: build_features, the chunked extraction and its process pool.

librosa is imported inside the functions that need it: importing this package (for FEATURE_PRESETS,
FeatureConfig, or a cached FeatureSet) needs only numpy.
"""
from .audio import AudioError, check_duration, load_audio, read_audio, wav_truncation
from .cache import (FeatureSet, cache_dir_for, default_cache_dir, load_feature_set, utterance_list_hash,
                    work_dir_for)
from .compute import extract_features, extract_mfcc, mfcc_from_audio
from .config import FEATURE_PRESETS, FEATURE_VERSION, MIN_DURATION_S, FeatureConfig, feature_config
from .extract import build_features, extract_chunk
from .shards import DEFAULT_CHUNK
from .torch_backend import (BACKENDS, TORCHAUDIO_TOLERANCE, features_torch, mfcc_batch_torch, mfcc_torch,
                            resample_torch, torch_device)
from ..errors import DataError

__all__ = [
    "AudioError", "BACKENDS", "DEFAULT_CHUNK", "DataError", "FEATURE_PRESETS", "FEATURE_VERSION", "FeatureConfig",
    "FeatureSet", "MIN_DURATION_S", "TORCHAUDIO_TOLERANCE", "build_features", "cache_dir_for", "check_duration",
    "default_cache_dir", "extract_chunk", "extract_features", "extract_mfcc", "feature_config", "features_torch",
    "load_audio", "load_feature_set", "mfcc_batch_torch", "mfcc_from_audio", "mfcc_torch", "read_audio",
    "resample_torch", "torch_device", "utterance_list_hash", "wav_truncation", "work_dir_for",
]
