"""Load the CUDA kernels of the extension: the library setup.py installed (`emodarts._C_cuda`) when it is there
and was built from the sources here (the digest it records), else a just-in-time build of csrc/cuda/*.cu.

The CUDA sources only register CUDA kernels (TORCH_LIBRARY_IMPL) for operators that the C++ library
(emodarts._C, loaded by emodarts/ops/compiled/cpp.py) defines, so the C++ library is loaded first. All of them
(the grouped recurrent layer, csrc/cuda/grouped_rnn_cuda.cu, and the DARTS cell, csrc/cuda/darts_rnn_cuda.cu)
are built into one library, and the ops modules ask for theirs with `ensure_cuda(op)`:

    ops()                     # the module's operators, defined by the C++ library
    cuda.ensure_cuda("emodarts::grouped_rnn_forward", "csrc/cuda/grouped_rnn_cuda.cu")

The JIT build needs nvcc (found by emodarts/ops/compiled/toolchain.py, as setup.py finds it) and a CUDA build of
torch; it is loaded into the process too, which works without a GPU. It is cached, like the C++ library's,
in the per-torch-version folder of extension.build_dir(); ninja rebuilds only what changed.
"""
import glob
import importlib
import importlib.util
import os
import sys
import threading
from typing import List, Optional, Set

from emodarts.ops.compiled import toolchain
from emodarts.ops.compiled.cpp import (
    announce_build,
    build_dir,
    build_lock,
    cpp_extension,
    csrc_dir,
    load_extension,
    needs_build,
)
from emodarts.runtime.errors import BackendError

CUDA_MODULE = "emodarts._C_cuda"  # what setup.py builds
JIT_NAME = "emodarts_grouped_rnn_cuda"  # the just-in-time library (and, below build_dir(), its folder's name)
JIT_FOLDER = "grouped_rnn_cuda"

_lock = threading.RLock()  # re-entrant: ensure_cuda holds it while it loads or builds
_installed_tried = False  # load_installed_cuda ran in this process
_loaded = False  # a CUDA library of the extension (installed or built here) was loaded in this process
_ready: Set[str] = set()  # operators whose CUDA kernels ensure_cuda has seen registered


def cuda_sources() -> List[str]:
    """The CUDA sources (csrc/cuda/*.cu) that emodarts._C_cuda and the JIT build compile, all into one library."""
    return sorted(glob.glob(os.path.join(csrc_dir(), "cuda", "*.cu")))


def cuda_home() -> Optional[str]:
    """The CUDA toolkit folder, or None (the rule setup.py uses too: toolchain.find_cuda_home)."""
    return toolchain.find_cuda_home()


def installed_cuda_library() -> Optional[str]:
    """The file of emodarts._C_cuda built by setup.py, or None when it was not built."""
    try:
        spec = importlib.util.find_spec(CUDA_MODULE)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and os.path.isfile(spec.origin) else None


def stale_reason(library: str, sources: List[str]) -> Optional[str]:
    """Why the installed `library` does not match `sources` (and the headers they include), or None when it
    does: setup.py records the digest of the sources it compiled beside the library (toolchain.sources_digest;
    contents, not file times, which a fresh copy of the tree resets)."""
    record = toolchain.digest_record(library, CUDA_MODULE)
    try:
        with open(record) as fh:
            built = fh.read().strip()
    except OSError:
        return f"it records no digest of its sources ({os.path.basename(record)})"
    if built != toolchain.sources_digest(sources, csrc_dir()):
        return "its sources have changed since it was built"
    return None


def load_installed_cuda() -> bool:
    """Load the CUDA kernels that setup.py built (emodarts._C_cuda), after emodarts._C (which defines the
    operators they implement). False, and the caller JIT-builds them, when they were not built, cannot be
    loaded (another torch) or were built from other sources (one line on stderr says so). Tried once per
    process."""
    global _installed_tried
    with _lock:
        if _installed_tried:
            return False
        _installed_tried = True
        lib = installed_cuda_library()
        if lib is None:
            return False
        stale = stale_reason(lib, cuda_sources())
        if stale:
            print(f"emodarts: the installed CUDA kernels ({lib}) do not match csrc/cuda: {stale}; using a "
                  "just-in-time build (reinstall to refresh them)", file=sys.stderr, flush=True)
            return False
        load_extension()
        try:
            importlib.import_module(CUDA_MODULE)
        except ImportError as exc:
            print(f"emodarts: the installed CUDA kernels ({lib}) do not load ({exc}); using a just-in-time build",
                  file=sys.stderr, flush=True)
            return False
        return True


def build_cuda_extension(build_directory: Optional[str] = None, verbose: bool = False) -> str:
    """JIT-compile cuda_sources() into a library that registers the CUDA kernels of the grouped ops and of
    the DARTS cell (torch.utils.cpp_extension.load, is_python_module=False; it is loaded too, which works
    without a GPU on a CUDA build of torch); returns the library path. ninja rebuilds only when a source, a
    header it includes or the flags change. Needs nvcc and a CUDA build of torch; without a visible GPU it
    targets Hopper (toolchain.DEFAULT_CUDA_ARCH_LIST) unless TORCH_CUDA_ARCH_LIST is set."""
    import torch

    cpp = cpp_extension()  # without its "No CUDA runtime is found" warning
    if torch.version.cuda is None:
        raise BackendError(f"torch {torch.__version__} is not a CUDA build: it cannot build CUDA extensions")
    home = cuda_home()
    if home is None:
        raise BackendError("no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)")
    sources = cuda_sources()
    bdir = build_directory or os.path.join(build_dir(), JIT_FOLDER)
    os.makedirs(bdir, exist_ok=True)
    saved_env = {k: os.environ.get(k) for k in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST")}
    saved_home = cpp.CUDA_HOME
    os.environ["CUDA_HOME"] = home
    if not saved_env["TORCH_CUDA_ARCH_LIST"] and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = toolchain.DEFAULT_CUDA_ARCH_LIST
    cpp.CUDA_HOME = home  # read at import time by cpp_extension; refresh it
    if needs_build(bdir, JIT_NAME, sources):
        announce_build("the CUDA kernels (a few minutes)")
    try:
        with build_lock(bdir):
            cpp.load(
                name=JIT_NAME, sources=sources, extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
                build_directory=bdir, is_python_module=False, verbose=verbose,
            )
    except Exception as exc:
        msg = str(exc).strip()
        if len(msg) > 4000:
            msg = "...\n" + msg[-4000:]
        raise BackendError(f"building the CUDA kernels of the extension (csrc/cuda/*.cu) failed:\n{msg}") from exc
    finally:
        cpp.CUDA_HOME = saved_home
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return os.path.join(bdir, f"{JIT_NAME}.so")


def has_cuda_kernel(op: str) -> bool:
    """Whether the operator `op` ("emodarts::...") has a CUDA kernel registered in this process."""
    import torch

    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"))


def ensure_cuda(op: str, source: str = "csrc/cuda/*.cu") -> None:
    """Make the CUDA kernel of `op` available, loading the extension's CUDA library once per process: the
    installed emodarts._C_cuda when it is usable (load_installed_cuda), else a JIT build. The C++ library
    must have defined `op` already (the ops module's ops() does). A library loaded earlier in this process
    that lacks `op` (built before `source` existed) is an error: it cannot be replaced without a restart."""
    global _loaded
    if op in _ready:
        return
    with _lock:
        if op in _ready:
            return
        if not has_cuda_kernel(op) and not _loaded:
            load_installed_cuda()
            if not has_cuda_kernel(op):
                build_cuda_extension()
            _loaded = True
        if not has_cuda_kernel(op):
            raise BackendError(
                f"the CUDA kernels of {op} did not register: the CUDA library loaded in this process was built "
                f"without {source} (restart the process to rebuild it)"
            )
        _ready.add(op)


__all__ = ["ensure_cuda", "build_cuda_extension", "load_installed_cuda", "installed_cuda_library", "cuda_home",
           "cuda_sources", "stale_reason", "has_cuda_kernel", "CUDA_MODULE", "JIT_NAME"]
