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


@pytest.fixture(scope="session", autouse=True)
def suite_threads():
    """The whole suite on one intra-op thread, as the CLI's default (emodarts/runtime/threads.py): on a small shared
    CPU, two threads beside another busy process make every step 2.5-3.5x slower (bench/bench_threads.py).
    Tests that want threads raise it locally."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: on a small shared CPU, idle OpenMP workers spinning after every
    op make hundreds of small reference ops slow and erratic. Tests that want threads raise it locally.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cuda_build_skip_reason():
    import shutil

    import torch

    from emodarts.ops.compiled import cuda as compiled_cuda

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build: it cannot build CUDA extensions"
    if compiled_cuda.cuda_home() is None:
        return "no CUDA toolkit (nvcc) found: set CUDA_HOME to build the CUDA sources"
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401
        except ImportError:
            return "ninja is not installed"
    return None


@pytest.fixture(scope="session")
def cuda_built():
    """Build the extension's CUDA sources (cuda_sources(): the grouped layer and the DARTS cell) once, for
    sm_90 when no GPU is visible; ninja caches the objects across sessions. Returns the library path."""
    reason = _cuda_build_skip_reason()
    if reason:
        pytest.skip(reason)
    from emodarts.ops import darts_rnn
    from emodarts.ops.compiled import cuda as compiled_cuda
    from emodarts.ops import grouped_recurrent

    grouped_recurrent.ops()  # the CPU library defines the operators the CUDA one implements
    darts_rnn.ops()
    return compiled_cuda.build_cuda_extension()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped when torch.cuda.is_available() is false)")


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is false on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
