"""`emodarts cv`: per-fold search/train/evaluate on a tiny IEMOCAP replica, the results table, resume, a
given genotype; fold data preparation."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from replicas import make_iemocap

from emodarts.cli.commands import cli
from emodarts.engine.config import PRESETS, with_overrides
from emodarts.engine.cv import (
    format_results,
    load_protocol_data,
    parse_folds,
    prepare_fold_data,
    summarize,
)
from emodarts.runtime.errors import DataError

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

    assert light.search_w.x.shape[1:] == rd.search_w.x.shape[1:] and light.search_w.y.dtype == torch.int64


def test_run_data_has_one_home():
    """RunData and class_list are defined once; their former homes still hand out the same objects."""
    import emodarts.data.counts as counts
    import emodarts.engine.pipeline as pipeline
    import emodarts.engine.run_data as run_data

    assert pipeline.class_list is counts.class_list and pipeline.split_summary is run_data.split_summary

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
    stale = out / ".cv_results.json.0a1b2c3d.tmp"  # what a kill during an atomic write leaves
    stale.write_text("{")
    again = _cv("--resume", str(out), "--folds", "0,1,2")
    assert not stale.exists()
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

    # any fold is a run folder: its config.json records the protocol and the fold; evaluate gives the fold's
    # metrics again, predict and report work on it
    fold_cfg = json.loads((out / "fold_2" / "config.json").read_text())
    assert fold_cfg["fold"] == 2 and fold_cfg["protocol"] == "standard"
    assert json.loads((out / "config.json").read_text())["fold"] == 0
    expected = json.loads((out / "fold_2" / "metrics.json").read_text())
    ev = CliRunner().invoke(cli, ["evaluate", str(out / "fold_2"), "--no-progress"])
    assert ev.exit_code == 0, ev.output
    got = json.loads((out / "fold_2" / "metrics.json").read_text())
    assert got["ua"] == expected["ua"] and got["confusion"] == expected["confusion"]
    wav = str(next(replica.rglob("*.wav")))
    pred = CliRunner().invoke(cli, ["predict", str(out / "fold_2"), wav, "--json"])
    assert pred.exit_code == 0, pred.output
    assert json.loads(pred.output)[0]["label"] in res["classes"]
    assert CliRunner().invoke(cli, ["report", str(out / "fold_2")]).exit_code == 0

    # a fold folder of an older version: no config.json of its own, checkpoints under the cv run's
    # configuration (no fold, the search split as weight_fraction, no aux_weight)
    legacy = json.loads((out / "config.json").read_text())
    legacy.pop("classes")  # recorded since; older versions did not
    legacy.pop("fold")
    legacy["train"].pop("aux_weight")
    legacy["search"]["weight_fraction"] = 1 - legacy["search"].pop("alpha_split")
    (out / "config.json").write_text(json.dumps(legacy))
    (out / "fold_1" / "config.json").unlink()
    state = torch.load(out / "fold_1" / "model.pt", weights_only=False)
    state["config"] = legacy
    torch.save(state, out / "fold_1" / "model.pt")
    expected = json.loads((out / "fold_1" / "metrics.json").read_text())
    ev = CliRunner().invoke(cli, ["evaluate", str(out / "fold_1"), "--no-progress"])
    assert ev.exit_code == 0, ev.output
    assert json.loads((out / "fold_1" / "metrics.json").read_text())["ua"] == expected["ua"]
    assert not (out / "fold_1" / "config.json").exists()
    pred = CliRunner().invoke(cli, ["predict", str(out / "fold_1"), wav])
    assert pred.exit_code == 0, pred.output


def test_cv_errors(replica, home, tmp_path):
    r = _cv("--corpus", "iemocap", "--root", str(replica), "--out", str(tmp_path / "a"), "--protocol", "nope")
    assert r.exit_code == 2 and "unknown protocol 'nope'" in r.output
    assert not (tmp_path / "a").exists()  # no run folder for a misspelt protocol
    r = _cv("--corpus", "iemocap", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert r.exit_code == 2 and "not found" in r.output
    r = _cv("--corpus", "iemocap", "--root", str(replica), "--out", str(tmp_path / "c"), "--genotype",
            str(tmp_path / "none.json"))
    assert r.exit_code == 2 and "genotype file not found" in r.output


def test_prepare_data_follows_the_fold_and_the_alpha_split(replica, tmp_path, librosa_warm):
    from emodarts.engine.pipeline import prepare_data

    cache = tmp_path / "cache"
    cfg = with_overrides(PRESETS["tiny"], corpus="iemocap", root=str(replica), protocol="standard")
    proto_data = load_protocol_data("iemocap", replica, "tiny", "standard", cfg.seed, cache_dir=cache, progress=False)
    for k in (0, 3):
        data = prepare_data(with_overrides(cfg, fold=k), progress=False, cache_dir=cache)
        ref = prepare_fold_data(cfg, proto_data.folds[k], proto_data.features, proto_data.classes)
        for part in ("train", "dev", "test", "search_w", "search_a"):
            assert torch.equal(getattr(data, part).x, getattr(ref, part).x), (k, part)
    with pytest.raises(DataError, match="folds 0..4; the run asks for fold 5"):
        prepare_data(with_overrides(cfg, fold=5), progress=False, cache_dir=cache)

    half = prepare_data(cfg, progress=False, cache_dir=cache)
    published = with_overrides(cfg, search=with_overrides(cfg.search, alpha_split=0.8))
    data = prepare_data(published, progress=False, cache_dir=cache)
    n = len(data.train)
    assert len(data.search_w) + len(data.search_a) == n == len(half.search_w) + len(half.search_a)
    assert len(data.search_a) > len(half.search_a)
    assert abs(len(data.search_a) - 0.8 * n) <= len(data.classes)
    again = prepare_data(published, progress=False, cache_dir=cache)  # deterministic for a seed
    assert torch.equal(again.search_a.x, data.search_a.x)
    fold = prepare_fold_data(published, proto_data.folds[0], proto_data.features, proto_data.classes)
    assert torch.equal(fold.search_a.x, data.search_a.x)  # cv cuts its folds' search data the same way


def test_prepare_data_with_protocol_uses_fold_0(replica, tmp_path, librosa_warm):
    from emodarts.engine.pipeline import prepare_data

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
