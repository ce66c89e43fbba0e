"""The command line's checks before a run folder exists (device, genotype, corpus names), the folder's
lifecycle when a run fails, --resume with other options, doctor's exit status and the build message."""
import json
import logging
import os
import time
from pathlib import Path

import pytest
import torch
from helpers import invoke_cli, one_error_line
from replicas import make_csv_corpus

from emodarts.engine.config import PRESETS, with_overrides

TINY_CNN = ("sep_conv_3x3", "max_pool_3x3", "skip_connect", "dil_conv_3x3", "avg_pool_3x3")


def _genotype(cnn_nodes: int = 3, seq=None, seq_space: str = "emodarts", tiny: bool = False) -> dict:
    """A genotype with `cnn_nodes` nodes per CNN cell; unless `tiny`, sep_conv_5x5 and lstm_3 are outside
    the tiny preset's candidates (as from a search with other candidates)."""
    cell = [[[TINY_CNN[i % 5], 0], ["sep_conv_5x5" if i == 0 and not tiny else "skip_connect", i + 1]]
            for i in range(cnn_nodes)]
    seq = seq or [[["lstm_1" if tiny else "lstm_3", 0], ["skip_connect", 1]], [["rnn_1", 2], ["lstm_1", 0]]]
    return {"format": "emodarts-genotype/1", "seq_space": seq_space, "normal": cell, "reduce": cell, "seq": seq}


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def csv_corpus(tmp_path, monkeypatch):
    """8 speakers x 4 utterances in a CSV manifest, with a private feature cache."""
    monkeypatch.setenv("EMODARTS_HOME", str(tmp_path / "home"))
    manifest, _ = make_csv_corpus(tmp_path / "corpus", n_speakers=8, per_speaker=4)
    return manifest


def _no_data(monkeypatch):
    """Fail the test if a command loads data (the check under test must come first)."""
    import emodarts.engine.pipeline

    monkeypatch.setattr(emodarts.engine.pipeline, "prepare_data", lambda *a, **k: pytest.fail("data were loaded"))


# ----------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["cuda:99", "nvidia", "cuda"])
def test_unusable_device_is_refused_before_the_run_folder(device, tmp_path, monkeypatch):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    _no_data(monkeypatch)
    for command in ("search", "run"):
        result = invoke_cli(command, "--device", device, "--out", str(tmp_path / "r"), "--no-progress")
        assert device in one_error_line(result)
        assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ the run folder lifecycle
def test_too_few_speakers_leaves_no_folder_and_the_retry_gets_the_same_error(tmp_path, monkeypatch, librosa_warm):
    monkeypatch.setenv("EMODARTS_HOME", str(tmp_path / "home"))
    manifest, _ = make_csv_corpus(tmp_path / "corpus", n_speakers=3, per_speaker=2)
    out = tmp_path / "r"
    args = ["search", "--corpus", "csv", "--root", str(manifest), "--out", str(out), "--no-progress"]
    for _ in range(2):  # the same --out again: the same error, not "already holds a run"
        assert "speakers cannot give" in one_error_line(invoke_cli(*args))
        assert not out.exists()


def test_a_failed_run_keeps_its_skipped_files_report_and_allows_a_retry(tmp_path, monkeypatch, librosa_warm):
    """Unreadable files leave too few speakers: the run is discarded, but the report of what was skipped
    (which says why) stays, and the same --out can be retried."""
    monkeypatch.setenv("EMODARTS_HOME", str(tmp_path / "home"))
    manifest, records = make_csv_corpus(tmp_path / "corpus", n_speakers=4, per_speaker=2)
    for rec in records:
        if rec["speaker"] == records[0]["speaker"]:
            (manifest.parent / rec["rel"]).write_bytes(b"not audio")
    out = tmp_path / "r"
    args = ["search", "--corpus", "csv", "--root", str(manifest), "--out", str(out), "--no-progress"]
    for _ in range(2):
        assert "speakers cannot give" in one_error_line(invoke_cli(*args))
        assert sorted(p.name for p in out.iterdir()) == ["skipped_files.csv", "skipped_files.json"]


def test_a_given_folder_keeps_its_own_files_after_a_failure(tmp_path, monkeypatch):
    import emodarts.engine.pipeline
    from emodarts.runtime.errors import DataError

    def fail(*a, **k):
        raise DataError("no usable utterances")

    monkeypatch.setattr(emodarts.engine.pipeline, "prepare_data", fail)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "no usable utterances" in one_error_line(invoke_cli("search", "--out", str(out), "--no-progress"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_interrupt_names_the_run_folder(tmp_path, monkeypatch):
    import emodarts.engine.pipeline
    import emodarts.engine.search

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(emodarts.engine.pipeline, "prepare_data", interrupt)
    out = tmp_path / "r"
    result = invoke_cli("search", "--out", str(out), "--no-progress")
    assert result.exit_code == 130 and f"run folder: {out}" in result.output
    assert f"the run in {out} was discarded" in result.output and "RUN_DIR" not in result.output
    assert not out.exists()

    def checkpoint_then_interrupt(cfg, data, run_dir, **k):
        (run_dir / "checkpoint.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(emodarts.engine.pipeline, "prepare_data", lambda *a, **k: None)
    monkeypatch.setattr(emodarts.engine.search, "run_search", checkpoint_then_interrupt)
    result = invoke_cli("search", "--out", str(out), "--no-progress")
    assert result.exit_code == 130 and f"continue with --resume {out}" in result.output
    assert (out / "config.json").is_file()


def test_train_without_genotype_makes_no_folder(tmp_path, monkeypatch):
    _no_data(monkeypatch)
    assert "--genotype" in one_error_line(invoke_cli("train", "--out", str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


def test_unknown_corpus_makes_no_folder(tmp_path):
    assert "unknown corpus" in one_error_line(invoke_cli("run", "--corpus", "nope", "--out", str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------- genotypes of other spaces
def test_train_takes_the_cells_from_the_genotype(tmp_path, csv_corpus, librosa_warm):
    g = _write(tmp_path / "g.json", _genotype(cnn_nodes=3))
    out = tmp_path / "t"
    result = invoke_cli("train", "--corpus", "csv", "--root", str(csv_corpus), "--genotype", str(g), "--epochs", "1",
                     "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["cnn_nodes"] == 3 and model["seq_nodes"] == 2 and (out / "model.pt").is_file()


def test_genotype_that_does_not_fit_the_options_is_refused_before_data(tmp_path, monkeypatch):
    _no_data(monkeypatch)
    g = _write(tmp_path / "g.json", _genotype(cnn_nodes=3))
    line = one_error_line(invoke_cli("train", "--genotype", str(g), "--cnn-nodes", "2", "--out", str(tmp_path / "r")))
    assert str(g) in line and "'normal' has 3 nodes" in line and "cnn_nodes" in line
    darts = _write(tmp_path / "d.json", _genotype(seq=[[["relu", 0]], [["tanh", 1]]], seq_space="darts"))
    line = one_error_line(invoke_cli("train", "--genotype", str(darts), "--seq-space", "emodarts",
                                   "--out", str(tmp_path / "r")))
    assert str(darts) in line and "seq_space" in line
    assert not (tmp_path / "r").exists()


def test_cv_takes_the_cells_from_the_genotype(tmp_path, monkeypatch):
    import emodarts.engine.cv

    seen = {}

    def fake_run_cv(cfg, run_dir, **k):
        seen["model"] = cfg.model
        raise KeyboardInterrupt

    monkeypatch.setattr(emodarts.engine.cv, "run_cv", fake_run_cv)
    g = _write(tmp_path / "g.json", _genotype(cnn_nodes=3))
    result = invoke_cli("cv", "--genotype", str(g), "--out", str(tmp_path / "c"), "--no-progress")
    assert result.exit_code == 130 and seen["model"].cnn_nodes == 3, result.output
    line = one_error_line(invoke_cli("cv", "--genotype", str(g), "--cnn-nodes", "4", "--out", str(tmp_path / "c")))
    assert str(g) in line and "cnn_nodes" in line


# ----------------------------------------------------------------------------------------- --resume
def _run_folder(tmp_path, corpus=None, genotype=True):
    run = tmp_path / "run"
    run.mkdir()
    cfg = PRESETS["tiny"]
    if corpus is not None:
        cfg = with_overrides(cfg, corpus="csv", root=str(corpus))
    _write(run / "config.json", cfg.to_dict())
    if genotype:
        _write(run / "genotype.json", _genotype(cnn_nodes=2, tiny=True))
    return run


def test_resume_refuses_other_settings(tmp_path, monkeypatch):
    _no_data(monkeypatch)
    run = _run_folder(tmp_path)
    line = one_error_line(invoke_cli("search", "--resume", str(run), "--epochs", "6", "--seed", "99", "--preset",
                                   "paper"))
    assert "resume it without --preset, --seed" in line and "--epochs," not in line.split("(")[0]
    line = one_error_line(invoke_cli("train", "--resume", str(run), "--genotype", str(run / "genotype.json")))
    assert "without --genotype" in line
    assert "--seed" not in invoke_cli("search", "--resume", str(run), "--device", "gpu").output  # a run-time choice
    resume_help = invoke_cli("train", "--help").output.split("--resume PATH")[1].split("--epochs INTEGER")[0]
    assert "only --epochs, --train-epochs, --device, --fused" in " ".join(resume_help.split())


def test_resume_honours_epochs(tmp_path, csv_corpus, librosa_warm):
    run = _run_folder(tmp_path, corpus=csv_corpus)  # a search folder: config.json and genotype.json
    result = invoke_cli("train", "--resume", str(run), "--epochs", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["phase"] == "train"] == [0]
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 1  # kept for a later resume


@pytest.mark.parametrize("text, expected", [("{not json", "not valid JSON"),
                                            ('{"model": {"cnn_nodes": "two"}}', "'model.cnn_nodes'"),
                                            ('["a list"]', "expected a JSON object")])
def test_malformed_config_on_resume_is_one_line(tmp_path, monkeypatch, text, expected):
    _no_data(monkeypatch)
    run = _run_folder(tmp_path)
    (run / "config.json").write_text(text)
    for args in (["search", "--resume", str(run)], ["evaluate", str(run)]):
        line = one_error_line(invoke_cli(*args))
        assert str(run / "config.json") in line and expected in line


# ----------------------------------------------------------------------------------- small things
def test_threads_option_is_applied_first(tmp_path, monkeypatch):
    import emodarts.runtime.threads

    seen = []
    monkeypatch.setattr(emodarts.runtime.threads, "apply_threads", lambda n: seen.append(n) or (n or 1))
    for args in (["search"], ["train"], ["run"], ["cv"], ["compare"]):
        invoke_cli(*args, "--threads", "3", "--device", "gpu")
    assert seen == [3] * 5


def _rows(extension_ok: bool):
    return [("torch", True, "x", ""), ("CUDA device", False, "none", ""), ("triton", True, "x", ""),
            ("C++ extension (CPU)", extension_ok, "built" if extension_ok else "no compiler", ""),
            ("CUDA kernels (fused)", False, "not built", "")]


@pytest.mark.parametrize("ext_ok, args, code", [
    (False, [], 0), (False, ["--fused"], 1), (True, ["--fused"], 0), (True, ["--device", "cuda:99"], 1),
    (True, ["--device", "cpu"], 0), (True, ["--device", "cuda:0", "--fused"], 1)])
def test_doctor_exits_1_when_what_was_asked_for_is_missing(monkeypatch, ext_ok, args, code):
    import emodarts.cli.doctor

    monkeypatch.setattr(emodarts.cli.doctor, "checks", lambda: _rows(ext_ok))
    result = invoke_cli("doctor", *args)
    assert result.exit_code == code, result.output
    assert ("unavailable:" in result.output) == bool(code)


def test_build_message_only_when_the_extension_is_built(tmp_path, monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp

    from emodarts.ops.compiled import cpp as compiled_cpp

    monkeypatch.setenv("EMODARTS_EXT_DIR", str(tmp_path))
    monkeypatch.setattr(cpp, "load", lambda **k: "module")
    assert compiled_cpp._jit_build(ImportError("not installed")) == "module"
    assert "building the C++ extension (about a minute)..." in capsys.readouterr().err
    lib = Path(compiled_cpp.build_dir()) / f"{compiled_cpp.JIT_NAME}.so"  # a cached build, newer than the sources
    lib.write_bytes(b"")
    os.utime(lib, (time.time() + 3600, time.time() + 3600))
    assert compiled_cpp._jit_build(ImportError("not installed")) == "module"
    assert "building" not in capsys.readouterr().err


def test_no_cuda_runtime_warning_is_silenced():
    from emodarts.ops.compiled.cpp import cpp_extension

    cpp_extension()
    logger = logging.getLogger("torch.utils.cpp_extension")  # torch's loggers do not propagate to the root
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("another warning")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["another warning"]
