"""What `emodarts export` produces for trained runs: file sizes, export time, load times (torch.jit.load,
onnxruntime session, safetensors), the time of one batch, and the largest probability difference against
`emodarts predict`'s network on the run's own clips (TorchScript and ONNX).

    python bench/bench_export.py RUN_DIR [RUN_DIR ...] [--clips 16] [--out export_cpu.json]

Prints a table and writes bench/results/export_cpu.json. The reference for the differences is the run's
network in PyTorch (engine/predictor.py, what `predict` uses) on the same features.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ResultsFile, header  # noqa: E402


def clips_of(run_dir: Path, n: int):
    """Features of up to n test clips of the run's corpus (the first of each file, sorted), as predict makes them."""
    from emodarts.engine.pipeline import prepare_data
    from emodarts.engine.predictor import Predictor

    predictor = Predictor(run_dir)
    data = prepare_data(predictor.config, progress=False)
    return predictor, data.test.x[:n, 0].numpy()


def measure(run_dir: Path, n_clips: int) -> dict:
    from emodarts.engine.export import export_run

    predictor, x = clips_of(run_dir, n_clips)
    want = predictor.probabilities(x)
    out = Path(tempfile.mkdtemp(prefix="export-bench-")) / "export"
    t0 = time.perf_counter()
    files = export_run(run_dir, out)
    row = {"run": str(run_dir), "preset": predictor.config.preset, "export_s": time.perf_counter() - t0,
           "bytes": files, "clips": int(len(x)), "input": list(x.shape[1:])}
    t0 = time.perf_counter()
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    row["torchscript_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = scripted(torch.from_numpy(x)).numpy()
    row["torchscript_batch_s"] = time.perf_counter() - t0
    row["torchscript_max_abs_diff"] = float(np.abs(got - want).max())
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    load_file(str(out / "model.safetensors"))
    row["safetensors_load_s"] = time.perf_counter() - t0
    try:
        import onnxruntime
    except ImportError:
        row["onnx"] = "onnxruntime not installed"
        return row
    t0 = time.perf_counter()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    row["onnx_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = session.run(["probs"], {"features": x})[0]
    row["onnx_batch_s"] = time.perf_counter() - t0
    row["onnx_max_abs_diff"] = float(np.abs(probs - want).max())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--out", default="export_cpu.json")
    args = ap.parse_args()
    results = ResultsFile(args.out, {**header(torch.device("cpu")), "benchmark": "export"})
    rows = []
    print(f"{'preset':7} {'torchscript MB':>14} {'onnx MB':>8} {'safetensors MB':>14} {'export s':>9} "
          f"{'ts load s':>9} {'ort load s':>10} {'ts diff':>9} {'onnx diff':>9}")
    for run in args.runs:
        r = measure(run, args.clips)
        rows.append(r)
        results.update(rows=rows)
        b = r["bytes"]
        print(f"{r['preset']:7} {b['model.torchscript.pt'] / 1e6:14.2f} {b.get('model.onnx', 0) / 1e6:8.2f} "
              f"{b['model.safetensors'] / 1e6:14.2f} {r['export_s']:9.2f} {r['torchscript_load_s']:9.3f} "
              f"{r.get('onnx_load_s', float('nan')):10.3f} {r['torchscript_max_abs_diff']:9.1e} "
              f"{r.get('onnx_max_abs_diff', float('nan')):9.1e}")
    print(f"written: {results.finish(rows=rows)}")


if __name__ == "__main__":
    main()
