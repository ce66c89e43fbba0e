"""One command for a short GPU loan: build, run every GPU test, then every benchmark, within a time budget,
writing the results after every step and a summary table last.

    python bench/run_all.py                    # GPU: at most 8 minutes on an H100/H200 (--budget 480)
    python bench/run_all.py --quick            # about 3 minutes (--budget 180): fewer repeats and sizes
    python bench/run_all.py --install          # first `pip install --no-deps --no-build-isolation -e .`
    python bench/run_all.py --dry-run --results-dir /tmp/r   # any machine, seconds: checks this script

On a fresh GPU machine (no package registry) install with `pip install --no-deps --no-build-isolation -e .`
(it builds emodarts._C and, with a GPU visible, emodarts._C_cuda; see setup.py), or pass --install; without
an installed build the first step JIT-compiles the extension (a minute or two). The install and the build run
under limits of their own (600 s, 300 s) and are not charged to the budget: its clock starts after them.
bench/gpu_check.sh runs this script with --quick as the last phase of a GPU loan.

Steps, in order, each in its own process group (inside run_all's session: a TERM, INT or HUP to run_all kills
the running step's group before run_all exits, so no step outlives it) with a time limit: build (load or JIT-
build the C++ extension, the CUDA kernels and Triton; TORCH_CUDA_ARCH_LIST is set from the visible GPU's
capability and CUDA_HOME from the toolkit found, when unset), the GPU tests (`pytest -m gpu`, the issue-13
files first), the Triton tests that run on the GPU when one is there (tests/test_mixed_sum.py -k triton), then
the benchmarks (mixed sum, recurrent layer, DARTS cell with its peak memory at H=1024, T=B=128, search step in
both sequential spaces). Each step's limit is its share of the budget plus what earlier steps left unused,
never past the budget's end; a step that fails or runs out of time is recorded and the next one runs (a loan
is never wasted on one broken step). After every step bench/results/all_<device>.json and all_<device>.md are
rewritten (so a run cut short still leaves what it measured) with every step's status, time and log tail, the
test outcomes and the benchmarks' key figures; the benchmarks write their own JSON beside them
(<name>_<device>.json) and every step's full output goes to all_<device>_logs/<step>.log.

--dry-run (what tests/test_run_all.py runs, on the CPU, in seconds): lists the steps, imports every
benchmark and parses the exact arguments the real run would pass with its own parser (a misspelt option or
size fails here, not on the loan), collects the GPU tests, writes the json/md to --results-dir and exits 0
when everything checks out.
"""
import argparse
import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path[:0] = [str(ROOT), str(BENCH)]

import common  # noqa: E402

BUDGET = {"full": 480, "quick": 180}  # seconds, everything included
# the issue-13 GPU tests first: the most to learn per second of a loan
GPU_TEST_FILES = ["tests/test_gpu_kernels.py", "tests/test_gpu_supernet.py", "tests/test_darts_kernel.py",
                  "tests/test_grouped_recurrent.py", "tests/test_mixed_sum.py"]
TAIL = 3000
MIN_STEP = 5.0  # seconds: a step with less time left than this is skipped, not started


@dataclass
class Step:
    name: str
    kind: str  # build | tests | bench
    argv: List[str]
    share: Dict[str, int]  # seconds of the budget, per mode
    module: Optional[str] = None  # bench: the script's module name (bench/<module>.py), for the dry run
    result: Optional[str] = None  # bench: the JSON it writes (a path)
    summarize: Optional[Callable[[dict], List[str]]] = None
    min_limit: int = 0  # build steps: their time limit (they are not charged to the budget)


@dataclass
class Outcome:
    step: str
    command: str
    status: str = "pending"  # ok | failed | timed out | skipped | validated | invalid
    seconds: float = 0.0
    limit: float = 0.0
    detail: List[str] = field(default_factory=list)
    tail: str = ""
    log: Optional[str] = None


# --------------------------------------------------------------------------------------------------
# the plan


def device_tag(dev: torch.device) -> str:
    return re.sub(r"[^a-z0-9]+", "-", common.device_name(dev).lower()).strip("-") or dev.type


def plan(args, tag: str, results: Path) -> List[Step]:
    py = sys.executable
    dev = args.device
    gpu = torch.device(dev).type == "cuda"
    quick = args.quick
    steps: List[Step] = []
    if args.install:
        steps.append(Step("install", "build", [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                               "-e", "."], {"full": 0, "quick": 0}, min_limit=600))
    build_code = (
        "import time, importlib.util; t0 = time.time()\n"
        "from emodarts.ops.compiled import cpp as ext\n"
        "cpu = 'installed' if importlib.util.find_spec('emodarts._C') else 'JIT'\n"
        "ext.load_extension(); print(f'C++ extension: {cpu} ({time.time() - t0:.0f} s)', flush=True)\n"
        "import torch\n"
        "if torch.cuda.is_available():\n"
        "    from emodarts.ops import darts_rnn, mixed_sum, grouped_recurrent as g\n"
        "    from emodarts.ops.compiled import cuda\n"
        "    t1 = time.time(); how = 'installed' if cuda.load_installed_cuda() else 'JIT'\n"
        "    g.ensure_cuda(); darts_rnn.ensure_cuda(); mixed_sum.kernels_module()\n"
        "    print(f'CUDA kernels: {how} ({time.time() - t1:.0f} s); triton ok', flush=True)\n"
        "print('build ok', flush=True)\n"
    )
    steps.append(Step("build", "build", [py, "-c", build_code], {"full": 0, "quick": 0}, min_limit=300))
    pytest = [py, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider"]
    if gpu:
        files = GPU_TEST_FILES if not quick else GPU_TEST_FILES[:2]
        steps.append(Step("gpu tests", "tests", pytest + ["-m", "gpu"] + files + ([] if quick else ["tests/"]),
                          {"full": 200, "quick": 75}))
        if not quick:
            steps.append(Step("triton tests on the GPU", "tests",
                              pytest + ["-m", "not gpu", "-k", "triton", "tests/test_mixed_sum.py"],
                              {"full": 30, "quick": 0}))
    else:
        steps.append(Step("fused-kernel tests (CPU)", "tests",
                          pytest + ["-x", "tests/test_mixed_sum.py", "tests/test_grouped_recurrent.py",
                                    "tests/test_darts_kernel.py", "tests/test_gpu_readiness.py"],
                          {"full": 200, "quick": 75}))

    def out(name):
        return str(results / f"{name}_{tag}.json")

    if gpu:
        mixed = (["--ks", "8", "--sizes", "paper C32 (16,32,64,64)", "--reps", "10", "--warmup", "2", "--no-compile"]
                 if quick else ["--ks", "2", "8", "16", "--sizes", "paper C32 (16,32,64,64)", "64MB (16,64,128,128)",
                                "--reps", "20"])
        recurrent = (["--presets", "paper", "--scopes", "cell", "--impls", "loop,grouped", "--repeats", "3",
                      "--warmup", "1"] if quick else
                     ["--presets", "tiny,paper", "--scopes", "source,cell", "--impls", "loop,compile,grouped",
                      "--repeats", "5", "--warmup", "2"])
        darts = (["--presets", "paper", "--impls", "reference,fused", "--modes", "fwd+bwd", "--quick"] if quick else
                 ["--presets", "tiny,paper", "--impls", "reference,compile,fused", "--repeats", "5"])
        search = ["--presets", "tiny" if quick else "tiny,paper", "--modes", "reference,fused", "--no-growth",
                  "--quick"] + (["--in-process"] if quick else [])
        rate = (["--scope", "edge", "--repeats", "3", "--warmup", "1", "--no-reference"] if quick else
                ["--scope", "source", "--dtypes", "float32,bfloat16", "--repeats", "5", "--warmup", "2"])
    else:  # a CPU check of the same steps, small
        mixed = ["--ks", "8", "--sizes", "tiny (16,8,20,24)", "--reps", "5", "--warmup", "1", "--no-compile"]
        recurrent = ["--presets", "tiny", "--scopes", "edge", "--impls", "loop,grouped", "--repeats", "3",
                     "--warmup", "1"]
        darts = ["--presets", "tiny", "--impls", "reference,fused", "--quick"]
        search = ["--presets", "tiny", "--modes", "reference,fused", "--no-growth", "--quick"]
        rate = ["--scope", "edge", "--repeats", "3", "--warmup", "1", "--no-reference"]
    devarg = ["--device", torch.device(dev).type]
    steps += [
        Step("bench mixed sum", "bench", [py, "bench/bench_mixed_sum.py", *devarg, *mixed, "--out", out("mixed_sum")],
             {"full": 40, "quick": 15}, "bench_mixed_sum", out("mixed_sum"), summarize_mixed_sum),
        Step("bench recurrent", "bench", [py, "bench/bench_recurrent.py", *devarg, *recurrent, "--out",
                                          out("recurrent")],
             {"full": 40, "quick": 15}, "bench_recurrent", out("recurrent"), summarize_recurrent),
        Step("bench recurrent rate", "bench", [py, "bench/bench_recurrent_rate.py", *devarg, *rate, "--out",
                                               out("recurrent_rate")],
             {"full": 15, "quick": 10}, "bench_recurrent_rate", out("recurrent_rate"), summarize_recurrent_rate),
        Step("bench darts", "bench", [py, "bench/bench_darts.py", *devarg, *darts, "--out", out("darts")],
             {"full": 65, "quick": 25}, "bench_darts", out("darts"), summarize_darts),
        Step("bench search", "bench", [py, "bench/bench_search.py", *devarg, *search],
             {"full": 60, "quick": 40}, "bench_search", str(results / f"search_{torch.device(dev).type}.json"),
             summarize_search),
    ]
    if not quick:
        steps.append(Step("bench search (darts space)", "bench",
                          [py, "bench/bench_search.py", *devarg, *search, "--seq-space", "darts"],
                          {"full": 30, "quick": 0}, "bench_search",
                          str(results / f"search_{torch.device(dev).type}_darts.json"), summarize_search))
    return steps


# --------------------------------------------------------------------------------------------------
# key figures of each benchmark (robust: a missing field gives a shorter summary, not an error)


def summarize_mixed_sum(doc: dict) -> List[str]:
    lines = []
    for r in doc.get("results", []):
        if r.get("impl") == "fused" and r.get("mode") == "fwd+bwd":
            lines.append(f"{r['size']} K={r['k']}: fused fwd+bwd {r['ms']:.3f} ms, {r['gbps']:.0f} GB/s "
                         f"({100 * r['gbps'] / r['copy_gbps']:.0f}% of copy), x{r.get('speedup_vs_eager') or 0:.2f} "
                         f"vs eager" + (f", x{r['speedup_vs_compile']:.2f} vs compile"
                                        if r.get("speedup_vs_compile") == r.get("speedup_vs_compile")
                                        and r.get("speedup_vs_compile") else ""))
    return lines


def summarize_recurrent(doc: dict) -> List[str]:
    out = []
    for r in doc.get("rows", []):
        t = r.get("times", {})
        figures = ", ".join(f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in t.items())
        ratios = ", ".join(f"{k} x{v:.2f}" for k, v in r.get("speedup", {}).items())
        out.append(f"{r['preset']} {r['scope']} {r['mode']}: {figures} ({ratios})")
    return out


def summarize_darts(doc: dict) -> List[str]:
    out = []
    for r in doc.get("rows", []):
        t = r.get("times", {})
        figures = ", ".join(f"{k} {v['median_s'] * 1e3:.2f} ms" for k, v in t.items())
        ratios = ", ".join(f"{k} x{v:.2f}" for k, v in r.get("speedup", {}).items())
        out.append(f"{r['preset']} {r['mode']}: {figures} ({ratios})")
    m = doc.get("memory")
    if m:
        out.append(f"memory H={m['H']} S={m['S']} T={m['T']} B={m['B']}: fused fwd+bwd peak "
                   f"{m['peak_bytes'] / 2**30:.2f} GiB ({m['peak_above_inputs_bytes'] / 2**30:.2f} GiB above the "
                   f"inputs), {m['median_s'] * 1e3:.0f} ms")
    return out


def summarize_recurrent_rate(doc: dict) -> List[str]:
    out = []
    for run in doc.get("runs", []):
        figures = ", ".join(f"{r['pass']} {r['gflops']:.0f} GFLOP/s ({100 * r['share_of_gemm']:.0f}%)"
                            for r in run.get("rows", []))
        out.append(f"{doc.get('scope')} {run.get('dtype')}: {figures} of a plain product's "
                   f"{run.get('gemm_gflops', 0):.0f} GFLOP/s")
    return out


def summarize_search(doc: dict) -> List[str]:
    out = []
    for r in doc.get("rows", []):
        order = "2nd" if r.get("second_order") else "1st"
        if "error" in r:
            out.append(f"{r['preset']} {order} {r['mode']}: error: {str(r['error'])[:120]}")
        else:
            peak = "n/a" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.0f} MB"
            out.append(f"{r['preset']} {order} {r['mode']}: {r['seconds'] * 1e3:.1f} ms/step, peak {peak}, "
                       f"x{r.get('speedup_vs_reference', float('nan')):.2f} vs ref")
    return out


TEST_LINE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
SUMMARY_LINE = re.compile(r"^=+ (.*(passed|failed|skipped|error|deselected).*) in [\d.]+s.*=+$")


def summarize_tests(text: str) -> List[str]:
    outcomes: Dict[str, str] = {}
    for line in text.splitlines():
        m = TEST_LINE.match(line.strip())
        if m:
            outcomes[m.group(1)] = m.group(2)
    counts: Dict[str, int] = {}
    for v in outcomes.values():
        counts[v] = counts.get(v, 0) + 1
    lines = [", ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items())) or "no test outcome seen"]
    final = [m.group(1) for m in (SUMMARY_LINE.match(l.strip()) for l in text.splitlines()) if m]
    if final:
        lines[0] += f" (pytest: {final[-1]})"
    else:
        lines[0] += " (cut off before pytest's summary)"
    lines += [f"{v}: {k}" for k, v in outcomes.items() if v in ("FAILED", "ERROR")]
    return lines


# --------------------------------------------------------------------------------------------------
# running a step


def run_process(argv: List[str], limit: float, log_path: Path, env: dict) -> (int, bool):
    """Run argv in its own process group with its output teed to the console and to log_path; kill the whole
    group at the limit. Returns (return code, timed out)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        # its own process group (to kill the step's children at its limit) in run_all's session: whatever ends
        # run_all's session ends the step too, and a TERM/INT/HUP to run_all kills the step's group first
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env, process_group=0)
        RUNNING.add(proc.pid)

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write("    " + line)
                sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, limit))
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            RUNNING.discard(proc.pid)
        reader.join(timeout=10)
    return proc.returncode, timed_out


RUNNING = set()  # process groups of the steps running now


def stop_steps_and_exit(signum, frame) -> None:
    """TERM / INT / HUP (e.g. `timeout` ending gpu_check.sh's run_all phase): kill the running step's process
    group, then exit, so that no step outlives run_all."""
    for pgid in list(RUNNING):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def install_signal_handlers() -> dict:
    """stop_steps_and_exit on TERM, INT and HUP; returns the handlers it replaced."""
    return {sig: signal.signal(sig, stop_steps_and_exit) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}


def read_tail(path: Path, n: int = TAIL) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def describe(step: Step) -> str:
    if step.argv[1:2] == ["-c"]:
        return f"{step.argv[0]} -c <load (or JIT-build) the C++ extension, the CUDA kernels and Triton>"
    return " ".join(step.argv)


def run_step(step: Step, limit: float, logs: Path, env: dict) -> Outcome:
    o = Outcome(step.name, describe(step))
    o.limit = round(limit, 1)
    log = logs / (re.sub(r"[^a-z0-9]+", "_", step.name.lower()).strip("_") + ".log")
    o.log = str(log)
    print(f"== {step.name} (limit {limit:.0f} s): {o.command}", flush=True)
    t0 = time.time()
    rc, timed_out = run_process(step.argv, limit, log, env)
    o.seconds = round(time.time() - t0, 1)
    o.status = "timed out" if timed_out else ("ok" if rc == 0 else "failed")
    text = read_tail(log, 10**7)
    o.tail = text[-TAIL:]
    if step.kind == "tests":
        o.detail = summarize_tests(text)
    elif step.kind == "build":
        o.detail = [l for l in text.splitlines() if l.startswith(("C++ extension", "CUDA kernels", "build ok",
                                                                  "building", "emodarts:"))]
    elif step.result:
        path = Path(step.result)
        if path.exists() and path.stat().st_mtime >= t0 - 1:
            try:
                o.detail = step.summarize(json.loads(path.read_text()))
            except Exception as exc:  # a summary never fails the run
                o.detail = [f"(no summary: {type(exc).__name__}: {exc})"]
        else:
            o.detail = [f"no results written ({path.name})"]
    return o


# --------------------------------------------------------------------------------------------------
# dry run: validate the plan without running it


class _Parsed(Exception):
    pass


def validate_bench(step: Step) -> List[str]:
    """Import the benchmark and parse the planned arguments with its own parser (stopped right after parsing)."""
    import argparse as ap_mod

    argv = step.argv[2:]  # drop the interpreter and the script
    mod = importlib.import_module(step.module)
    real = ap_mod.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        ns = real(self, args, namespace)
        raise _Parsed(ns)

    saved_argv = sys.argv
    ap_mod.ArgumentParser.parse_args = parse_then_stop
    sys.argv = [step.argv[1]] + argv
    try:
        try:
            mod.main(argv) if "argv" in mod.main.__code__.co_varnames[: mod.main.__code__.co_argcount] else mod.main()
        except _Parsed as parsed:
            ns = vars(parsed.args[0])
            return [f"imports; arguments parse: {', '.join(f'{k}={v}' for k, v in ns.items() if v not in (None, False))}"]
        except SystemExit as exc:
            raise RuntimeError(f"{step.module}: its parser rejected {argv} (exit {exc.code})") from None
        raise RuntimeError(f"{step.module}.main() returned without parsing its arguments")
    finally:
        ap_mod.ArgumentParser.parse_args = real
        sys.argv = saved_argv


def validate_tests(step: Step, env: dict) -> List[str]:
    argv = [a for a in step.argv if a not in ("-v", "-rfEs")] + ["--collect-only", "-q"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    last = (proc.stdout.strip().splitlines() or ["?"])[-1]
    if proc.returncode not in (0, 5):  # 5: nothing collected (e.g. -m gpu where the selection is empty)
        raise RuntimeError(f"collecting the tests failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return [f"collects: {last}"]


def dry_run_step(step: Step, env: dict) -> Outcome:
    o = Outcome(step.name, describe(step))
    t0 = time.time()
    try:
        if step.kind == "bench":
            o.detail = validate_bench(step)
        elif step.kind == "tests":
            o.detail = validate_tests(step, env)
        elif step.argv[1:2] == ["-c"]:
            compile(step.argv[2], "<build>", "exec")
            o.detail = ["the build snippet compiles (not run)"]
        else:
            o.detail = ["not run"]
        o.status = "validated"
    except Exception as exc:
        o.status = "invalid"
        o.detail = [f"{type(exc).__name__}: {exc}"]
    o.seconds = round(time.time() - t0, 1)
    return o


# --------------------------------------------------------------------------------------------------
# results


def write_results(results: Path, tag: str, meta: dict, outcomes: List[Outcome]) -> Path:
    """all_<tag>.json and all_<tag>.md, replaced atomically."""
    results.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "steps": [o.__dict__ for o in outcomes]}
    path = results / f"all_{tag}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    md = [f"# {meta['device']} ({meta['date']})", "",
          f"Command: `{meta['command']}`; mode {meta['mode']}, budget {meta['budget_s']} s, "
          f"elapsed {meta.get('elapsed_s', 0):.0f} s; torch {meta['torch']}, triton {meta.get('triton')}", "",
          "| step | status | seconds | limit | result |", "| --- | --- | --- | --- | --- |"]
    for o in outcomes:
        first = (o.detail[0] if o.detail else "").replace("|", "/")
        md.append(f"| {o.step} | {o.status} | {o.seconds} | {o.limit} | {first} |")
    for o in outcomes:
        if len(o.detail) > 1 or (o.status not in ("ok", "validated") and o.tail):
            md += ["", f"## {o.step}", ""] + [f"- {d}" for d in o.detail]
            if o.status not in ("ok", "validated", "skipped") and o.tail:
                md += ["", "```", o.tail[-1500:], "```"]
    tmp = results / f"all_{tag}.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, results / f"all_{tag}.md")
    return path


def print_summary(outcomes: List[Outcome], path: Path) -> None:
    w = max([len(o.step) for o in outcomes] + [4])
    print()
    print(f"{'step':<{w}}  {'status':<10} {'seconds':>8} {'limit':>7}  result")
    print("-" * (w + 40))
    for o in outcomes:
        print(f"{o.step:<{w}}  {o.status:<10} {o.seconds:>8.1f} {o.limit:>7.0f}  {o.detail[0] if o.detail else ''}")
        for d in o.detail[1:8]:
            print(f"{'':<{w}}  {'':<10} {'':>8} {'':>7}  {d}")
    print(f"\nwrote {path} and {path.with_suffix('.md')}")


# --------------------------------------------------------------------------------------------------


def build_environment(dev: torch.device, results: Path) -> dict:
    """The children's environment: TORCH_CUDA_ARCH_LIST from the GPU's capability and CUDA_HOME from the toolkit
    found (when unset), results to `results`, unbuffered output, PASSIVE OpenMP workers, the checkout
    importable."""
    env = dict(os.environ)
    if dev.type == "cuda" and torch.cuda.is_available():
        if not env.get("TORCH_CUDA_ARCH_LIST"):
            major, minor = torch.cuda.get_device_capability(dev)
            env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        if not env.get("CUDA_HOME"):
            from emodarts.ops.compiled.cuda import cuda_home

            home = cuda_home()
            if home:
                env["CUDA_HOME"] = home
    env["EMODARTS_BENCH_RESULTS"] = str(results)
    env["PYTHONUNBUFFERED"] = "1"  # a step killed at its limit has printed (and logged) all it measured
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if dev.type == "cuda":
        env.pop("TRITON_INTERPRET", None)  # the kernels run compiled on the GPU
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default with a GPU) or cpu")
    p.add_argument("--quick", action="store_true", help="about 3 minutes: fewer tests, repeats and sizes")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default 480, quick 180)")
    p.add_argument("--install", action="store_true",
                   help="first pip install --no-deps --no-build-isolation -e . (builds the extension)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the steps (import every benchmark, parse its planned arguments, collect the "
                        "tests), write the json/md, run nothing")
    p.add_argument("--results-dir", default=None, help="where the json/md go (default bench/results)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        print("run_all: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "full"
    budget = args.budget or BUDGET[mode]
    scale = budget / BUDGET[mode]
    results = Path(args.results_dir).resolve() if args.results_dir else common.RESULTS
    have_dev = dev.type != "cuda" or torch.cuda.is_available()
    tag = device_tag(dev) if have_dev else f"{dev.type}-dry-run"
    env = build_environment(dev, results)
    steps = plan(args, tag, results)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    meta = {**common.header(dev if have_dev else torch.device("cpu")),
            "mode": ("dry run, " if args.dry_run else "") + mode, "budget_s": budget, "triton": triton_version,
            "cuda_arch_list": env.get("TORCH_CUDA_ARCH_LIST"), "cuda_home": env.get("CUDA_HOME"),
            "results_dir": str(results)}
    if not have_dev:
        meta["device"] = f"{dev.type} (not on this machine: dry run)"
    print(f"run_all: {len(steps)} steps, {mode}, budget {budget:.0f} s, device {meta['device']}, results in "
          f"{results}" + (" (dry run)" if args.dry_run else ""), flush=True)
    for s in steps:
        print(f"  - {s.name}: share {s.share[mode] * scale:.0f} s" + (f", at least {s.min_limit} s" if s.min_limit
                                                                      else ""), flush=True)
    replaced = install_signal_handlers() if not args.dry_run else {}
    try:
        return run_plan(args, steps, mode, budget, scale, env, results, tag, meta)
    finally:
        for sig, handler in replaced.items():
            signal.signal(sig, handler)


def run_plan(args, steps: List[Step], mode: str, budget: float, scale: float, env: dict, results: Path, tag: str,
             meta: dict) -> int:
    """Run (or, with --dry-run, validate) the steps in order within the budget, writing the results after each;
    the exit code: 0 when every step passed."""
    outcomes: List[Outcome] = []
    run_start = start = time.time()
    planned_end = 0.0  # seconds after start at which the steps so far were planned to end
    for s in steps:
        if args.dry_run:
            outcomes.append(dry_run_step(s, env))
        else:
            planned_end += s.share[mode] * scale
            if s.share[mode] == 0 and not s.min_limit:
                continue  # not part of this mode
            elapsed = time.time() - start
            if s.kind == "build":  # the install and the build: their own limits, outside the budget
                limit = s.min_limit
            else:  # its share plus what earlier steps left unused, never past the budget's end
                limit = min(planned_end - elapsed, budget - elapsed)
            if limit < MIN_STEP:
                outcomes.append(Outcome(s.name, describe(s), "skipped", 0.0, round(limit, 1),
                                        [f"out of time ({budget - elapsed:.0f} s of the {budget:.0f} s budget left)"]))
            else:
                outcomes.append(run_step(s, limit, results / f"all_{tag}_logs", env))
            if s.kind == "build":  # the budget's clock starts after the build
                start, planned_end = time.time(), 0.0
        meta["elapsed_s"] = round(time.time() - run_start, 1)
        path = write_results(results, tag, meta, outcomes)
    path = write_results(results, tag, meta, outcomes)
    print_summary(outcomes, path)
    if args.dry_run:
        return 0 if all(o.status == "validated" for o in outcomes) else 1
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
