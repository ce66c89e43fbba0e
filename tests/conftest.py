import os

try:  # run the Triton kernels under the interpreter when there is no GPU; must precede any kernel import
    import torch as _torch

    _HAS_CUDA = _torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def librosa_warm():
    """Pay librosa's first-call cost (numba compiling mfcc, ~17 s cold) once per test session."""
    librosa = pytest.importorskip("librosa")
    import numpy as np

    y = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    librosa.feature.mfcc(y=y, sr=16000, n_mfcc=13, n_fft=512, hop_length=256, n_mels=40)
    return librosa


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small synthetic corpus (4 speakers x 4 emotions x 2 utterances), generated once per session."""
    from emodarts.data.synthetic import ensure_synthetic_corpus

    return ensure_synthetic_corpus(tmp_path_factory.mktemp("synthetic"), seed=0, n_speakers=4, utts_per_class=2)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped when torch.cuda.is_available() is false)")


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is false on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
