#!/usr/bin/env bash
# The GPU loan's one command: install, check the compiled modules import, run the kernel-level GPU tests, the
# supernet GPU tests, one fused search from the command line, then `run_all --quick` in what is left, within
# one time budget, leaving at most 8 files in OUT_DIR (the folder that comes home):
#
#   env.txt             the machine: GPU, driver, Python, torch / triton / torchaudio, CPU, toolkit
#   install.log         the wheelhouse and editable install (builds emodarts._C and _C_cuda), then the import check
#   tests_kernels.log   pytest -m gpu over the kernel-level files
#   tests_supernet.log  pytest -m gpu over every other test file (the supernet's first)
#   cli.log             emodarts search --fused --device cuda --corpus synthetic (no soundfile, no librosa there)
#   run_all.log         python bench/run_all.py --quick --budget <what is left>
#   bench_results.tgz   every file bench/results gained during the run (run_all's tables and logs included)
#   summary.md          one row per phase: status, seconds, limit, result; rewritten after every phase
#
# usage: bash bench/gpu_check.sh [--dry-run] [--budget S] OUT_DIR
#   --budget S  seconds for everything, the build included (default 540: one 10-minute command with room to
#               spare). Each phase runs under `timeout` with the smaller of its cap and what the budget has left
#               (less a reserve for the tarball); a phase that fails or times out is recorded and the next runs.
#   --dry-run   checks this script on a CPU in seconds (tests/test_gpu_check.py): no install, the tests only
#               collected, the command-line search and run_all only validated; bench/results is left as it was.
#
# On the GPU machine, from the repository root (see README.md, "On a GPU"): bash bench/gpu_check.sh "$OUT"
# Wheels in wheelhouse/ (optional: e.g. soundfile and librosa for Python 3.12) are installed first.
set -u -o pipefail

DRY=0
BUDGET=540
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) shift; BUDGET="${1:-}" ;;
    --budget=*) BUDGET="${1#--budget=}" ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1" ;;
  esac
  shift
done
if [ -z "$OUT" ]; then echo "usage: bash bench/gpu_check.sh [--dry-run] [--budget S] OUT_DIR" >&2; exit 2; fi
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget takes whole seconds, not '$BUDGET'" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
START=$SECONDS
RESERVE=15          # seconds kept back for the tarball and the last summary
SCRATCH="$(mktemp -d)"
MARK="$SCRATCH/start-mark"
touch "$MARK"
ROWS="$SCRATCH/rows.tsv"
: > "$ROWS"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
EMO=("$PY" -c "from emodarts.cli.commands import main; main()")
KERNEL_TESTS=(tests/test_gpu_kernels.py tests/test_mixed_sum.py tests/test_multi_depthwise_triton.py
              tests/test_pool_fused.py tests/test_grouped_recurrent.py tests/test_darts_kernel.py)
PYTEST=("$PY" -m pytest -m gpu -v -rfEs -p no:cacheprovider)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then PYTEST+=(--timeout 120); fi  # one hung test costs 2 minutes

left() { echo $(( BUDGET - (SECONDS - START) )); }

summary() {  # summary.md from the rows so far (atomic: written beside, then renamed)
  {
    echo "# gpu_check: $(head -n1 "$OUT/env.txt" 2>/dev/null || echo '?')"
    echo
    echo "Command: \`bash bench/gpu_check.sh$([ $DRY = 1 ] && echo ' --dry-run') --budget $BUDGET OUT_DIR\`;" \
         "elapsed $(( SECONDS - START )) s of $BUDGET s."
    echo
    echo "| phase | status | seconds | limit | result |"
    echo "| --- | --- | --- | --- | --- |"
    while IFS=$'\t' read -r name status secs limit detail; do
      echo "| $name | $status | $secs | $limit | ${detail//|//} |"
    done < "$ROWS"
  } > "$OUT/summary.md.tmp" && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
}

result_line() {  # the line that says how a phase went: pytest's summary, else the log's last non-empty line
  local log="$1" line
  line="$(grep -E '^(=+ .* in [0-9.]+s.* =+|[0-9/]+ tests? collected.*)$' "$log" 2>/dev/null | tail -n1)"
  [ -n "$line" ] || line="$(grep -v '^[[:space:]]*$' "$log" 2>/dev/null | tail -n1)"
  echo "${line:0:200}" | tr '\t' ' ' | tr -d '='
}

# phase NAME CAP MIN LOG -- COMMAND...: runs COMMAND under timeout (the smaller of CAP and the budget left), its
# output appended to LOG, and records a row; skipped when less than MIN seconds are left
phase() {
  local name="$1" cap="$2" min="$3" log="$4"; shift 5
  local limit=$(( $(left) - RESERVE ))
  [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt "$min" ]; then
    printf '%s\tskipped\t0\t%s\tout of time (%s s of the budget left)\n' "$name" "$limit" "$(left)" >> "$ROWS"
    echo "== $name: skipped, out of time" | tee -a "$log"; summary; return 0
  fi
  echo "== $name (limit $limit s): $*" | tee -a "$log"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local status=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out"; elif [ "$rc" != 0 ]; then status="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(( SECONDS - t0 ))" "$limit" "$(result_line "$log")" >> "$ROWS"
  summary
  return 0
}

pack() {  # the files bench/results gained since the start, as one tarball (with run_all's logs)
  local list="$SCRATCH/new-results"
  (cd "$ROOT" && find bench/results -type f -newer "$MARK" 2>/dev/null | sort) > "$list"
  tar -czf "$OUT/bench_results.tgz" -C "$ROOT" -T "$list" 2>/dev/null
  printf 'pack results\tok\t0\t-\t%s new files in bench_results.tgz\n' "$(wc -l < "$list")" >> "$ROWS"
  summary
}
trap 'pack; rm -rf "$SCRATCH"' EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------- env
{
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n1
  else
    echo "no GPU (nvidia-smi not found)$([ $DRY = 1 ] && echo ': dry run')"
  fi
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host $(hostname); $(nproc) CPUs; $(uname -srm)"
  echo "budget: $BUDGET s; dry run: $DRY; commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git here')"
  "$PY" - <<'EOF'
import importlib.util, platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
for name in ("triton", "torchaudio", "numpy", "pytest", "setuptools", "ninja", "soundfile", "librosa"):
    if importlib.util.find_spec(name) is None:
        print(name, "not installed")
        continue
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(name, "fails to import:", type(exc).__name__, exc)
EOF
  command -v nvcc > /dev/null && nvcc --version | tail -n2
  nvidia-smi 2>/dev/null
} > "$OUT/env.txt" 2>&1
printf 'env\tok\t%s\t-\t%s\n' "$(( SECONDS - START ))" "$(head -n1 "$OUT/env.txt")" >> "$ROWS"
summary

# ---------------------------------------------------------------------------------------------- install
# the build targets the visible GPU (9.0, Hopper, without one), with nvcc's folder as CUDA_HOME and every core
ARCH="$("$PY" -c "import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0); print(f'{c[0]}.{c[1]}')" 2>/dev/null || echo 9.0)"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
HOME_FOUND="$("$PY" -c "import importlib.util as u; s = u.spec_from_file_location('t', 'emodarts/ops/compiled/toolchain.py'); m = u.module_from_spec(s); s.loader.exec_module(m); print(m.find_cuda_home() or '')")"
[ -n "${CUDA_HOME:-}" ] || [ -z "$HOME_FOUND" ] || export CUDA_HOME="$HOME_FOUND"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" EMODARTS_CUDA_EXT=1
WHEELS=()
[ -d wheelhouse ] && WHEELS=(wheelhouse/*.whl)
[ -e "${WHEELS[0]:-/nonexistent}" ] || WHEELS=()
PIP=("$PY" -m pip install --no-index --no-deps --no-build-isolation)
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CUDA_HOME=${CUDA_HOME:-unset} MAX_JOBS=$MAX_JOBS; ${#WHEELS[@]} wheels" >> "$OUT/install.log"
if [ $DRY = 1 ]; then
  phase "install (dry run)" 60 5 "$OUT/install.log" -- bash -c "echo would run: ${PIP[*]} ${WHEELS[*]:-}; echo would run: ${PIP[*]} -e .; ${PY} -m pip --version && ${PY} -c 'import setuptools, wheel; print(\"setuptools\", setuptools.__version__)'"
else
  if [ ${#WHEELS[@]} -gt 0 ]; then
    phase "wheelhouse" 60 10 "$OUT/install.log" -- "${PIP[@]}" "${WHEELS[@]}"
  fi
  phase "install + build" 300 60 "$OUT/install.log" -- "${PIP[@]}" -e .
fi
CHECK='
import torch, importlib
c = importlib.import_module("emodarts._C"); print("emodarts._C:", c.__file__)
if torch.cuda.is_available():
    g = importlib.import_module("emodarts._C_cuda"); print("emodarts._C_cuda:", g.__file__)
else:
    print("emodarts._C_cuda: not checked (no GPU)")
'
if [ $DRY = 1 ]; then
  phase "import _C, _C_cuda (dry run)" 30 5 "$OUT/install.log" -- "$PY" -c "compile('''$CHECK''', 'check', 'exec'); print('the import check compiles (not run: nothing installed)')"
else
  phase "import _C, _C_cuda" 60 5 "$OUT/install.log" -- "$PY" -c "$CHECK"
fi

# ---------------------------------------------------------------------------------------------- GPU tests
IGNORES=()
for f in "${KERNEL_TESTS[@]}"; do IGNORES+=(--ignore "$f"); done
if [ $DRY = 1 ]; then
  phase "kernel tests (collect)" 120 10 "$OUT/tests_kernels.log" -- "${PYTEST[@]}" --collect-only -q "${KERNEL_TESTS[@]}"
  phase "supernet tests (collect)" 120 10 "$OUT/tests_supernet.log" -- "${PYTEST[@]}" --collect-only -q tests/test_gpu_supernet.py tests "${IGNORES[@]}"
else
  phase "kernel tests" 150 30 "$OUT/tests_kernels.log" -- "${PYTEST[@]}" "${KERNEL_TESTS[@]}"
  phase "supernet tests" 150 30 "$OUT/tests_supernet.log" -- "${PYTEST[@]}" tests/test_gpu_supernet.py tests "${IGNORES[@]}"
fi

# ---------------------------------------------------------------------------------------------- the CLI
RUN_DIR="$SCRATCH/search-run"
if [ $DRY = 1 ]; then
  phase "cli search (help)" 60 5 "$OUT/cli.log" -- "${EMO[@]}" search --help
else
  phase "cli search --fused --device cuda" 120 30 "$OUT/cli.log" -- env EMODARTS_HOME="$SCRATCH/home" \
    "${EMO[@]}" search --fused --device cuda --corpus synthetic --preset tiny --epochs 2 --out "$RUN_DIR" --no-progress
fi

# ---------------------------------------------------------------------------------------------- benchmarks
RA_LIMIT=$(( $(left) - RESERVE ))
if [ $DRY = 1 ]; then
  phase "run_all --quick (dry run)" 120 5 "$OUT/run_all.log" -- "$PY" bench/run_all.py --quick --dry-run --device cuda --results-dir "$SCRATCH/results"
else
  # run_all's own budget ends 10 s before this phase's limit: it writes its tables before the timeout strikes
  phase "run_all --quick" 100000 30 "$OUT/run_all.log" -- "$PY" bench/run_all.py --quick --budget $(( RA_LIMIT > 40 ? RA_LIMIT - 10 : 30 ))
fi
exit 0
