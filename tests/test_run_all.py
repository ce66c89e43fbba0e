"""bench/run_all.py, the one command of a GPU loan, checked on the CPU: its dry run (every benchmark imported
and its planned arguments parsed by its own parser, the tests collected, the json/md written), its time
limits (a step past its limit is killed with its children, the next steps still run, the budget's end is
never passed), and its results files (rewritten after every step, so a run cut short leaves its results)."""
import importlib.util
import json
import signal
import subprocess
import sys
import time
import types
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
        return [run_all.Step("fast", "tests", [py, "-c", "print('fast ok')"], {"full": 160, "quick": 60}),
                run_all.Step("slow", "tests", [py, "-c", "import time; print('slow', flush=True); time.sleep(60)"],
                             {"full": 160, "quick": 60}),
                run_all.Step("last", "tests", [py, "-c", "print('last ok')"], {"full": 160, "quick": 60})]

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


def test_the_build_is_not_charged_to_the_budget(run_all, tmp_path, monkeypatch):
    """A JIT build that takes 250 s of a 180 s quick budget: it runs under its own limit and the steps after it
    still get their whole shares (the budget's clock starts after the build)."""
    clock = [1000.0]
    monkeypatch.setattr(run_all, "time", types.SimpleNamespace(time=lambda: clock[0]))
    took = {"build": 250.0}
    limits = {}

    def fake_step(step, limit, logs, env):
        limits[step.name] = limit
        clock[0] += took.get(step.name, 1.0)
        return run_all.Outcome(step.name, "x", "ok", took.get(step.name, 1.0), limit)

    monkeypatch.setattr(run_all, "run_step", fake_step)
    assert run_all.main(["--device", "cpu", "--quick", "--results-dir", str(tmp_path)]) == 0
    steps = run_all.plan(types.SimpleNamespace(device="cpu", quick=True, install=False), "x", tmp_path)
    build = next(s for s in steps if s.kind == "build")
    assert limits["build"] == build.min_limit and build.share["quick"] == 0
    first = next(s for s in steps if s.kind != "build")
    assert limits[first.name] == pytest.approx(first.share["quick"])


def test_children_run_unbuffered(run_all, tmp_path):
    assert run_all.build_environment(torch.device("cpu"), tmp_path)["PYTHONUNBUFFERED"] == "1"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="reads /proc")
def test_no_step_outlives_a_terminated_run_all(tmp_path):
    """`timeout` (gpu_check.sh) sends TERM to run_all, not to the step's own process group: run_all kills the
    running step's group before it exits, grandchildren included."""
    pidfile = tmp_path / "grandchild"
    driver = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('ra', {str(ROOT / 'bench' / 'run_all.py')!r})\n"
        "ra = importlib.util.module_from_spec(spec); spec.loader.exec_module(ra)\n"
        "ra.install_signal_handlers()\n"
        f"ra.run_process(['bash', '-c', 'sleep 300 & echo $! > {pidfile}; wait'], 120, "
        f"__import__('pathlib').Path({str(tmp_path / 'log')!r}), dict(os.environ))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT)
    for _ in range(300):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    grandchild = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    time.sleep(0.5)
    stat = Path(f"/proc/{grandchild}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")  # gone, or a zombie awaiting init
