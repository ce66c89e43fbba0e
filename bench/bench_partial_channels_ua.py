"""Test UA of `emodarts run` on the built-in synthetic corpus with and without PC-DARTS, over several seeds.

Each (K, seed) is one `emodarts run --corpus synthetic --preset tiny --partial-channels K --seed S` (search,
final training, evaluation on the test speakers), run through the CLI exactly as a user would; the table
gives each run's UA / WA and wall time, and the mean and standard deviation per K. The wall times come from
whatever else the machine was doing; read them as rough (bench_search.py times steps properly).

    python bench/bench_partial_channels_ua.py --ks 1,4 --seeds 0,1,2 [--fused] [--threads 1]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from common import header, write_json  # noqa: E402


def one_run(k: int, seed: int, out: Path, fused: bool, threads: int, extra: list) -> dict:
    cmd = ["emodarts", "run", "--corpus", "synthetic", "--preset", "tiny", "--seed", str(seed),
           "--partial-channels", str(k), "--out", str(out), "--no-progress", "--threads", str(threads), *extra]
    if fused:
        cmd.append("--fused")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - t0
    if proc.returncode != 0:
        return {"k": k, "seed": seed, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    genotype = json.loads((out / "genotype.json").read_text())
    return {"k": k, "seed": seed, "ua": metrics["ua"], "wa": metrics["wa"], "seconds": seconds,
            "genotype": {kind: genotype[kind] for kind in ("normal", "reduce", "seq")}}


def summary(rows: list) -> dict:
    out = {}
    for k in sorted({r["k"] for r in rows}):
        uas = [r["ua"] for r in rows if r["k"] == k and "ua" in r]
        if uas:
            out[str(k)] = {"ua_mean": statistics.mean(uas), "ua_std": statistics.stdev(uas) if len(uas) > 1 else 0.0,
                           "runs": len(uas)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,4", help="PC-DARTS K values (comma list)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fused", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra", default="", help="further options for every run, e.g. '--epochs 10'")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(x) for x in args.ks.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                r = one_run(k, seed, Path(tmp) / f"k{k}_s{seed}", args.fused, args.threads, args.extra.split())
                rows.append(r)
                print(json.dumps({key: v for key, v in r.items() if key != "genotype"}), flush=True)
    print(f"\n{'K':>2} {'seed':>4} {'UA':>7} {'WA':>7} {'wall s':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['k']:>2} {r['seed']:>4} error: {r['error']}")
        else:
            print(f"{r['k']:>2} {r['seed']:>4} {r['ua']:>7.4f} {r['wa']:>7.4f} {r['seconds']:>7.0f}")
    stats = summary(rows)
    for k, s in stats.items():
        print(f"K={k}: UA {s['ua_mean']:.4f} +- {s['ua_std']:.4f} over {s['runs']} seeds")
    backend = "fused" if args.fused else "reference"
    out = write_json(f"partial_channels_ua_{backend}{args.tag}.json",
                     {**header(torch.device("cpu")), "loadavg": os.getloadavg(), "rows": rows, "summary": stats})
    print(f"results: {out}")


if __name__ == "__main__":
    main()
