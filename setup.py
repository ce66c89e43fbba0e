"""emodarts: differentiable architecture search for speech emotion recognition.

The C++/CUDA extension `emodarts._C` is built here only when torch is importable at build time
(``pip install --no-build-isolation``); otherwise it is JIT-compiled on first use
(see emodarts/ops/extension.py). torch is deliberately not a build requirement: an isolated
build would pull a second multi-GB torch.
"""
import os
import platform

from setuptools import setup

PACKAGES = ["emodarts", "emodarts.data", "emodarts.ops", "emodarts.kernels"]


def extension_modules():
    """Return ([ext], cmdclass) when torch is importable, else ([], {})."""
    if os.environ.get("EMODARTS_NO_EXT") == "1":
        return [], {}
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    cpu_sources = sorted(
        os.path.join("csrc", f) for f in os.listdir(os.path.join(here, "csrc")) if f.endswith(".cpp")
    )
    if not cpu_sources:
        return [], {}
    # -fopenmp on Linux, as emodarts/ops/extension.py: at::parallel_for forks threads only with it
    openmp = ["-fopenmp"] if platform.system() == "Linux" else []
    ext = cpp_extension.CppExtension(
        "emodarts._C", cpu_sources, extra_compile_args={"cxx": ["-O3", *openmp]}, extra_link_args=openmp
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
linux_x86 = platform.system() == "Linux" and platform.machine() == "x86_64"

setup(
    name="emodarts",
    version="0.1.0",
    description="emoDARTS: joint CNN + sequential differentiable architecture search for speech emotion recognition",
    packages=PACKAGES,
    package_dir={"emodarts.kernels": "kernels"},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.11",
        "torchaudio>=2.11",
        "numpy",
        "librosa",
        "soundfile",
        "click",
        "tqdm",
        "matplotlib",
    ]
    + (["triton"] if linux_x86 else []),
    extras_require={"test": ["pytest", "hypothesis", "ninja"]},
    entry_points={"console_scripts": ["emodarts=emodarts.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
