"""The benchmarks write their JSON after every measured row (bench/common.py ResultsFile): a run stopped at its
time limit by run_all or gpu_check.sh still leaves what it measured, marked "complete": false. Each benchmark
is run here on the CPU at its smallest size and stopped after its first row."""
import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402


class Stopped(Exception):
    pass


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """Every copy of bench/common.py (imported as `common` by some benchmarks, `bench.common` by others) writes
    to tmp_path."""
    importlib.import_module("bench.common")
    for name in ("common", "bench.common"):
        monkeypatch.setattr(sys.modules[name], "RESULTS", tmp_path)
    return tmp_path


def stop_after_first(module, name, monkeypatch):
    """module.name runs once, then raises Stopped (as a step killed at its limit stops)."""
    real, calls = getattr(module, name), []

    def once(*args, **kwargs):
        if calls:
            raise Stopped()
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, once)


CASES = {
    "bench_darts": ("timed_round_robin", ["--device", "cpu", "--presets", "tiny", "--impls", "reference,fused",
                                          "--modes", "fwd,fwd+bwd", "--repeats", "1", "--warmup", "0",
                                          "--out", "darts_test.json"], "rows"),
    "bench_recurrent": ("timed_round_robin", ["--device", "cpu", "--presets", "tiny", "--scopes", "edge",
                                              "--impls", "loop,grouped", "--modes", "fwd,fwd+bwd", "--repeats", "1",
                                              "--warmup", "0", "--out", "recurrent_test.json"], "rows"),
    "bench_mixed_sum": ("bench_case", ["--device", "cpu", "--ks", "2", "3", "--sizes", "tiny (16,8,20,24)",
                                       "--reps", "1", "--warmup", "0", "--no-compile", "--out",
                                       "mixed_sum_test.json"], "results"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_benchmark_stopped_after_its_first_row_leaves_it(name, results_dir, monkeypatch):
    tmp_path = results_dir
    module = importlib.import_module(name)
    hook, argv, field = CASES[name]
    stop_after_first(module, hook, monkeypatch)
    with pytest.raises(Stopped):
        module.main(argv)
    doc = json.loads((tmp_path / argv[-1]).read_text())
    assert doc["complete"] is False and len(doc[field]) >= 1
    assert not list(tmp_path.glob("*.tmp"))  # replaced atomically


def test_bench_search_in_process_writes_each_row(results_dir, monkeypatch):
    """--in-process (run_all's quick plan on a GPU): no process per configuration; each row written as it
    comes; the CPU peak memory, which one shared process cannot attribute, is not reported."""
    tmp_path = results_dir
    module = importlib.import_module("bench_search")
    stop_after_first(module, "run_job", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench_search.py", "--device", "cpu", "--presets", "tiny", "--modes",
                                      "reference,fused", "--orders", "1", "--repeats", "1", "--warmup", "1",
                                      "--no-growth", "--in-process", "--tag", "_test"])
    with pytest.raises(Stopped):
        module.main()
    doc = json.loads((tmp_path / "search_cpu_test.json").read_text())
    (row,) = doc["rows"]
    assert doc["complete"] is False and row["mode"] == "reference" and row["in_process"] is True
    assert row["seconds"] > 0 and row["peak_bytes"] is None and "error" not in row


def test_results_file_finish_marks_complete(results_dir):
    tmp_path = results_dir
    out = common.ResultsFile("x.json", {"device": "cpu"})
    out.update(rows=[1])
    assert json.loads((tmp_path / "x.json").read_text()) == {"device": "cpu", "complete": False, "rows": [1]}
    out.finish(rows=[1, 2])
    assert json.loads((tmp_path / "x.json").read_text())["complete"] is True


def test_the_cell_benchmarks_fused_row_runs_the_grouped_cell():
    """bench_cnn_cell.py's `fused` row times the cell grouped by source state, as `--fused` runs it (the
    supernet's grouped_cnn): one multi-depthwise call per state, not per-candidate modules. (After grouping became
    the supernet's choice, the benchmark passed only the backend and timed the per-candidate path.)"""
    import torch

    import bench_cnn_cell
    from emodarts.engine.config import PRESETS
    from emodarts.model.supernet import Supernet
    from emodarts.ops import multi_depthwise

    from emodarts.features import FEATURE_PRESETS

    torch.manual_seed(0)
    net = Supernet(PRESETS["tiny"].model, FEATURE_PRESETS["tiny"].shape[0], 4)
    s0, s1 = bench_cnn_cell.cell_inputs(net, "tiny", 0, 2, torch.device("cpu"))
    calls = []
    real = multi_depthwise.multi_depthwise_fused
    try:  # the backends are built inside steps_for: spy before
        multi_depthwise.multi_depthwise_fused = lambda *a, **k: calls.append(1) or real(*a, **k)
        steps = bench_cnn_cell.steps_for(net, 0, s0, s1, ("fwd",), False)
        calls.clear()
        steps["reference"]["fwd"]()
        assert not calls
        steps["fused"]["fwd"]()
    finally:
        multi_depthwise.multi_depthwise_fused = real
    assert calls, "the fused row did not run the grouped cell"
