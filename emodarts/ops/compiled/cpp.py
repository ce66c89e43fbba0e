"""Load the compiled extension `emodarts._C` (C++ CPU ops), JIT-building it if needed, and register the fake
kernels and autograd formulas of its operators (load_ops: what every ops module asks for its operators).
The CUDA kernels (`emodarts._C_cuda`, or their JIT build) are loaded by the sibling
emodarts/ops/compiled/cuda.py, with the build helpers of this module; emodarts/ops/compiled/toolchain.py holds what
setup.py shares with both (the CUDA toolkit lookup, the OpenMP flags).

`pip install --no-build-isolation -e .` builds emodarts._C with the package (setup.py, when torch is importable
at build time), and emodarts._C_cuda too when setup.py's rule says so (a CUDA build of torch, a CUDA toolkit,
and a visible GPU or EMODARTS_CUDA_EXT=1 / TORCH_CUDA_ARCH_LIST; see setup.py). Otherwise `load_extension()`
compiles csrc/*.cpp once with torch.utils.cpp_extension.load into a per-torch-version cache folder
(EMODARTS_EXT_DIR, else $XDG_CACHE_HOME/emodarts or ~/.cache/emodarts) and reuses it in later processes, and
the CUDA kernels are JIT-compiled on first use on a GPU (emodarts.ops.compiled.cuda.ensure_cuda, which
first tries the installed `emodarts._C_cuda`). Either way the operators appear under torch.ops.emodarts (e.g.
torch.ops.emodarts.mixed_sum_fwd).
"""
import contextlib
import glob
import os
import sys
import sysconfig
import threading
from typing import Iterator, List

from emodarts.ops.compiled.sources import source_dir
from emodarts.ops.compiled.toolchain import local_includes, openmp_flags
from emodarts.runtime.errors import BackendError

JIT_NAME = "emodarts_C"
_lock = threading.RLock()  # re-entrant: load_ops holds it while it loads the extension
_module = None

BUILD_HINT = (
    "Build it with `pip install --no-build-isolation -e .` (torch must be installed first), "
    "or install a C++ compiler (g++ or clang) and ninja so that it can be compiled on first use."
)


def csrc_dir() -> str:
    """The C++/CUDA source folder (sources.source_dir: the installed copy or the checkout's)."""
    return str(source_dir("csrc"))


def cpu_sources() -> List[str]:
    """The C++ sources (csrc/*.cpp) that emodarts._C and the JIT build compile."""
    return sorted(glob.glob(os.path.join(csrc_dir(), "*.cpp")))


def build_dir() -> str:
    """The per-torch-version cache folder of the JIT builds (created): a build for another torch would not load."""
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


def needs_build(build_directory: str, name: str, sources: List[str]) -> bool:
    """Whether torch's JIT load will compile rather than load a cached build: no library of `name` in
    `build_directory`, or a source (or a header beside one, or one it includes) newer than it. Only a real
    build is announced."""
    libs = glob.glob(os.path.join(build_directory, f"{name}*.so")) + glob.glob(
        os.path.join(build_directory, f"{name}*.pyd"))
    if not libs:
        return True
    built = max(os.path.getmtime(p) for p in libs)
    folders = {os.path.dirname(s) for s in sources}
    inputs = list(sources) + [h for d in folders for h in glob.glob(os.path.join(d, "*.h"))]
    inputs += [h for s in sources for h in local_includes(s)]
    return any(os.path.getmtime(p) > built for p in inputs if os.path.exists(p))


@contextlib.contextmanager
def build_lock(directory: str) -> Iterator[None]:
    """Held around a JIT build in `directory`: an OS file lock (fcntl.flock), which the kernel releases when its
    holder dies. torch's own lock there is a plain file ('lock', a FileBaton): a build killed at a time limit
    leaves it behind and every later build or load waits on it, silently and forever. Under this lock no
    other emodarts build of the folder runs, so a 'lock' file found there is stale and is removed."""
    os.makedirs(directory, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock alone
        yield
        return
    with open(os.path.join(directory, "emodarts-build.flock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            baton = os.path.join(directory, "lock")
            if os.path.exists(baton):
                print(f"emodarts: removing a stale build lock left by a killed build: {baton}", file=sys.stderr,
                      flush=True)
                os.remove(baton)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
        with build_lock(directory):
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
           "cpp_extension", "needs_build", "announce_build", "build_lock", "local_includes", "openmp_flags"]
