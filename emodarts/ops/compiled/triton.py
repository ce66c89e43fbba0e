"""The Triton kernel modules (kernels/*.py), each loaded once per process from its file (sources.py finds the
folder), under the module name `emodarts_kernels.<name>`. Importing Triton is deferred to the first use, so
the reference backend never needs it."""
import importlib.util
import sys
import threading
from types import ModuleType

from emodarts.ops.compiled.sources import source_dir
from emodarts.runtime.errors import BackendError

MODULE_PREFIX = "emodarts_kernels"
_modules: dict = {}  # name -> loaded module
_lock = threading.Lock()


def triton_kernels(name: str, needed_for: str) -> ModuleType:
    """kernels/<name>.py, loaded once. `needed_for` names what asked, for the error when Triton is missing."""
    if name in _modules:
        return _modules[name]
    try:
        import triton  # noqa: F401
    except Exception as exc:
        raise BackendError(f"{needed_for} needs Triton: {exc}") from exc
    with _lock:
        if name not in _modules:
            path = source_dir("kernels") / f"{name}.py"
            if not path.is_file():
                raise BackendError(f"{needed_for}: the Triton kernel source {path} is missing; reinstall emodarts")
            full = f"{MODULE_PREFIX}.{name}"
            spec = importlib.util.spec_from_file_location(full, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module  # Triton reads the kernels' source through their module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[full]
                raise
            _modules[name] = module
    return _modules[name]
