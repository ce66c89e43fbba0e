"""`emodarts cv`: per-fold search/train/evaluate on a tiny IEMOCAP replica, the results table, resume, a
given genotype; fold data preparation."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from emodarts.cli import cli
from emodarts.config import PRESETS, with_overrides
from emodarts.cv import format_results, load_protocol_data, parse_folds, prepare_fold_data, summarize
from emodarts.errors import DataError

from replicas import make_iemocap

TINY_MODEL = ["--cnn-layers", "3", "--channels", "2", "--hidden", "8", "--seq-candidates", "rnn"]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv_corpus")
    make_iemocap(root, per_speaker=2)
    return root


@pytest.fixture
def home(tmp_path_factory, monkeypatch):
    h = tmp_path_factory.getbasetemp() / "cv_home"
    monkeypatch.setenv("EMODARTS_HOME", str(h))
    return h


def _cv(*args):
    return CliRunner().invoke(cli, ["cv", "--no-progress", *args])


def test_prepare_fold_data(replica, tmp_path, librosa_warm):
    data = load_protocol_data("iemocap", replica, "tiny", None, 0, cache_dir=tmp_path / "cache", progress=False)
    cfg = PRESETS["tiny"]
    fold = data.folds[1]
    rd = prepare_fold_data(cfg, fold, data.features, data.classes)
    assert rd.classes == data.classes == ["angry", "happy", "neutral", "sad"]
    assert len(rd.train) == len(fold.split.train) and len(rd.dev) == len(fold.split.dev)
    assert len(rd.test) == len(fold.split.test)
    assert len(rd.search_w) + len(rd.search_a) == len(fold.split.train)  # search data: training speakers only
    assert tuple(rd.train.x.shape[1:]) == (1, 20, 47)
    np.testing.assert_array_equal(rd.test.x[0, 0].numpy(), data.features[fold.split.test[0].utt_id])
    assert [data.classes[i] for i in rd.test.y.tolist()] == [u.label for u in fold.split.test]
    light = prepare_fold_data(cfg, fold, data.features, data.classes, with_search=False)
    assert len(light.search_w) == len(light.search_a) == 0 and len(light.train) == len(rd.train)


def test_parse_folds_and_summary():
    assert parse_folds(None, 5) == [0, 1, 2, 3, 4] and parse_folds("2, 0,2", 5) == [0, 2]
    with pytest.raises(DataError, match="folds 0..4"):
        parse_folds("5", 5)
    with pytest.raises(DataError, match="not a fold number"):
        parse_folds("a", 5)
    rows = [{"ua": 0.5, "wa": 0.6, "macro_f1": 0.4}, {"ua": 0.7, "wa": 0.6, "macro_f1": 0.5}]
    s = summarize(rows)
    assert s["mean"]["ua"] == pytest.approx(0.6) and s["std"]["ua"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert s["std"]["wa"] == 0.0 and summarize(rows[:1])["std"]["ua"] == 0.0


def test_cv_search_then_resume(replica, home, tmp_path, librosa_warm):
    out = tmp_path / "cv"
    args = ["--corpus", "iemocap", "--root", str(replica), "--out", str(out), "--epochs", "1",
            "--train-epochs", "1", *TINY_MODEL]
    result = _cv(*args, "--folds", "0,2")
    assert result.exit_code == 0, result.output
    res = json.loads((out / "cv_results.json").read_text())
    assert [r["fold"] for r in res["folds"]] == [0, 2] and res["protocol"] == "standard" and res["mode"] == "search"
    assert res["folds"][0]["test_speakers"] == ["Ses01F", "Ses01M"]
    for key in ("ua", "wa", "macro_f1"):
        vals = [r[key] for r in res["folds"]]
        assert res["mean"][key] == pytest.approx(np.mean(vals))
        assert res["std"][key] == pytest.approx(np.std(vals, ddof=1))
    for k in (0, 2):
        fold = out / f"fold_{k}"
        for name in ("genotype.json", "model.pt", "metrics.json", "fold.json", "checkpoint.pt"):
            assert (fold / name).is_file(), (k, name)
        m = json.loads((fold / "metrics.json").read_text())
        assert m["ua"] == res["folds"][[0, 2].index(k)]["ua"]
        spk = json.loads((fold / "fold.json").read_text())["speakers"]
        assert not set(spk["test"]) & (set(spk["train"]) | set(spk["dev"]))
    md = (out / "cv_results.md").read_text()
    assert md == format_results(res) + "\n"
    assert "| mean |" in md and "| std |" in md and "| 2 | Ses03F, Ses03M |" in md
    assert (out / "fold_counts.md").is_file() and json.loads((out / "fold_counts.json").read_text())["folds"]
    assert "UA %" in result.output

    # resume: the finished folds are skipped, the new one runs; an unfinished fold continues from its
    # checkpoints (here: everything but the evaluation was done)
    before = (out / "fold_0" / "metrics.json").stat().st_mtime_ns
    (out / "fold_2" / "metrics.json").unlink()
    lines_before = (out / "fold_2" / "metrics.jsonl").read_text()
    again = _cv("--resume", str(out), "--folds", "0,1,2")
    assert again.exit_code == 0, again.output
    assert "fold 0 (test Ses01): finished before" in again.output
    assert "fold 2 (test Ses03): finished before" not in again.output
    assert (out / "fold_0" / "metrics.json").stat().st_mtime_ns == before
    assert (out / "fold_2" / "metrics.jsonl").read_text() == lines_before  # no epoch was redone
    res2 = json.loads((out / "cv_results.json").read_text())
    assert [r["fold"] for r in res2["folds"]] == [0, 1, 2]
    assert res2["folds"][2]["ua"] == res["folds"][1]["ua"]
    assert json.loads((out / "cv.json").read_text())["folds"] == [0, 1, 2]

    bad = _cv("--resume", str(out), "--protocol", "paper-code")
    assert bad.exit_code == 2 and "resume it without" in bad.output

    # a given genotype on another fold list, in a new run
    gen_out = tmp_path / "cv_genotype"
    given = _cv("--corpus", "iemocap", "--root", str(replica), "--out", str(gen_out), "--epochs", "1",
                "--genotype", str(out / "fold_0" / "genotype.json"), "--folds", "1", "--protocol", "paper-code",
                *TINY_MODEL)
    assert given.exit_code == 0, given.output
    res3 = json.loads((gen_out / "cv_results.json").read_text())
    assert res3["mode"] == "genotype" and res3["protocol"] == "paper-code"
    assert res3["folds"][0]["test_speakers"] == ["Ses02M", "Ses03F"]
    assert not (gen_out / "fold_1" / "checkpoint.pt").exists()  # no search
    assert (gen_out / "fold_1" / "model.pt").is_file()
    assert json.loads((gen_out / "fold_1" / "genotype.json").read_text()) == \
        json.loads((out / "fold_0" / "genotype.json").read_text())


def test_cv_errors(replica, home, tmp_path):
    r = _cv("--corpus", "iemocap", "--root", str(replica), "--out", str(tmp_path / "a"), "--protocol", "nope")
    assert r.exit_code == 2 and "unknown protocol 'nope'" in r.output
    assert not (tmp_path / "a").exists()  # no run folder for a misspelt protocol
    r = _cv("--corpus", "iemocap", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert r.exit_code == 2 and "not found" in r.output
    r = _cv("--corpus", "iemocap", "--root", str(replica), "--out", str(tmp_path / "c"), "--genotype",
            str(tmp_path / "none.json"))
    assert r.exit_code == 2 and "genotype file not found" in r.output


def test_prepare_data_with_protocol_uses_fold_0(replica, tmp_path, librosa_warm):
    from emodarts.pipeline import prepare_data

    cfg = with_overrides(PRESETS["tiny"], corpus="iemocap", root=str(replica))
    data = prepare_data(cfg, progress=False, cache_dir=tmp_path / "cache", protocol="paper-code")
    proto_data = load_protocol_data("iemocap", replica, "tiny", "paper-code", cfg.seed, cache_dir=tmp_path / "cache",
                                    progress=False)
    fold0 = proto_data.folds[0]
    assert len(data.test) == len(fold0.split.test) and len(data.dev) == len(fold0.split.dev)
    assert data.classes == proto_data.classes
    # without a protocol: a seeded speaker split over the default protocol's utterances (as before)
    plain = prepare_data(cfg, progress=False, cache_dir=tmp_path / "cache")
    assert len(plain.train) + len(plain.dev) + len(plain.test) == \
        len(load_protocol_data("iemocap", replica, "tiny", None, 0, cache_dir=tmp_path / "cache",
                               progress=False).utts)
