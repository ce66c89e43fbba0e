"""Run files survive kills and read back clearly: torn JSON-lines logs, durable atomic writes, leftover
temporary files, file modes; plus the report's plots (curve labels, cell drawings) and too-short clips."""
import json
import os
import stat
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import random_run_data, small_run_config

import emodarts.features as F
import emodarts.runtime.files as eio
from emodarts.cli.commands import cli
from emodarts.data import Utterance
from emodarts.data.report import SkipReport
from emodarts.engine.checkpoint import save_checkpoint
from emodarts.engine.resume import truncate_jsonl
from emodarts.engine.search import run_search
from emodarts.model.space import CellGenotype, Genotype
from emodarts.report import cell_layout, curve_series, draw_cell, write_report
from emodarts.runtime.errors import DataError, EmodartsError

pytestmark = pytest.mark.usefixtures("one_thread")
LOGS = ("metrics.jsonl", "genotypes.jsonl", "alphas.jsonl")


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search epoch of the miniature configuration, with its config.json; resuming it under `cfg`
    (same settings, 1 epoch: nothing left to run) only opens the run folder."""
    run = tmp_path_factory.mktemp("run") / "r"
    cfg = small_run_config(epochs=1)
    run_search(cfg, random_run_data(), run, progress=False)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    return run, cfg


def _copy(run, dest):
    dest.mkdir()
    for p in run.iterdir():
        if p.is_file():
            (dest / p.name).write_bytes(p.read_bytes())
    return dest


# ------------------------------------------------------------------------------------ torn log lines
def test_resume_drops_torn_last_lines_and_says_so(searched, tmp_path, capsys):
    run, cfg = searched
    run = _copy(run, tmp_path / "r")
    for name in LOGS:
        with open(run / name, "a") as fh:
            fh.write('{"epoch": 1, "phase": "sea')  # a write cut off by a kill
    run_search(cfg, random_run_data(), run, resume=True, progress=False)
    err = capsys.readouterr().err
    for name in LOGS:
        assert [r["epoch"] for r in _lines(run / name)] == [0], name
        assert sum(str(run / name) in line and "cut off" in line for line in err.splitlines()) == 1, err


def test_malformed_line_names_file_and_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"phase": "search", "epoch": 0}\n{"phase": "sea\n{"phase": "search", "epoch": 1}\n')
    with pytest.raises(EmodartsError, match=r"metrics\.jsonl, line 2: not valid JSON"):
        truncate_jsonl(log, "search", 1)
    log.write_text('{"phase": "search", "epoch": 0}\n[1, 2]\n')
    with pytest.raises(EmodartsError, match=r"line 2: not a JSON object"):
        eio.read_jsonl(log)
    log.write_text('{"phase": "search"}\n')
    with pytest.raises(EmodartsError, match=r"line 1: no 'epoch' field"):
        truncate_jsonl(log, "search", 1)


def test_complete_last_line_without_newline_is_kept(tmp_path):
    log = tmp_path / "a.jsonl"
    log.write_text('{"epoch": 0}\n{"epoch": 1}')
    assert eio.read_jsonl(log) == ([{"epoch": 0}, {"epoch": 1}], False)
    log.write_text('{"epoch": 0}\n{"epo')
    assert eio.read_jsonl(log) == ([{"epoch": 0}], True)


def test_report_skips_torn_line_with_a_note(searched, tmp_path, capsys):
    run = _copy(searched[0], tmp_path / "r")
    for name in LOGS:
        with open(run / name, "a") as fh:
            fh.write('{"epoch": 1, "alpha_nor')
    md = write_report(run).read_text()
    err = capsys.readouterr().err
    assert "## Notes" in md and str(run / "metrics.jsonl") in md and str(run / "alphas.jsonl") in md
    assert "cut off" in err and str(run / "metrics.jsonl") in err


def test_report_command_malformed_line_is_one_line_error(searched, tmp_path):
    run = _copy(searched[0], tmp_path / "r")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write("garbage\n")
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "metrics.jsonl, line 2" in lines[0], result.output
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a run folder" in result.output


# ------------------------------------------------------------------------------ durable atomic writes
def test_atomic_write_fsyncs_file_before_rename_and_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(a, b):
        events.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(eio.os, "fsync", fsync)
    monkeypatch.setattr(eio.os, "replace", replace)
    save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1})
    assert events == ["fsync file", "rename", "fsync dir"]
    events.clear()
    eio.append_jsonl(tmp_path / "m.jsonl", {"epoch": 0})
    assert events == ["fsync file"]


# -------------------------------------------------------------------------- leftover temporary files
def test_resume_removes_temp_files_left_by_a_kill(searched, tmp_path):
    run, cfg = searched
    run = _copy(run, tmp_path / "r")
    stale = [run / ".checkpoint.pt.ab12cd34.tmp", run / ".genotype.json.k9_xq0zz.tmp"]
    kept = [run / ".notes.tmp", run / "mine.ab12cd34.tmp", run / ".genotype.json.short.tmp"]
    for p in stale + kept:
        p.write_text("x")
    (run / "sub").mkdir()
    (run / "sub" / ".checkpoint.pt.ab12cd34.tmp").write_text("x")
    run_search(cfg, random_run_data(), run, resume=True, progress=False)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and (run / "sub" / ".checkpoint.pt.ab12cd34.tmp").exists()


# ------------------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        eio.atomic_write_json(tmp_path / "config.json", {"a": 1})
        save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 0})
        folder = eio.make_temp_dir(tmp_path, "entry")
    finally:
        os.umask(old)
    for name in ("config.json", "checkpoint.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


# ------------------------------------------------------------------------------------------- report
def test_curve_labels_name_each_split_once():
    metrics = [{"phase": "search", "epoch": 0, "train_loss": 1.0, "alpha_loss": 1.1, "alpha_ua": 0.3},
               {"phase": "train", "epoch": 0, "train_loss": 0.9, "dev_loss": 1.0, "dev_ua": 0.4, "dev_wa": 0.4}]
    labels = [label for _, _, label, _, _ in curve_series(metrics)]
    assert labels == ["search (weight split) loss", "search (alpha split) loss", "search (alpha split) UA",
                      "final training (training split) loss", "final training (dev) loss",
                      "final training (dev) UA"]
    assert not any("train train" in label for label in labels)


LONG = CellGenotype(((("sep_conv_3x3", 0), ("dil_conv_5x5", 1)), (("sep_conv_5x5", 0), ("skip_connect", 2)),
                     (("max_pool_3x3", 1), ("dil_conv_3x3", 3)), (("sep_conv_3x3", 2), ("avg_pool_3x3", 4))))
DARTS_SEQ = CellGenotype(((("tanh", 0),), (("sigmoid", 1),), (("identity", 1),), (("relu", 3),)))


@pytest.mark.parametrize("genotype, kind", [(Genotype(LONG, LONG, LONG), "normal"),
                                            (Genotype(LONG, LONG, DARTS_SEQ, seq_space="darts"), "seq")])
def test_cell_labels_are_whole_and_apart(genotype, kind):
    import matplotlib.pyplot as plt

    fig = draw_cell(genotype, kind)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_gid() in ("op", "state")]
    n_ops = sum(len(node) for node in genotype.cell(kind).nodes)
    assert sum(t.get_gid() == "op" for t in texts) == n_ops
    boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in texts]
    for i, a in enumerate(boxes):
        assert a.x0 >= 0 and a.y0 >= 0 and a.x1 <= fig.bbox.x1 and a.y1 <= fig.bbox.y1, texts[i].get_text()
        for j in range(i):
            b = boxes[j]
            overlap = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
            assert min(overlap) <= 0, (texts[i].get_text(), texts[j].get_text())
    plt.close(fig)
    lay = cell_layout(genotype, kind)
    assert len({(x, y) for x, y, _ in lay.ops.values()}) == len(lay.ops)


# -------------------------------------------------------------------------------------- too-short clips
def _clips(folder, seconds):
    sf = pytest.importorskip("soundfile", reason="writes float WAV clips, which only soundfile writes")
    rng = np.random.default_rng(0)
    utts = []
    for i, s in enumerate(seconds):
        p = folder / f"c{i}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), (0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32), 16000, subtype="FLOAT")
        utts.append(Utterance(f"c{i}", str(p), "sad", "F01"))
    return utts


@pytest.fixture
def fake_mfcc(monkeypatch):
    """MFCC extraction without librosa (zeros of the right shape, after the real audio checks): fast."""
    def extract(path, cfg):
        F.read_audio(path)
        return np.zeros(cfg.shape, np.float32)

    monkeypatch.setattr(F.compute, "extract_mfcc", extract)


@pytest.mark.parametrize("backend", ["librosa", "torchaudio"])
def test_too_short_clip_is_reported_not_padded(tmp_path, fake_mfcc, backend):
    if backend == "torchaudio":
        pytest.importorskip("torchaudio")
    utts = _clips(tmp_path / "audio", [0.5, 0.05, 0.4])
    report = SkipReport()
    fs = F.build_features(utts, F.FEATURE_PRESETS["tiny"], tmp_path / "cache", progress=False, report=report,
                          extractor=backend, device="cpu")
    assert fs.utt_ids == ["c0", "c2"]
    (entry,) = report.skipped
    assert entry["kind"] == "too-short" and entry["file"] == utts[1].path
    assert utts[1].path in entry["reason"] and "0.050 s" in entry["reason"] and "0.25 s" in entry["reason"]
    assert "audio shorter than the minimum duration" in report.summary()
    with pytest.raises(DataError, match="too short"):  # without a report: an error naming the file
        F.build_features(utts, F.FEATURE_PRESETS["tiny"], tmp_path / "cache2", progress=False, extractor=backend,
                         device="cpu")


def test_min_duration_setting_keys_the_cache(tmp_path, fake_mfcc):
    utts = _clips(tmp_path / "audio", [0.5, 0.05])
    tiny = F.FEATURE_PRESETS["tiny"]
    assert tiny.min_duration_s == F.MIN_DURATION_S == 0.25
    low = F.feature_config("tiny", 0.01)
    assert low.min_duration_s == 0.01 and low.key() != tiny.key() and F.feature_config("tiny") == tiny
    assert len(F.build_features(utts, low, tmp_path / "cache", progress=False)) == 2
    assert len(F.build_features(utts, tiny, tmp_path / "cache", progress=False, report=SkipReport())) == 1
    with pytest.raises(DataError, match="0 s or more"):
        F.feature_config("tiny", -1.0)


def _csv_corpus_with_a_short_clip(tmp_path):
    sf = pytest.importorskip("soundfile", reason="writes its clips with soundfile")
    from replicas import make_csv_corpus

    manifest, recs = make_csv_corpus(tmp_path / "corpus", n_speakers=8, per_speaker=4)  # every class per speaker
    short = tmp_path / "corpus" / recs[0]["rel"]
    sf.write(str(short), np.zeros(800, np.float32), 16000, subtype="PCM_16")  # 0.05 s
    return manifest, short, len(recs)


def test_run_config_min_duration_reaches_the_features(tmp_path, fake_mfcc, monkeypatch):
    from emodarts.engine.config import PRESETS
    from emodarts.engine.pipeline import prepare_data

    manifest, short, n = _csv_corpus_with_a_short_clip(tmp_path)
    monkeypatch.setenv("EMODARTS_HOME", str(tmp_path / "home"))
    sizes = {}
    for md in (None, 0.01):
        cfg = replace(PRESETS["tiny"], corpus="csv", root=str(manifest), min_duration=md)
        data = prepare_data(cfg, progress=False, report_dir=tmp_path / f"run{md}")
        sizes[md] = sum(len(getattr(data, s)) for s in ("train", "dev", "test"))
    assert sizes == {None: n - 1, 0.01: n}
    skipped = (tmp_path / "runNone" / "skipped_files.csv").read_text()
    assert "too-short" in skipped and str(short) in skipped


def test_min_duration_option_of_the_commands(tmp_path, fake_mfcc):
    for command in ("search", "train", "run", "cv", "features"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert "--min-duration" in result.output, command
    manifest, short, n = _csv_corpus_with_a_short_clip(tmp_path)
    base = ["features", "--corpus", "csv", "--root", str(manifest), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 0, result.output
    assert f"features: {n - 1} utterances" in result.output and "too short" in result.output
    result = CliRunner().invoke(cli, base + ["--min-duration", "0.01"])
    assert result.exit_code == 0, result.output
    assert f"features: {n} utterances" in result.output
    assert len(list((tmp_path / "cache").glob(F.FEATURE_PRESETS["tiny"].key() + "-*"))) == 1  # another entry
    from emodarts.cli.commands import build_config

    cfg = build_config("search", {"corpus": "csv", "root": manifest, "preset": "tiny", "min_duration": 0.5})
    assert cfg.min_duration == 0.5
