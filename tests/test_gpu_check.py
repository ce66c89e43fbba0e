"""bench/gpu_check.sh, the GPU loan's one command, checked on the CPU: its dry run writes the planned files
(at most 8, what the device tool brings back) with a row per phase and leaves bench/results as it was; a
budget too small for a phase skips it (recorded) rather than overrunning; bad arguments are refused."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
FILES = {"env.txt", "install.log", "tests_kernels.log", "tests_supernet.log", "cli.log", "run_all.log",
         "bench_results.tgz", "summary.md"}


def results_state():
    folder = ROOT / "bench" / "results"
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def gpu_check(out, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(["bash", str(SCRIPT), *args, str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def rows(out):
    table = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")][1:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}


def test_dry_run_writes_the_planned_files_and_leaves_bench_results_alone(tmp_path):
    before = results_state()
    proc = gpu_check(tmp_path / "out", "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == FILES  # the device tool brings back at most 8 files
    table = rows(out)
    for name in ("env", "install (dry run)", "import _C, _C_cuda (dry run)", "kernel tests (collect)",
                 "supernet tests (collect)", "cli search (help)", "run_all --quick (dry run)", "pack results"):
        assert table[name][0] == "ok", (name, table[name])
    kernels = table["kernel tests (collect)"][3]
    assert "tests collected" in kernels and not kernels.startswith("0/"), kernels
    assert "tests collected" in table["supernet tests (collect)"][3]
    assert "test_gpu_kernels.py" in (out / "tests_kernels.log").read_text()
    assert "test_gpu_supernet.py" in (out / "tests_supernet.log").read_text()
    assert "python" in (out / "env.txt").read_text() and "torch" in (out / "env.txt").read_text()
    assert "validated" in (out / "run_all.log").read_text()
    assert results_state() == before


def test_a_budget_too_small_skips_the_phases_and_still_packs(tmp_path):
    proc = gpu_check(tmp_path / "out", "--dry-run", "--budget", "16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = rows(tmp_path / "out")
    assert table["kernel tests (collect)"][0] == "skipped" and "out of time" in table["kernel tests (collect)"][3]
    assert table["run_all --quick (dry run)"][0] == "skipped"
    assert table["pack results"][0] == "ok" and (tmp_path / "out" / "bench_results.tgz").exists()


@pytest.mark.parametrize("args, message", [(["--budget", "ten"], "whole seconds"), (["--fast"], "unknown option")])
def test_bad_arguments_are_refused(tmp_path, args, message):
    proc = gpu_check(tmp_path / "out", *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
