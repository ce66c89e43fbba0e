"""Watching a run: RUN_DIR/tensorboard (read back, its scalars equal metrics.jsonl's and alphas.jsonl's) and
RUN_DIR/run.log (every line the console shows, with times, and the warnings)."""
import json
import re
import warnings

import numpy as np
import pytest
from helpers import invoke_cli
from test_labels import make_corpus

CLASSES = ("angry", "happy", "neutral", "sad")


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("logs") / "c", CLASSES)


def _run(corpus, out, *extra):
    result = invoke_cli("run", "--corpus", "csv", "--root", str(corpus), "--preset", "tiny", "--epochs", "2",
                        "--train-epochs", "2", "--no-progress", "--out", str(out), *extra)
    assert result.exit_code == 0, result.output
    return result


def test_tensorboard_holds_the_runs_numbers(corpus, tmp_path):
    pytest.importorskip("tensorboard", reason="the event files are read back with tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    _run(corpus, run)
    metrics = _records(run / "metrics.jsonl")
    alphas = _records(run / "alphas.jsonl")
    cfg = json.loads((run / "config.json").read_text())
    for phase in ("search", "train"):
        acc = EventAccumulator(str(run / "tensorboard" / phase), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        mine = [r for r in metrics if r["phase"] == phase]
        keys = [k for k, v in mine[0].items() if k not in ("phase", "epoch") and isinstance(v, (int, float))]
        assert {"train_loss", "seconds", "step_seconds", "lr"} <= set(keys)
        for key in keys:
            events = acc.Scalars(f"{phase}/{key}")
            assert [e.step for e in events] == [r["epoch"] for r in mine]
            assert np.allclose([e.value for e in events], [r[key] for r in mine], rtol=1e-6, atol=0), key
        if phase == "train":
            assert "train/dev_ua" in acc.Tags()["scalars"]
            continue
        primitives = cfg["model"]["cnn_primitives"]
        for k, name in enumerate(primitives):
            got = [e.value for e in acc.Scalars(f"alphas/normal/edge_0/{name}")]
            assert np.allclose(got, [a["alpha_normal"][0][k] for a in alphas], rtol=1e-6)
        assert {"alphas/normal", "alphas/reduce", "alphas/seq"} <= set(acc.Tags()["images"])
        assert len(acc.Images("alphas/seq")) == 2  # a heatmap per epoch


def test_no_tensorboard_and_the_run_log(corpus, tmp_path, monkeypatch):
    import emodarts.engine.search as search_mod

    keep = search_mod._keep_if_best

    def noisy(*args, **kwargs):  # a Python warning raised while the search works
        warnings.warn("a warning raised inside the search", RuntimeWarning)
        return keep(*args, **kwargs)

    monkeypatch.setattr(search_mod, "_keep_if_best", noisy)
    run = tmp_path / "r"
    result = _run(corpus, run, "--no-tensorboard")
    assert not (run / "tensorboard").exists()
    text = (run / "run.log").read_text()
    log = text.splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) +")
    said = [stamp.sub("", line) for line in log if stamp.match(line)]
    shown = [line for line in result.output.splitlines() if line.strip()]
    assert shown and all(line in text for line in shown)  # every console line (a warning's too), in run.log
    assert all(stamp.match(line) for line in log if line.strip() and not line.startswith("  "))  # with its time
    assert any("search epoch 2/2" in line for line in said) and any(line.startswith("test UA") for line in said)
    assert any("WARNING" in line and "a warning raised inside the search" in line for line in log)


def test_a_resumed_run_appends_and_says_why(corpus, tmp_path):
    run = tmp_path / "r"
    _run(corpus, run, "--no-tensorboard")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"phase": "train", "epo')  # a line cut off by an interruption
    (run / "metrics.json").unlink()
    result = invoke_cli("run", "--resume", str(run), "--no-progress")
    assert result.exit_code == 0, result.output
    log = (run / "run.log").read_text()
    assert log.count("run folder: ") == 2 and "(resumed)" in log
    assert re.search(r"WARNING .*metrics.jsonl", log)
