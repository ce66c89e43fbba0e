"""Build-toolchain facts shared by setup.py and the just-in-time loaders (compiled/cpp.py, compiled/cuda.py).

Standard library only, and importing nothing from emodarts: setup.py loads this file by its path at build
time (importing the package there would import torch-heavy code, or fail in an isolated build), so the
install and the first-use build find the same CUDA toolkit, target the same GPU by default and pass the
same OpenMP flags.
"""
import hashlib
import os
import re
import shutil
import sys
from typing import List, Mapping, Optional, Sequence

# The GPU target when none is visible and TORCH_CUDA_ARCH_LIST is unset: Hopper (H100 / H200).
DEFAULT_CUDA_ARCH_LIST = "9.0"


def find_cuda_home(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The CUDA toolkit folder: $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, or nvcc's folder's parent (followed
    through symlinks), whichever has bin/nvcc and include/cuda_runtime.h; None when there is none.
    (torch.utils.cpp_extension guesses from `which nvcc` alone, which is wrong when nvcc is a wrapper script
    in /usr/local/bin.)"""
    env = os.environ if environ is None else environ

    def ok(d: Optional[str]) -> bool:
        return bool(d) and os.path.isfile(os.path.join(d, "bin", "nvcc")) and os.path.isfile(
            os.path.join(d, "include", "cuda_runtime.h"))

    candidates = [env.get("CUDA_HOME"), env.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for d in candidates:
        if ok(d):
            return d
    return None


def openmp_flags() -> List[str]:
    """-fopenmp on Linux: at::parallel_for forks threads only in sources compiled with it (without it every
    CPU op silently runs on one core). The extension then links libgomp.so.1, the runtime torch has already
    loaded, so both share one thread pool and torch.set_num_threads."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def local_includes(source: str) -> List[str]:
    """The project headers a source includes with #include "..." (resolved beside it), recursively."""
    seen, todo = [], [source]
    while todo:
        path = todo.pop()
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            continue
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.M):
            header = os.path.normpath(os.path.join(os.path.dirname(path), name))
            if header not in seen and os.path.isfile(header):
                seen.append(header)
                todo.append(header)
    return seen


def sources_digest(sources: Sequence[str], root: str) -> str:
    """sha256 of the sources and the project headers they include: names (relative to `root`, the csrc
    folder) and contents. An installed build records it (setup.py) and the loader compares it, rather than
    file times, which a fresh copy of the tree resets (a silent rebuild of current kernels)."""
    files = set(sources) | {h for s in sources for h in local_includes(s)}
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: os.path.relpath(p, root)):
        digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode() + b"\0")
        with open(path, "rb") as fh:
            digest.update(fh.read() + b"\0")
    return digest.hexdigest()


def digest_record(library: str, module_name: str) -> str:
    """Where the digest of an installed library's sources is kept: beside it, `<module>.sources.sha256`."""
    return os.path.join(os.path.dirname(library), module_name.rsplit(".", 1)[-1] + ".sources.sha256")


__all__ = ["find_cuda_home", "openmp_flags", "DEFAULT_CUDA_ARCH_LIST", "local_includes", "sources_digest",
           "digest_record"]
