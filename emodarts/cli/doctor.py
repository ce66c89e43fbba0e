"""`emodarts doctor`: what this machine offers the engine, and what to do about anything missing."""
import importlib
import os
import shutil
from typing import List, Optional, Tuple

Check = Tuple[str, bool, str, str]  # (component, ok, what was found, what to do)


def _version(module: str) -> Tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # torchaudio raises OSError, not ImportError, beside a mismatched torch
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return True, getattr(mod, "__version__", "installed")


def checks() -> List[Check]:
    import torch

    out: List[Check] = [("torch", True, f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})", "")]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        out.append(("CUDA device", True, names, ""))
    else:
        out.append(("CUDA device", False, "none visible", "GPU runs need a CUDA device; the CPU runs everything else"))
    ok, found = _version("triton")
    if ok:
        mode = "interpreter (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" else "compiled"
        found = f"{found}, {mode}"
    out.append(("triton", ok, found, "" if ok else "pip install triton (Linux x86_64) for the fused CUDA mixed sum"))
    out.append(_extension_check())
    out.append(_cuda_kernels_check(torch.cuda.is_available()))
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                    if os.environ.get("CUDA_HOME") else None)
    out.append(("nvcc", bool(nvcc and os.path.exists(nvcc)), nvcc or "not found",
                "" if nvcc else "needed only to build the extension's CUDA part; set CUDA_HOME"))
    for module, why in (("librosa", "feature extraction (MFCC); without it runs need cached features"),
                        ("torchaudio", "the batched --backend torchaudio feature path"),
                        ("soundfile", "reading audio")):
        ok, found = _version(module)
        out.append((module, ok, found, "" if ok else f"pip install {module}: {why}"))
    return out


def _extension_check() -> Check:
    from emodarts.runtime.errors import BackendError

    try:
        from emodarts.ops.compiled.cpp import load_extension

        mod = load_extension()
    except BackendError as exc:
        return ("C++ extension (CPU)", False, str(exc).splitlines()[0][:160],
                "pip install --no-build-isolation -e . (or install g++ and ninja for a build on first use)")
    except Exception as exc:  # pragma: no cover - an unexpected build failure is still reported
        return ("C++ extension (CPU)", False, f"{type(exc).__name__}: {exc}"[:160], "see the error above")
    import torch

    try:
        threads = torch.ops.emodarts.mixed_sum_cpu_info()  # instruction set and thread pool of the C++ ops
    except Exception:  # pragma: no cover - an older build without the query
        threads = "threads unknown"
    return ("C++ extension (CPU)", True, f"{getattr(mod, '__file__', 'loaded')} ({threads})", "")


def _cuda_kernels_check(has_cuda: bool) -> Check:
    name = "CUDA kernels (fused)"
    if not has_cuda:
        return (name, False, "not built: no CUDA device here",
                "they build on a GPU machine on first use (python bench/run_all.py builds and tests them)")
    try:
        from emodarts.ops import darts_rnn, grouped_recurrent, mixed_sum

        grouped_recurrent.ensure_cuda()
        darts_rnn.ensure_cuda()
        mixed_sum.kernels_module()
    except Exception as exc:
        return (name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:140]}",
                "set CUDA_HOME to the CUDA toolkit and install triton")
    return (name, True, "grouped recurrent layer and DARTS cell built, Triton mixed sum importable", "")


def _row(rows: List[Check], name: str) -> Check:
    return next((r for r in rows if r[0] == name), (name, False, "not checked", ""))


def unmet(rows: List[Check], device: Optional[str] = None, fused: bool = False) -> List[str]:
    """What the user asked `doctor` for (a --device, the --fused kernels for it) that this machine cannot
    give, one line each; empty when everything asked for is there (doctor then exits 0)."""
    from emodarts.ops.backend import check_device
    from emodarts.runtime.errors import BackendError

    out = []
    if device:
        try:
            check_device(device)
        except BackendError as exc:
            out.append(str(exc))
    if fused:
        cuda = bool(device) and device.startswith("cuda")
        needed = ("triton", "CUDA kernels (fused)") if cuda else ("C++ extension (CPU)",)
        for name in needed:
            _, ok, found, _ = _row(rows, name)
            if not ok:
                out.append(f"--fused on {'cuda' if cuda else 'cpu'} needs the {name}: {found}")
    return out


def format_checks(rows: List[Check]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = []
    for name, ok, found, todo in rows:
        lines.append(f"{'ok ' if ok else '-- '} {name:<{width}}  {found}")
        if todo:
            lines.append(f"    {'':<{width}}  -> {todo}")
    return "\n".join(lines)
