"""One command for a short GPU loan (or a CPU check): build the extension, run the GPU tests, run every
benchmark, and write one results file named after the device plus a Markdown table.

    python bench/run_all.py                 # on the GPU machine (CUDA device 0)
    python bench/run_all.py --device cpu --quick

Each step runs in its own process with a time limit; a failing step is recorded, not fatal, so a loan is
never wasted on one broken benchmark. Outputs: bench/results/all_<device>.json and all_<device>.md.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import RESULTS, device_name, header  # noqa: E402


def step(name: str, cmd: list, timeout: int, log: list) -> bool:
    t0 = time.time()
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        ok, tail = False, f"timed out after {timeout} s\n{(exc.stdout or '')[-2000:] if isinstance(exc.stdout, str) else ''}"
    print(tail, flush=True)
    log.append({"step": name, "command": " ".join(cmd), "ok": ok, "seconds": round(time.time() - t0, 1), "tail": tail})
    return ok


def _search_table(data: dict) -> list:
    lines = ["| preset | order | mode | step ms | peak MB | x reference |", "| --- | --- | --- | --- | --- | --- |"]
    for r in data.get("rows", []):
        order = "2nd" if r["second_order"] else "1st"
        if "error" in r:
            lines.append(f"| {r['preset']} | {order} | {r['mode']} | error: {r['error'][:60]} | | |")
        else:
            lines.append(f"| {r['preset']} | {order} | {r['mode']} | {1e3 * r['seconds']:.1f} | "
                         f"{r['peak_bytes'] / 2**20:.0f} | {r.get('speedup_vs_reference', float('nan')):.2f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    dev = torch.device(args.device)
    tag = re.sub(r"[^a-z0-9]+", "-", device_name(dev).lower()).strip("-")
    quick = ["--quick"] if args.quick else []
    py = sys.executable
    log: list = []
    step("build extension", [py, "-c", "from emodarts.ops.extension import load_extension; load_extension();"
                             "import torch; from emodarts.ops import grouped_recurrent as g;"
                             "torch.cuda.is_available() and g.ensure_cuda(); print('extension ok')"], 900, log)
    env_tests = ["-m", "gpu"] if dev.type == "cuda" else ["-k", "mixed_sum or grouped or fused or darts_kernel"]
    step("tests", [py, "-m", "pytest", "-q", "tests", *env_tests], 900, log)
    step("bench mixed sum", [py, "bench/bench_mixed_sum.py", "--device", args.device, *quick,
                             "--out", str(RESULTS / f"mixed_sum_{tag}.json")], 900, log)
    step("bench recurrent", [py, "bench/bench_recurrent.py", "--device", args.device, *quick,
                             "--out", f"recurrent_{tag}.json"], 900, log)
    step("bench darts", [py, "bench/bench_darts.py", "--device", args.device, *quick,
                         "--out", f"darts_{tag}.json"], 900, log)
    step("bench search", [py, "bench/bench_search.py", "--device", args.device, *quick], 1200, log)
    out = {**header(dev), "steps": log, "results": {}}
    for name in (f"mixed_sum_{tag}.json", f"recurrent_{tag}.json", f"darts_{tag}.json",
                 f"search_{args.device.replace(':', '')}.json"):
        path = RESULTS / name
        if path.exists():
            out["results"][name] = json.loads(path.read_text())
    (RESULTS / f"all_{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# {out['device']} ({out['date']})", "", f"Command: `{out['command']}`", "",
          "| step | ok | seconds |", "| --- | --- | --- |"]
    md += [f"| {s['step']} | {'yes' if s['ok'] else 'NO'} | {s['seconds']} |" for s in log]
    search = out["results"].get(f"search_{args.device.replace(':', '')}.json")
    if search:
        md += ["", "## Search step (reference vs torch.compile vs fused)", "", *_search_table(search)]
    md += ["", "Full figures: " + ", ".join(f"`bench/results/{n}`" for n in out["results"])]
    (RESULTS / f"all_{tag}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {RESULTS / f'all_{tag}.json'} and .md")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
