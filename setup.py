"""emodarts: differentiable architecture search for speech emotion recognition.

Compiled parts, built here only when torch is importable at build time, i.e. with
``pip install --no-build-isolation [-e] .`` against the torch already installed (torch is deliberately not a
build requirement: an isolated build would pull a second multi-GB torch). A plain ``pip install -e .`` builds
in isolation, finds no torch and builds nothing; then everything is JIT-compiled on first use
(emodarts/ops/compiled/cpp.py for the C++ part, emodarts/ops/compiled/cuda.py for the CUDA part).

- ``emodarts._C``: the C++ CPU ops (csrc/*.cpp). Built whenever torch is importable.
- ``emodarts._C_cuda``: the CUDA kernels of the grouped recurrent layer and of the DARTS cell
  (csrc/cuda/*.cu). Built when all of these hold:
    * torch is a CUDA build (torch.version.cuda is not None),
    * a CUDA toolkit is found (CUDA_HOME, CUDA_PATH, /usr/local/cuda or nvcc on the PATH, holding bin/nvcc
      and include/cuda_runtime.h: emodarts/ops/compiled/toolchain.py, which the JIT build uses too),
    * EMODARTS_NO_CUDA_EXT is not set,
    * and a GPU is visible (torch.cuda.is_available()), or it is asked for explicitly with
      EMODARTS_CUDA_EXT=1 or a TORCH_CUDA_ARCH_LIST. An nvcc build takes minutes on a small machine, so an
      install on a machine without a GPU never compiles CUDA unless asked to.
  Without a visible GPU the build targets TORCH_CUDA_ARCH_LIST (9.0, Hopper, when unset). When it is not
  built here, the CUDA kernels are JIT-compiled on first use on a GPU (35-80 s).

EMODARTS_NO_EXT=1 skips both extensions.
"""
import importlib.util
import os
import platform

from setuptools import find_packages, setup

# The sources the JIT builds and the Triton loader read travel inside the package (emodarts/ops/compiled/sources.py
# finds them there in an installed wheel, or beside the package in a checkout): csrc/ as emodarts/csrc and
# kernels/ as emodarts/kernels, data folders that are never imported as packages.
SOURCE_PACKAGES = {"emodarts.csrc": "csrc", "emodarts.csrc.cuda": "csrc/cuda", "emodarts.kernels": "kernels"}
SOURCE_FILES = {"emodarts.csrc": ["*.cpp", "*.h"], "emodarts.csrc.cuda": ["*.cu", "*.cuh"], "emodarts.kernels": ["*.py"]}
HERE = os.path.dirname(os.path.abspath(__file__))


def _load_toolchain():
    """emodarts/ops/compiled/toolchain.py loaded by its path (standard library only): the CUDA toolkit lookup, the
    default GPU target and the OpenMP flags the JIT builds use too, without importing the package."""
    spec = importlib.util.spec_from_file_location(
        "emodarts_toolchain_for_setup", os.path.join(HERE, "emodarts", "ops", "compiled", "toolchain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toolchain = _load_toolchain()
find_cuda_home = toolchain.find_cuda_home  # the rule of the module docstring (tests call it from here)


def cuda_extension_wanted(environ, torch_cuda_version, cuda_home, gpu_visible):
    """(build emodarts._C_cuda?, why): the rule of the module docstring, as a pure function."""
    if environ.get("EMODARTS_NO_CUDA_EXT"):
        return False, "EMODARTS_NO_CUDA_EXT is set"
    if torch_cuda_version is None:
        return False, "torch is not a CUDA build"
    if cuda_home is None:
        return False, "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    if gpu_visible:
        return True, "a GPU is visible"
    if environ.get("EMODARTS_CUDA_EXT") == "1":
        return True, "EMODARTS_CUDA_EXT=1"
    if environ.get("TORCH_CUDA_ARCH_LIST"):
        return True, f"TORCH_CUDA_ARCH_LIST={environ['TORCH_CUDA_ARCH_LIST']}"
    return False, ("no GPU visible (set EMODARTS_CUDA_EXT=1 or TORCH_CUDA_ARCH_LIST to build the CUDA kernels "
                   "anyway; otherwise they are JIT-compiled on first use on a GPU)")


def _sources(folder, suffix):
    return sorted(os.path.join(folder, f) for f in os.listdir(os.path.join(HERE, folder)) if f.endswith(suffix))


def extension_modules():
    """([extensions], cmdclass): emodarts._C when torch is importable, plus emodarts._C_cuda when
    cuda_extension_wanted says so; ([], {}) without torch."""
    if os.environ.get("EMODARTS_NO_EXT") == "1":
        return [], {}
    try:
        import torch
    except ImportError:
        return [], {}
    cpu_sources = _sources("csrc", ".cpp")
    if not cpu_sources:
        return [], {}
    home = find_cuda_home()
    want_cuda, why = cuda_extension_wanted(os.environ, torch.version.cuda, home, torch.cuda.is_available())
    if want_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported (and guesses from `which nvcc` alone,
        # wrong when nvcc is a wrapper script); without a GPU, nvcc needs an explicit target
        os.environ["CUDA_HOME"] = home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = toolchain.DEFAULT_CUDA_ARCH_LIST
    try:
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    # -fopenmp on Linux, as the JIT build: at::parallel_for forks threads only with it
    openmp = toolchain.openmp_flags()
    exts = [cpp_extension.CppExtension(
        "emodarts._C", cpu_sources, extra_compile_args={"cxx": ["-O3", *openmp]}, extra_link_args=openmp
    )]
    print(f"emodarts: building emodarts._C; emodarts._C_cuda {'too' if want_cuda else 'not'} ({why})", flush=True)
    if want_cuda:
        # the .cu files only register CUDA kernels (TORCH_LIBRARY_IMPL) for the operators emodarts._C defines;
        # csrc/extension.cpp gives the library its module init, so `import emodarts._C_cuda` loads it
        exts.append(cpp_extension.CUDAExtension(
            "emodarts._C_cuda", _sources(os.path.join("csrc", "cuda"), ".cu") + [os.path.join("csrc", "extension.cpp")],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
        ))
    return exts, {"build_ext": recording_build_ext(cpp_extension.BuildExtension.with_options(use_ninja=True))}


def recording_build_ext(base):
    """build_ext that also writes, beside emodarts._C_cuda, the digest of the CUDA sources it compiled
    (toolchain.sources_digest): the loader compares it with the sources present, where file times would call a
    fresh copy of the tree newer than its build."""

    class RecordingBuildExt(base):
        def build_extension(self, ext):
            super().build_extension(ext)
            if ext.name == "emodarts._C_cuda":
                cu = [os.path.join(HERE, s) for s in ext.sources if s.endswith(".cu")]
                record = toolchain.digest_record(self.get_ext_fullpath(ext.name), ext.name)
                with open(record, "w") as fh:
                    fh.write(toolchain.sources_digest(cu, os.path.join(HERE, "csrc")) + "\n")

        def copy_extensions_to_source(self):
            """--inplace and editable installs: the record goes into the source tree with the library."""
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for ext in self.extensions:
                inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
                record = toolchain.digest_record(regular_file, ext.name)
                if os.path.exists(record):
                    self.copy_file(record, toolchain.digest_record(inplace_file, ext.name), level=self.verbose)

    return RecordingBuildExt


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import its functions
    ext_modules, cmdclass = extension_modules()
    linux_x86 = platform.system() == "Linux" and platform.machine() == "x86_64"

    setup(
        name="emodarts",
        version="0.1.0",
        description="emoDARTS: joint CNN + sequential differentiable architecture search for speech emotion recognition",
        packages=find_packages(include=["emodarts", "emodarts.*"]) + list(SOURCE_PACKAGES),
        package_dir=SOURCE_PACKAGES,
        package_data=SOURCE_FILES,
        python_requires=">=3.10",
        install_requires=[
            "torch>=2.11",
            "torchaudio>=2.11",
            "numpy",
            "librosa",
            "soundfile",
            "click",
            "pyyaml",
            "tqdm",
            "matplotlib",
            "safetensors",
            "tensorboard",
        ]
        + (["triton"] if linux_x86 else []),
        extras_require={"export": ["onnx", "onnxruntime"],  # `emodarts export` to ONNX, and checking it
                        "test": ["pytest", "hypothesis", "ninja", "setuptools>=70.1", "onnx", "onnxruntime"]},
        entry_points={"console_scripts": ["emodarts=emodarts.cli.commands:main"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
