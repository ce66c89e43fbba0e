"""bench/run_all.py, the one command of a GPU loan, checked on the CPU: its dry run (every benchmark imported
and its planned arguments parsed by its own parser, the tests collected, the json/md written), its time
limits (a step past its limit is killed with its children, the next steps still run, the budget's end is
never passed), and its results files (rewritten after every step, so a run cut short leaves its results)."""
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all_under_test", ROOT / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dry_run(tmp_path, *extra):
    res = subprocess.run([sys.executable, "bench/run_all.py", "--dry-run", "--results-dir", str(tmp_path), *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (json_path,) = tmp_path.glob("all_*.json")
    assert json_path.with_suffix(".md").exists()
    return json.loads(json_path.read_text()), res.stdout


def test_dry_run_validates_every_step(tmp_path):
    """The GPU plan (what a loan runs), as `python bench/run_all.py --dry-run --device cuda` on this machine:
    every step validated, the json/md written to the folder given, the summary table printed last."""
    device = "cuda"
    doc, out = dry_run(tmp_path, "--device", device)
    steps = {s["step"]: s for s in doc["steps"]}
    benches = {"bench mixed sum", "bench recurrent", "bench darts", "bench search"}
    assert benches <= set(steps) and "build" in steps
    assert all(s["status"] == "validated" for s in doc["steps"]), [s for s in doc["steps"]
                                                                   if s["status"] != "validated"]
    for name in benches:
        assert steps[name]["detail"][0].startswith("imports; arguments parse"), steps[name]
    if device == "cuda":
        tests = steps["gpu tests"]
        assert "-m gpu" in tests["command"] and "tests/test_gpu_kernels.py" in tests["command"]
        assert "collected" in tests["detail"][0] and "bench search (darts space)" in steps
        assert "--device cuda" in steps["bench darts"]["command"]
    assert doc["budget_s"] == 480 and "dry run" in doc["mode"]
    assert out.strip().splitlines()[-1].startswith("wrote ")
    assert "status" in out and out.index("status") > out.index("run_all:")


def test_dry_run_of_the_cpu_plan(run_all, tmp_path, monkeypatch):
    """The CPU plan's benchmarks parse their arguments too (the tests' collection stubbed: seconds)."""
    monkeypatch.setattr(run_all, "validate_tests", lambda step, env: ["(not collected here)"])
    assert run_all.main(["--dry-run", "--device", "cpu", "--quick", "--results-dir", str(tmp_path)]) == 0
    doc = json.loads(next(tmp_path.glob("all_*.json")).read_text())
    assert [s["status"] for s in doc["steps"]] == ["validated"] * len(doc["steps"]) and len(doc["steps"]) >= 6
    assert "quick" in doc["mode"] and doc["budget_s"] == 180


def test_quick_plan_fits_its_budget(run_all, tmp_path):
    """The shares of every mode add up to its budget; --quick plans fewer tests and no darts-space search."""
    class Args:
        device, install, dry_run = "cuda", False, True

    for quick in (False, True):
        Args.quick = quick
        mode = "quick" if quick else "full"
        steps = run_all.plan(Args, "x", tmp_path)
        assert sum(s.share[mode] for s in steps) == run_all.BUDGET[mode]
    assert run_all.BUDGET["full"] <= 480 and run_all.BUDGET["quick"] <= 180


def test_dry_run_catches_a_bad_benchmark_argument(run_all, tmp_path, monkeypatch):
    """A misspelt size would fail on the loan: the dry run fails on it now."""
    real = run_all.plan

    def bad_plan(args, tag, results):
        steps = real(args, tag, results)
        for s in steps:
            if s.name == "bench mixed sum":
                s.argv = [a if not a.startswith("paper C32") else "paper C33" for a in s.argv]
                s.argv += ["--sizes", "no such size"]
        return steps

    monkeypatch.setattr(run_all, "plan", bad_plan)
    monkeypatch.setattr(run_all, "validate_tests", lambda step, env: ["(not collected here)"])
    assert run_all.main(["--dry-run", "--device", "cuda", "--results-dir", str(tmp_path)]) == 1
    doc = json.loads(next(tmp_path.glob("all_*.json")).read_text())
    bad = [s for s in doc["steps"] if s["status"] == "invalid"]
    assert [s["step"] for s in bad] == ["bench mixed sum"] and "rejected" in bad[0]["detail"][0]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads /proc")
def test_a_step_past_its_limit_is_killed_with_its_children(run_all, tmp_path):
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('child', child.pid, flush=True)\n"
            "time.sleep(60)\n")
    step = run_all.Step("sleeper", "build", [sys.executable, "-c", code], {"full": 1, "quick": 1})
    t0 = time.time()
    o = run_all.run_step(step, 2.0, tmp_path, dict(__import__("os").environ))
    assert o.status == "timed out" and time.time() - t0 < 30
    log = Path(o.log).read_text()
    pid = int(log.split("child")[1].split()[0])
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower() \
        or " Z " in Path(f"/proc/{pid}/stat").read_text()


def test_results_after_every_step_and_the_budget_is_kept(run_all, tmp_path, monkeypatch):
    """Three steps sharing a 6-second budget: the first passes, the second sleeps past its share and is
    killed, the third still runs in what is left; all_<device>.json is rewritten after each step (a run cut
    short keeps what it measured), with every step's status, time and log."""
    py = sys.executable

    def tiny_plan(args, tag, results):
        return [run_all.Step("fast", "build", [py, "-c", "print('fast ok')"], {"full": 160, "quick": 60}),
                run_all.Step("slow", "build", [py, "-c", "import time; print('slow', flush=True); time.sleep(60)"],
                             {"full": 160, "quick": 60}),
                run_all.Step("last", "build", [py, "-c", "print('last ok')"], {"full": 160, "quick": 60})]

    writes = []
    real_write = run_all.write_results

    def counting(results, tag, meta, outcomes):
        writes.append([o.step for o in outcomes])
        return real_write(results, tag, meta, outcomes)

    monkeypatch.setattr(run_all, "plan", tiny_plan)
    monkeypatch.setattr(run_all, "write_results", counting)
    monkeypatch.setattr(run_all, "MIN_STEP", 0.5)
    t0 = time.time()
    rc = run_all.main(["--device", "cpu", "--budget", "6", "--results-dir", str(tmp_path)])
    took = time.time() - t0
    assert rc == 1 and took < 20
    assert writes[:3] == [["fast"], ["fast", "slow"], ["fast", "slow", "last"]]
    doc = json.loads(next(tmp_path.glob("all_*.json")).read_text())
    status = {s["step"]: s["status"] for s in doc["steps"]}
    assert status == {"fast": "ok", "slow": "timed out", "last": "ok"}
    assert doc["elapsed_s"] <= 6 + 3
    slow = next(s for s in doc["steps"] if s["step"] == "slow")
    assert "slow" in Path(slow["log"]).read_text() and slow["limit"] <= 4.5
    md = next(tmp_path.glob("all_*.md")).read_text()
    assert "| slow | timed out |" in md


def test_test_outcomes_are_read_from_pytest_output(run_all):
    text = ("tests/test_a.py::test_x PASSED                 [ 33%]\n"
            "tests/test_a.py::test_y[cuda-1] FAILED         [ 66%]\n"
            "tests/test_b.py::test_z SKIPPED (needs a GPU)  [100%]\n"
            "==== 1 failed, 1 passed, 1 skipped in 3.21s ====\n")
    lines = run_all.summarize_tests(text)
    assert lines[0].startswith("1 failed, 1 passed, 1 skipped") and "pytest: 1 failed" in lines[0]
    assert lines[1] == "FAILED: tests/test_a.py::test_y[cuda-1]"
    cut = run_all.summarize_tests(text.rsplit("\n", 2)[0])
    assert "cut off" in cut[0]


def test_gpu_environment_gets_the_arch_and_the_toolkit(run_all, tmp_path, monkeypatch):
    """TORCH_CUDA_ARCH_LIST from the visible GPU's capability and CUDA_HOME from the toolkit, when unset."""
    from emodarts.ops.compiled import cuda as compiled_cuda

    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (9, 0))
    monkeypatch.setattr(compiled_cuda, "cuda_home", lambda: "/opt/cuda-x")
    env = run_all.build_environment(torch.device("cuda"), tmp_path)
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["CUDA_HOME"] == "/opt/cuda-x"
    assert env["EMODARTS_BENCH_RESULTS"] == str(tmp_path) and "TRITON_INTERPRET" not in env
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert run_all.build_environment(torch.device("cuda"), tmp_path)["TORCH_CUDA_ARCH_LIST"] == "8.0"
