"""The package as a user installs it: a wheel built from the checkout, installed into an empty folder, used with
nothing of the checkout on sys.path: every module imports, the Triton kernel sources load, and the C++
extension JIT-builds from the sources the wheel ships (emodarts/ops/compiled/sources.py)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: the editable install's finder (and the checkout on sys.path) are taken away, the
# installed folder is put first, and the script reports what it imported from where.
PROBE = textwrap.dedent(r"""
    import importlib, json, os, pkgutil, sys
    target, root = sys.argv[1], sys.argv[2]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", type(f).__module__)]
    sys.path[:] = [target] + [p for p in sys.path if p and not os.path.abspath(p).startswith(root)]
    import torch  # noqa: F401  (the extension links against it)
    import emodarts
    out = {"package": emodarts.__file__, "modules": {}, "errors": {}}
    for info in pkgutil.walk_packages(emodarts.__path__, "emodarts."):
        if info.name == "emodarts._C":
            continue  # the wheel is built without its ahead-of-time extension (EMODARTS_NO_EXT=1)
        try:
            out["modules"][info.name] = importlib.import_module(info.name).__file__
        except Exception as exc:
            out["errors"][info.name] = repr(exc)
    from emodarts.ops.compiled import cpp, sources
    out["csrc"] = str(sources.source_dir("csrc"))
    out["kernels"] = str(sources.source_dir("kernels"))
    out["cpu_sources"] = cpp.cpu_sources()
    if sys.argv[3] == "build":
        cpp.load_extension()
        x = [torch.randn(2, 3, 4, 5) for _ in range(3)]
        alpha = torch.randn(2, 4)
        from emodarts.ops.mixed_sum import mixed_sum_cpp, mixed_sum_reference
        index = [(0, 1), (1, 2), (1, 3)]
        out["mixed_sum_error"] = float((mixed_sum_cpp(x, alpha, index) - mixed_sum_reference(x, alpha, index)).abs().max())
        out["ops_from"] = torch.ops.emodarts.mixed_sum_fwd.default._schema.name
    try:
        import triton  # noqa: F401
        from emodarts.ops.compiled.triton import triton_kernels
        out["triton_kernels"] = triton_kernels("mixed_sum", "the wheel test").__file__
    except ImportError:
        pass
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The checkout built into a wheel (no build isolation, no ahead-of-time extension) and installed, without
    dependencies, into an empty folder."""
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    # from a copy of the sources, so that no build/ folder of an earlier build (setuptools reuses it) leaks in
    source = tmp_path_factory.mktemp("source") / "emodarts"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "*.so",
                                                                "runs", "results", ".pytest_cache"))
    env = {**os.environ, "EMODARTS_NO_EXT": "1"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                            str(source)], capture_output=True, text=True, env=env, cwd=wheels)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("emodarts-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, cwd=wheels)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return target


def _probe(target: Path, tmp_path: Path, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EMODARTS_EXT_DIR")}
    env["EMODARTS_EXT_DIR"] = str(tmp_path / "ext")  # a build of its own, from the installed sources
    run = subprocess.run([sys.executable, "-c", PROBE, str(target), str(ROOT), mode], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_wheel_installs_every_module_and_the_sources(installed, tmp_path):
    got = _probe(installed, tmp_path, "import")
    assert got["errors"] == {}
    assert Path(got["package"]).is_relative_to(installed)
    assert all(Path(f).is_relative_to(installed) for f in got["modules"].values()), got["modules"]
    # every subpackage of the checkout is in the wheel (the omission that once broke `import emodarts.cli`)
    checkout = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                for p in (ROOT / "emodarts").rglob("*.py")}
    assert checkout - {"emodarts"} <= set(got["modules"]), sorted(checkout - set(got["modules"]))
    assert "emodarts.cli.commands" in got["modules"] and "emodarts.features.extract" in got["modules"]
    assert Path(got["csrc"]) == installed / "emodarts" / "csrc"
    assert Path(got["kernels"]) == installed / "emodarts" / "kernels"
    shipped = sorted(Path(p).name for p in got["cpu_sources"])
    assert shipped == sorted(p.name for p in (ROOT / "csrc").glob("*.cpp"))
    for header in (ROOT / "csrc").glob("*.h"):
        assert (installed / "emodarts" / "csrc" / header.name).read_bytes() == header.read_bytes()
    for cu in (ROOT / "csrc" / "cuda").iterdir():
        assert (installed / "emodarts" / "csrc" / "cuda" / cu.name).read_bytes() == cu.read_bytes()
    if "triton_kernels" in got:
        assert Path(got["triton_kernels"]) == installed / "emodarts" / "kernels" / "mixed_sum.py"


def test_wheel_builds_the_cpp_extension_from_its_own_sources(installed, tmp_path):
    got = _probe(installed, tmp_path, "build")
    assert got["ops_from"] == "emodarts::mixed_sum_fwd"
    assert got["mixed_sum_error"] < 1e-5
    built = list((tmp_path / "ext").rglob("*.so"))
    assert built, "the JIT build wrote no library"
    ninja = next((tmp_path / "ext").rglob("build.ninja")).read_text()
    assert str(installed / "emodarts" / "csrc" / "mixed_sum.cpp") in ninja and str(ROOT / "csrc") not in ninja
