"""Audio -> features, and an on-disk feature cache.

One job per module:
- config.py: FeatureConfig, the `paper` and `tiny` presets, the cache key;
- audio.py: reading audio files and deciding whether they can be used (AudioError kinds);
- compute.py: the librosa backend (one file at a time; the reference): mfcc, logmel, spectrogram;
- npy.py: precomputed features (.npy per utterance, named by the manifest's `features` column);
- extractor_choice.py: which extractor `auto` means here (librosa when installed, else torchaudio);
- torchaudio_extractor.py: the torchaudio extractor (batched, on the GPU when there is one; needs no librosa);
- cache.py: cache entries and FeatureSet; shards.py: the chunks of an unfinished extraction;
- extract.py: build_features, the chunked extraction and its process pool.

librosa is imported inside the functions that need it: importing this package (for FEATURE_PRESETS,
FeatureConfig, or a cached FeatureSet) needs only numpy.
"""
from emodarts.features.audio import (
                    AudioError,
                    check_duration,
                    load_audio,
                    read_audio,
                    wav_truncation,
)
from emodarts.features.cache import (
                    FeatureSet,
                    cache_dir_for,
                    default_cache_dir,
                    load_feature_set,
                    utterance_list_hash,
                    work_dir_for,
)
from emodarts.features.compute import (
                    extract_features,
                    extract_mfcc,
                    features_from_audio,
                    logmel_from_audio,
                    mfcc_from_audio,
                    spectrogram_from_audio,
)
from emodarts.features.config import (
                    FEATURE_KINDS,
                    FEATURE_PRESETS,
                    FEATURE_VERSION,
                    MIN_DURATION_S,
                    SPECTROGRAM_HOP,
                    SPECTROGRAM_N_FFT,
                    FeatureConfig,
                    feature_config,
                    feature_kind_problem,
                    run_feature_config,
                    with_rows,
)
from emodarts.features.extract import build_features, extract_chunk
from emodarts.features.npy import FeatureFileError, corpus_rows, load_npy_features
from emodarts.features.shards import DEFAULT_CHUNK
from emodarts.features.extractor_choice import EXTRACTOR_CHOICES, EXTRACTORS, resolve_extractor
from emodarts.features.torchaudio_extractor import (
                    TORCHAUDIO_TOLERANCE,
                    features_batch_torch,
                    features_torch,
                    mfcc_batch_torch,
                    mfcc_torch,
                    resample_torch,
                    torch_device,
)
from emodarts.runtime.errors import DataError

__all__ = [
    "AudioError", "EXTRACTORS", "EXTRACTOR_CHOICES", "resolve_extractor", "DEFAULT_CHUNK", "DataError", "FEATURE_KINDS", "FEATURE_PRESETS", "FEATURE_VERSION",
    "FeatureConfig", "FeatureFileError", "FeatureSet", "MIN_DURATION_S", "SPECTROGRAM_HOP", "SPECTROGRAM_N_FFT",
    "TORCHAUDIO_TOLERANCE", "build_features", "cache_dir_for", "check_duration", "corpus_rows", "default_cache_dir",
    "extract_chunk", "extract_features", "extract_mfcc", "feature_config", "feature_kind_problem",
    "features_batch_torch", "features_from_audio", "features_torch", "load_audio", "load_feature_set",
    "load_npy_features", "logmel_from_audio", "mfcc_batch_torch", "mfcc_from_audio", "mfcc_torch", "read_audio",
    "resample_torch", "run_feature_config", "spectrogram_from_audio", "torch_device", "utterance_list_hash",
    "wav_truncation", "with_rows", "work_dir_for",
]
