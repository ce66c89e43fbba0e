"""Load the compiled extension `emodarts._C` (C++ CPU ops), JIT-building it if needed, and the installed
CUDA kernels `emodarts._C_cuda` when setup.py built them.

`pip install --no-build-isolation -e .` builds emodarts._C with the package (setup.py, when torch is importable
at build time), and emodarts._C_cuda too when setup.py's rule says so (a CUDA build of torch, a CUDA toolkit,
and a visible GPU or EMODARTS_CUDA_EXT=1 / TORCH_CUDA_ARCH_LIST; see setup.py). Otherwise `load_extension()`
compiles csrc/*.cpp once with torch.utils.cpp_extension.load into a per-torch-version cache folder
(EMODARTS_EXT_DIR, else $XDG_CACHE_HOME/emodarts or ~/.cache/emodarts) and reuses it in later processes, and
the CUDA kernels are JIT-compiled on first use on a GPU (emodarts.ops.grouped_recurrent.ensure_cuda, which
first tries `load_installed_cuda()`). Either way the operators appear under torch.ops.emodarts (e.g.
torch.ops.emodarts.mixed_sum_fwd).
"""
import glob
import importlib.util
import os
import sys
import sysconfig
import threading
from typing import Optional

from emodarts.errors import BackendError

JIT_NAME = "emodarts_C"
_lock = threading.RLock()  # re-entrant: load_ops holds it while it loads the extension
_module = None

BUILD_HINT = (
    "Build it with `pip install --no-build-isolation -e .` (torch must be installed first), "
    "or install a C++ compiler (g++ or clang) and ninja so that it can be compiled on first use."
)


def csrc_dir() -> str:
    """The source folder (a source checkout or an editable install)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")


def cpu_sources() -> list:
    return sorted(glob.glob(os.path.join(csrc_dir(), "*.cpp")))


def openmp_flags() -> list:
    """-fopenmp on Linux: at::parallel_for forks threads only in sources compiled with it (without it every
    CPU op silently runs on one core). The extension then links libgomp.so.1, the runtime torch has already
    loaded, so both share one thread pool and torch.set_num_threads."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def build_dir() -> str:
    import torch

    root = os.environ.get("EMODARTS_EXT_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "emodarts"
    )
    tag = f"torch{torch.__version__}-{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    path = os.path.join(root, "ext", tag.replace("+", "_").replace("/", "_"))
    os.makedirs(path, exist_ok=True)
    return path


class _NoCudaRuntimeNote:
    """Drops torch.utils.cpp_extension's import-time "No CUDA runtime is found" warning: on a machine
    without a GPU every fused command would print it, though a CPU build needs no CUDA runtime."""

    @staticmethod
    def filter(record) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def cpp_extension():
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found" warning."""
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeNote) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeNote())
    from torch.utils import cpp_extension as module

    return module


def needs_build(build_directory: str, name: str, sources: list) -> bool:
    """Whether torch's JIT load will compile rather than load a cached build: no library of `name` in
    `build_directory`, or a source (or a header beside one) newer than it. Only a real build is announced."""
    libs = glob.glob(os.path.join(build_directory, f"{name}*.so")) + glob.glob(
        os.path.join(build_directory, f"{name}*.pyd"))
    if not libs:
        return True
    built = max(os.path.getmtime(p) for p in libs)
    folders = {os.path.dirname(s) for s in sources}
    inputs = list(sources) + [h for d in folders for h in glob.glob(os.path.join(d, "*.h"))]
    return any(os.path.getmtime(p) > built for p in inputs if os.path.exists(p))


def announce_build(what: str) -> None:
    """One line on stderr before a JIT build, which is silent for minutes otherwise."""
    print(f"building {what}...", file=sys.stderr, flush=True)


def load_extension():
    """Return the loaded extension module; its operators are registered under torch.ops.emodarts.

    Raises BackendError, with build instructions, when it is neither installed nor buildable here.
    """
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        try:
            import emodarts._C as mod  # built by setup.py

            _module = mod
            return mod
        except ImportError as exc:
            installed_error = exc
        _module = _jit_build(installed_error)
        return _module


def _jit_build(installed_error):
    sources = cpu_sources()
    if not sources:
        raise BackendError(
            f"the emodarts C++ extension (emodarts._C) is not installed ({installed_error}) and its sources "
            f"are not here ({csrc_dir()}/*.cpp) to compile it. {BUILD_HINT}"
        )
    try:
        import torch  # noqa: F401

        load = cpp_extension().load
    except Exception as exc:  # pragma: no cover - torch is a hard dependency
        raise BackendError(f"cannot build the emodarts C++ extension: torch.utils.cpp_extension: {exc}")
    directory = build_dir()
    if needs_build(directory, JIT_NAME, sources):
        announce_build("the C++ extension (about a minute)")
    try:
        return load(
            name=JIT_NAME,
            sources=sources,
            extra_cflags=["-O3", *openmp_flags()],
            extra_ldflags=openmp_flags(),
            build_directory=directory,
            is_python_module=True,
            verbose=False,
        )
    except Exception as exc:
        msg = str(exc).strip()
        if len(msg) > 4000:
            msg = "...\n" + msg[-4000:]
        raise BackendError(
            f"the emodarts C++ extension (emodarts._C) is not installed ({installed_error}) and building it "
            f"just in time failed:\n{msg}\n{BUILD_HINT}"
        ) from exc


CUDA_MODULE = "emodarts._C_cuda"


def cuda_sources() -> list:
    """The CUDA sources (csrc/cuda/*.cu) that emodarts._C_cuda and the JIT build compile."""
    return sorted(glob.glob(os.path.join(csrc_dir(), "cuda", "*.cu")))


def installed_cuda_library() -> Optional[str]:
    """The file of emodarts._C_cuda built by setup.py, or None when it was not built."""
    try:
        spec = importlib.util.find_spec(CUDA_MODULE)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and os.path.isfile(spec.origin) else None


def local_includes(source: str) -> list:
    """The project headers a source includes with #include "..." (resolved beside it), recursively."""
    import re

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


def stale_sources(library: str, sources: list) -> list:
    """The sources, and the project headers they include, that are newer than `library`."""
    built = os.path.getmtime(library)
    inputs = list(sources) + [h for s in sources for h in local_includes(s)]
    return [p for p in inputs if os.path.exists(p) and os.path.getmtime(p) > built]


_cuda_installed_tried = False


def load_installed_cuda() -> bool:
    """Load the CUDA kernels that setup.py built (emodarts._C_cuda), after emodarts._C (which defines the
    operators they implement). False, and the caller JIT-builds them, when they were not built, cannot be
    loaded (another torch) or are older than their sources (one line on stderr says so)."""
    global _cuda_installed_tried
    with _lock:
        if _cuda_installed_tried:
            return False
        _cuda_installed_tried = True
        lib = installed_cuda_library()
        if lib is None:
            return False
        newer = stale_sources(lib, cuda_sources())
        if newer:
            print(f"emodarts: the installed CUDA kernels ({lib}) are older than {os.path.relpath(newer[0], csrc_dir())}"
                  "; using a just-in-time build (reinstall to refresh them)", file=sys.stderr, flush=True)
            return False
        load_extension()
        try:
            importlib.import_module(CUDA_MODULE)
        except ImportError as exc:
            print(f"emodarts: the installed CUDA kernels ({lib}) do not load ({exc}); using a just-in-time build",
                  file=sys.stderr, flush=True)
            return False
        return True


def op_defined(name: str) -> bool:
    """Whether the operator `name` ("emodarts::...") is registered in this process."""
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(name, "")
        return True
    except RuntimeError:
        return False


_registered = set()  # forward ops whose fake kernels (and autograd) this process has registered


def load_ops(op_fwd: str, op_bwd: str, source: str, fwd_fake, bwd_fake, backward=None, setup_context=None):
    """torch.ops.emodarts with a forward/backward operator pair ready: the extension loaded (or JIT-built) if
    `op_fwd` is not registered yet, then, once per process, the pair's fake (meta) kernels and, when
    `backward` is given, the forward's autograd formula. A loaded build older than `source` (the file that
    defines the pair) is an error that says how to rebuild."""
    import torch

    if op_fwd in _registered:
        return torch.ops.emodarts
    with _lock:
        if op_fwd not in _registered:
            if not op_defined(op_fwd):
                load_extension()
            if not op_defined(op_fwd):
                raise BackendError(
                    f"the emodarts extension is loaded but has no {op_fwd} operator: it was built from sources "
                    f"older than {source}; rebuild it (pip install --no-build-isolation -e .)"
                )

            def once(register):
                try:
                    register()
                except RuntimeError as exc:  # registered already (e.g. by another module instance)
                    if "already" not in str(exc):
                        raise

            once(lambda: torch.library.register_fake(op_fwd, fwd_fake))
            once(lambda: torch.library.register_fake(op_bwd, bwd_fake))
            if backward is not None:
                once(lambda: torch.library.register_autograd(op_fwd, backward, setup_context=setup_context))
            _registered.add(op_fwd)
    return torch.ops.emodarts


__all__ = ["load_extension", "cpu_sources", "build_dir", "csrc_dir", "BUILD_HINT", "op_defined", "load_ops",
           "cpp_extension", "needs_build", "announce_build", "cuda_sources", "installed_cuda_library",
           "load_installed_cuda", "stale_sources", "CUDA_MODULE"]
