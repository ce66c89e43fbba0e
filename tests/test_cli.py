"""The command line: a short `emodarts run` on the synthetic corpus, errors, and --fused without kernels."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from emodarts.cli.commands import cli


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One short `emodarts run` on the synthetic corpus (in a private EMODARTS_HOME), shared by the tests."""
    home = tmp_path_factory.mktemp("emodarts_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("EMODARTS_HOME", str(home))
    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(cli, ["run", "--out", str(out), "--epochs", "1", "--train-epochs", "6",
                                      "--no-progress", "--seed", "0"])
    yield out, result, home
    mp.undo()


def test_short_run_beats_chance(short_run):
    out, result, _ = short_run
    assert result.exit_code == 0, result.output
    for name in ("config.json", "genotype.json", "genotypes.jsonl", "alphas.jsonl", "metrics.jsonl",
                 "checkpoint.pt", "model.pt", "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert "UA " in result.output and "WA " in result.output and f"run folder: {out}" in result.output
    # chance is 0.25 on the 4 balanced classes of the held-out speakers
    assert metrics["ua"] >= UA_FLOOR, metrics["ua"]

    again = CliRunner().invoke(cli, ["run", "--out", str(out), "--no-progress"])
    assert again.exit_code == 2 and "already holds a run" in again.output

    evaluated = CliRunner().invoke(cli, ["evaluate", str(out), "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((out / "metrics.json").read_text())["ua"] == metrics["ua"]


# measured 0.767 with these settings (seed 0, 2 CPU cores, 2026-11-28); chance is 0.25
UA_FLOOR = 0.5


def test_resume_needs_a_run(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--resume", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "config.json" in result.output


def test_train_with_broken_genotype_names_the_field(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text(json.dumps({"normal": [[["conv_9x9", 0]]], "reduce": [], "seq": []}))
    result = CliRunner().invoke(cli, ["train", "--genotype", str(bad), "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 2 and "normal[0][0]" in result.output and str(bad) in result.output


def test_unknown_corpus_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--corpus", "nope", "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 2 and "unknown corpus" in result.output


def test_report_writes_valid_pngs(short_run):
    out, _, _ = short_run
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 0, result.output
    report = out / "report"
    names = ["alphas_normal.png", "alphas_reduce.png", "alphas_seq.png", "curves.png", "confusion.png",
             "cell_normal.png", "cell_reduce.png", "cell_seq.png"]
    md = (report / "README.md").read_text()
    from PIL import Image

    for name in names:
        assert name in md
        with Image.open(report / name) as img:
            img.verify()
        with Image.open(report / name) as img:
            pixels = img.convert("L")
            lo, hi = pixels.getextrema()
            assert img.size[0] > 100 and img.size[1] > 100 and hi - lo > 50, name  # not a blank canvas


def test_predict_matches_the_evaluation(short_run, monkeypatch):
    out, _, home = short_run
    monkeypatch.setenv("EMODARTS_HOME", str(home))
    from emodarts.cli.runs import open_run
    from emodarts.cli.predict import predict_files
    from emodarts.data.registry import load_corpus
    from emodarts.data.splits import speaker_split
    from emodarts.engine.evaluation import load_final_network, predict
    from emodarts.engine.pipeline import CORPUS_SEED, class_list, prepare_data

    cfg, _, _ = open_run("predict", None, None, out, "cpu", False)
    utts = load_corpus("synthetic", None, CORPUS_SEED)
    test = speaker_split(utts, cfg.seed).test
    data = prepare_data(cfg, progress=False)
    expected, _ = predict(load_final_network(out, cfg, data), data.test, "cpu")
    classes = class_list(utts)
    picks = list(range(0, len(test), max(1, len(test) // 12)))
    records = predict_files(out, [test[i].path for i in picks])
    assert [r["label"] for r in records] == [classes[expected[i]] for i in picks]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-5 for r in records)

    result = CliRunner().invoke(cli, ["predict", str(out), test[0].path, __file__])
    assert result.exit_code == 1 and "error" in result.output and __file__ in result.output


def test_predict_on_a_directory_says_so(short_run, tmp_path):
    out, _, _ = short_run
    result = CliRunner().invoke(cli, ["predict", str(out), str(tmp_path), str(out)])
    assert result.exit_code == 1
    assert f"{tmp_path} is a directory" in result.output and f"{out} is a directory" in result.output


def test_predict_applies_the_runs_min_duration(short_run, tmp_path):
    """A clip shorter than the run's --min-duration (0.25 s here) is refused as the run's data was; a longer
    one is predicted."""
    import numpy as np

    from emodarts.data.wav import write_wav

    out, _, _ = short_run
    rng = np.random.default_rng(0)
    short, ok = tmp_path / "short.wav", tmp_path / "ok.wav"
    write_wav(short, (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000)  # 0.1 s
    write_wav(ok, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    result = CliRunner().invoke(cli, ["predict", str(out), str(short), str(ok), "--json"])
    assert result.exit_code == 1
    records = {Path(r["file"]).name: r for r in json.loads(result.output)}
    assert "too short" in records["short.wav"]["error"] and "0.25" in records["short.wav"]["error"]
    assert "label" in records["ok.wav"]
