"""The command line: a short `emodarts run` on the synthetic corpus, errors, and --fused without kernels."""
import json

import pytest
from click.testing import CliRunner

from emodarts.cli import cli


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("emodarts_home")


def test_short_run_beats_chance(home, tmp_path, monkeypatch):
    monkeypatch.setenv("EMODARTS_HOME", str(home))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--out", str(out), "--epochs", "1", "--train-epochs", "6",
                                      "--no-progress", "--seed", "0"])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "genotype.json", "genotypes.jsonl", "alphas.jsonl", "metrics.jsonl",
                 "checkpoint.pt", "model.pt", "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert "UA " in result.output and "WA " in result.output
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
