"""csrc/ compiled against another torch's headers (the GPU machine's torch 2.11) with that torch's extension
builder's flags: its C++ standard (read from its torch/utils/cpp_extension.py: torch 2.11 passes -std=c++17,
while this machine's torch 2.14 headers demand C++20), its NVCC flags and an sm_90 (Hopper) target. A
mismatch would otherwise show only when a GPU loan's install builds the extension.

Needs EMODARTS_TORCH_HEADERS: a folder holding an unpacked torch wheel's torch/include, torch/version.py and
torch/utils/cpp_extension.py (README.md, "Compiling against the GPU machine's torch", says how to get them);
skipped, with that reason, where it is unset. The .cu sources also need nvcc."""
import ast
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADERS = os.environ.get("EMODARTS_TORCH_HEADERS")
CPP = sorted((ROOT / "csrc").glob("*.cpp"))
CU = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
pytestmark = pytest.mark.skipif(
    not HEADERS or not (Path(HEADERS) / "torch" / "include" / "torch" / "extension.h").is_file(),
    reason="set EMODARTS_TORCH_HEADERS to an unpacked torch wheel (torch/include, torch/utils/cpp_extension.py, "
           "torch/version.py): README.md, 'Compiling against the GPU machine's torch'")


def builder_flags(root: Path):
    """(C++ standard flag, NVCC flags, version) as that torch's torch/utils/cpp_extension.py states them."""
    text = (root / "torch" / "utils" / "cpp_extension.py").read_text()
    std = re.search(r"common_cflags \+= \['(-std=c\+\+\d+)'", text)
    nvcc = next(ast.literal_eval(node.value) for node in ast.parse(text).body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMON_NVCC_FLAGS"
                                                        for t in node.targets))
    version = re.search(r"__version__ = '([^']+)'", (root / "torch" / "version.py").read_text()).group(1)
    assert std, "the builder's C++ standard flag was not found in cpp_extension.py"
    return std.group(1), nvcc, version


def includes(root: Path, name: str):
    inc = root / "torch" / "include"
    return ["-DTORCH_API_INCLUDE_EXTENSION_H", f"-DTORCH_EXTENSION_NAME={name}", "-D_GLIBCXX_USE_CXX11_ABI=1",
            "-isystem", str(inc), "-isystem", str(inc / "torch" / "csrc" / "api" / "include"),
            "-isystem", sysconfig.get_paths()["include"]]


def run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-6000:]}"


@pytest.mark.parametrize("source", CPP, ids=lambda p: p.name)
def test_cpp_source_compiles_with_that_torchs_flags(source):
    std, _, version = builder_flags(Path(HEADERS))
    cxx = os.environ.get("CXX", "g++")
    run([cxx, *includes(Path(HEADERS), "_C"), std, "-fPIC", "-O1", "-fopenmp", "-c", str(source), "-o", os.devnull])
    print(f"{source.name}: compiles against torch {version} with {std}")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("source", CU, ids=lambda p: p.name)
def test_cuda_source_compiles_for_hopper_with_that_torchs_flags(source):
    std, nvcc_flags, version = builder_flags(Path(HEADERS))
    run(["nvcc", *includes(Path(HEADERS), "_C_cuda"), *nvcc_flags, "--compiler-options", "-fPIC", std,
         "-gencode=arch=compute_90,code=sm_90", "-O1", "-c", str(source), "-o", os.devnull])
    print(f"{source.name}: compiles for sm_90 against torch {version} with {std}")


def test_the_builder_flags_are_read():
    """Holds the parsing to what torch 2.11's builder was seen to pass (see the module docstring)."""
    std, nvcc_flags, version = builder_flags(Path(HEADERS))
    assert std.startswith("-std=c++") and "--expt-relaxed-constexpr" in nvcc_flags and version[0].isdigit()
    if version.startswith("2.11."):
        assert std == "-std=c++17"
