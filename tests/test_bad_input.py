"""Bad input: every case gets a message naming the file, the run goes on with the rest, a skipped-files
report is written, and only a corpus with nothing usable left stops with an error."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from replicas import make_csv_corpus, make_iemocap, make_msp_podcast, tiny_wav

import emodarts.features as F
from emodarts.cli.commands import cli
from emodarts.data.registry import load_protocol
from emodarts.data.report import SkipReport, read_report
from emodarts.engine.cv import load_protocol_data
from emodarts.features import FEATURE_PRESETS, extract_mfcc, read_audio
from emodarts.runtime.errors import DataError

sf = pytest.importorskip("soundfile", reason="these tests write audio in formats (and read headers) that only soundfile "
                         "handles; the GPU machine has none")

TINY = FEATURE_PRESETS["tiny"]


@pytest.fixture
def iemocap(tmp_path):
    """A fresh IEMOCAP replica (1 utterance per speaker and dialog: 30 files) per test."""
    recs = make_iemocap(tmp_path / "corpus", per_speaker=1)
    usable = [r for r in recs if r["label"] in ("neu", "hap", "exc", "ang", "sad")]
    return tmp_path / "corpus", recs, usable


def _run(root, tmp_path, corpus="iemocap"):
    report = SkipReport()
    data = load_protocol_data(corpus, root, "tiny", None, 0, cache_dir=tmp_path / "cache", progress=False,
                              report=report)
    return data, report


def _only(report, kind, action="skipped"):
    hits = [e for e in report.entries if e["kind"] == kind and e["action"] == action]
    assert len(hits) == 1, report.entries
    assert len([e for e in report.entries if e["action"] == "skipped"]) == (1 if action == "skipped" else 0), \
        report.entries
    return hits[0]


def _audio_case(iemocap, tmp_path, librosa_warm, kind, damage):
    root, _, usable = iemocap
    victim = Path(usable[0]["path"])
    damage(victim)
    data, report = _run(root, tmp_path)
    entry = _only(report, kind)
    assert str(victim) in entry["reason"] and entry["file"] == str(victim)
    assert len(data.utts) == len(usable) - 1 and victim.stem not in data.features
    # the entry remembers the skipped file: a second run reports it again without re-reading the audio
    again = SkipReport()
    load_protocol_data("iemocap", root, "tiny", None, 0, cache_dir=tmp_path / "cache", progress=False, report=again)
    assert again.entries == report.entries
    return entry


# ----------------------------------------------------------------------------------- damaged audio
def test_unreadable_wav(iemocap, tmp_path, librosa_warm):
    e = _audio_case(iemocap, tmp_path, librosa_warm, "unreadable",
                    lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00garbage-garbage"))
    assert "cannot read audio file" in e["reason"]


def test_non_audio_file(iemocap, tmp_path, librosa_warm):
    e = _audio_case(iemocap, tmp_path, librosa_warm, "unreadable",
                    lambda p: p.write_text("this is a transcript, not audio\n" * 5))
    assert "not audio" in e["reason"]


def test_empty_file(iemocap, tmp_path, librosa_warm):
    e = _audio_case(iemocap, tmp_path, librosa_warm, "empty", lambda p: p.write_bytes(b""))
    assert "0 bytes" in e["reason"]


def test_wav_without_samples(iemocap, tmp_path, librosa_warm):
    e = _audio_case(iemocap, tmp_path, librosa_warm, "empty",
                    lambda p: sf.write(str(p), np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16"))
    assert "no samples" in e["reason"]


def test_truncated_wav(iemocap, tmp_path, librosa_warm):
    def cut(p):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) - 100])

    e = _audio_case(iemocap, tmp_path, librosa_warm, "truncated", cut)
    assert "header declares 9600 bytes" in e["reason"] and "holds 9500" in e["reason"]


def test_nan_samples(iemocap, tmp_path, librosa_warm):
    def nan(p):
        y = np.full(100, np.nan, dtype=np.float32)
        sf.write(str(p), y, 16000, subtype="FLOAT")

    _audio_case(iemocap, tmp_path, librosa_warm, "not-finite", nan)


# -------------------------------------------------------------------- unusual but usable audio
def test_unexpected_sample_rates_are_resampled(iemocap, tmp_path, librosa_warm):
    root, _, usable = iemocap
    low, high = Path(usable[0]["path"]), Path(usable[1]["path"])
    tiny_wav(low, 1, sr=8000, n=2400)
    tiny_wav(high, 2, sr=44100, n=13230)
    data, report = _run(root, tmp_path)
    notes = [e for e in report.entries if e["kind"] == "resampled"]
    assert not report.skipped and len(data.utts) == len(usable)
    assert sorted(e["file"] for e in notes) == sorted([str(low), str(high)])
    assert any("8000 Hz differs from the corpus's usual 16000 Hz" in e["reason"] for e in notes)
    for p in (low, high):
        np.testing.assert_array_equal(data.features[p.stem], extract_mfcc(p, TINY))
    assert json.loads((data.features.path / "index.json").read_text())["audio"]["sample_rates"] == \
        {"16000": len(usable) - 2, "44100": 1, "8000": 1}


def test_stereo_is_mixed_down(iemocap, tmp_path, librosa_warm):
    root, _, usable = iemocap
    st = Path(usable[0]["path"])
    tiny_wav(st, 5, channels=2, subtype="FLOAT")
    data, report = _run(root, tmp_path)
    e = _only(report, "mixed-down", action="kept")
    assert str(st) in e["reason"] and "2 channels" in e["reason"]
    y, sr, facts = read_audio(st)
    both, _ = sf.read(str(st), dtype="float32")
    np.testing.assert_allclose(y, both.mean(axis=1), atol=1e-7)
    mono = tmp_path / "mono.wav"
    sf.write(str(mono), both.mean(axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(data.features[st.stem], extract_mfcc(mono, TINY), atol=1e-4)


@pytest.mark.parametrize("subtype, rel", [("PCM_U8", 2e-3), ("PCM_24", 1e-6), ("FLOAT", 1e-6), ("DOUBLE", 1e-6),
                                          ("PCM_32", 1e-6)])
def test_bit_depths_and_float(tmp_path, subtype, rel, librosa_warm):
    ref = extract_mfcc(tiny_wav(tmp_path / "ref.wav", 3, subtype="FLOAT"), TINY)
    y, sr, facts = read_audio(tiny_wav(tmp_path / "x.wav", 3, subtype=subtype))
    assert facts["subtype"] == subtype and y.dtype == np.float32 and np.abs(y).max() <= 1.0
    m = extract_mfcc(tmp_path / "x.wav", TINY)
    assert np.sqrt(((m - ref) ** 2).mean()) <= rel * np.sqrt((ref ** 2).mean())


# ----------------------------------------------------------------------------------------- labels
def test_unknown_label(iemocap, tmp_path):
    root, _, usable = iemocap
    r = usable[0]
    lf = Path(r["label_file"])
    lf.write_text(lf.read_text().replace(f"{r['utt_id']}\t{r['label']}\t", f"{r['utt_id']}\thapy\t"))
    utts, _, _ = load_protocol("iemocap", root, 0, report := SkipReport())
    e = _only(report, "unknown-label")
    assert f"{lf}:" in e["reason"] and "'hapy'" in e["reason"] and r["path"] in e["reason"]
    assert len(utts) == len(usable) - 1


def test_missing_label_file(iemocap, tmp_path):
    root, recs, usable = iemocap
    lf = Path(recs[0]["label_file"])
    lf.unlink()
    utts, _, _ = load_protocol("iemocap", root, 0, report := SkipReport())
    lost = [r for r in recs if r["label_file"] == str(lf)]
    assert {e["file"] for e in report.skipped} == {r["path"] for r in lost}
    assert all(e["kind"] == "missing-label-file" and str(lf) in e["reason"] for e in report.skipped)
    assert len(utts) == len(usable) - sum(1 for r in lost if r in usable)


def test_label_line_without_audio(iemocap, tmp_path):
    root, _, usable = iemocap
    gone = Path(usable[0]["path"])
    gone.unlink()
    utts, _, _ = load_protocol("iemocap", root, 0, report := SkipReport())
    e = _only(report, "no-audio")
    assert e["file"] == str(gone) and usable[0]["label_file"] in e["reason"] and "missing" in e["reason"]
    assert len(utts) == len(usable) - 1


def test_audio_without_label(iemocap, tmp_path):
    root, recs, usable = iemocap
    extra = Path(recs[0]["path"]).parent / "Ses01F_impro01_F099.wav"
    tiny_wav(extra, 77)
    utts, _, _ = load_protocol("iemocap", root, 0, report := SkipReport())
    e = _only(report, "no-label")
    assert e["file"] == str(extra) and recs[0]["label_file"] in e["reason"]
    assert len(utts) == len(usable)


def test_msp_podcast_label_problems(tmp_path):
    make_msp_podcast(tmp_path, n_speakers=4, per_speaker=3, n_unknown=0)
    root = tmp_path / "MSP-Podcast"
    label_csv = root / "Labels" / "labels_consensus.csv"
    rows = list(csv.reader(label_csv.open()))
    rows[1][1] = "Q"  # unknown EmoClass
    rows.append(["MSP-PODCAST_9999_0001.wav", "N", "3", "3", "3", "100", "Female", "Train"])  # no audio
    with label_csv.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    tiny_wav(root / "Audios" / "MSP-PODCAST_8888_0001.wav", 1)  # no label row
    report = SkipReport()
    load_protocol("msp-podcast", root, 0, report, "speakers")
    kinds = {e["kind"]: e for e in report.skipped}
    assert set(kinds) == {"unknown-label", "no-audio", "no-label"}
    assert f"{label_csv}:2:" in kinds["unknown-label"]["reason"] and "'Q'" in kinds["unknown-label"]["reason"]
    assert "MSP-PODCAST_9999_0001.wav" in kinds["no-audio"]["reason"]
    assert kinds["no-label"]["file"].endswith("MSP-PODCAST_8888_0001.wav")
    label_csv.unlink()
    with pytest.raises(DataError, match="label file missing.*labels_consensus.csv"):
        load_protocol("msp-podcast", root, 0, SkipReport())


def test_csv_bad_rows_are_skipped(tmp_path):
    manifest, recs = make_csv_corpus(tmp_path / "c", n_speakers=4, per_speaker=2)
    tiny_wav(manifest.parent / "wav" / "F01" / "9.wav", 9)
    with manifest.open("a") as fh:
        fh.write("wav/F01/9.wav,bored,F01,S1,train\n")  # a label no class of --labels takes (line 10)
        fh.write("wav/F01/missing.wav,sad,F01,S1,train\n")  # no audio (line 11)
    report = SkipReport()
    utts = load_protocol("csv", manifest, 0, report, labels=("angry", "happy", "neutral", "sad"))[0]
    assert len(utts) == len(recs)
    kinds = {e["kind"]: e["reason"] for e in report.skipped}
    assert "label 'bored' is in no class of --labels angry,happy,neutral,sad" in kinds["label-not-selected"]
    assert f"{manifest}:11: audio file not found" in kinds["no-audio"]
    # without --labels every label of a manifest is a class
    utts = load_protocol("csv", manifest, 0, SkipReport())[0]
    assert len(utts) == len(recs) + 1 and "bored" in {u.label for u in utts}


def test_msp_improv_bad_names_and_letters(tmp_path):
    from replicas import make_msp_improv

    make_msp_improv(tmp_path, with_labels=False, scenarios=("R",))
    base = tmp_path / "MSP-IMPROV" / "Audio" / "session1"
    tiny_wav(base / "notes.wav", 1)  # not the naming convention
    tiny_wav(base / "S01Z" / "R" / "MSP-IMPROV-S01Z-F01-R-FM01.wav", 2)  # unknown target letter
    report = SkipReport()
    load_protocol("msp-improv", tmp_path / "MSP-IMPROV", 0, report)
    kinds = {e["kind"]: e for e in report.skipped}
    assert set(kinds) == {"bad-name", "unknown-label"}
    assert kinds["bad-name"]["file"].endswith("notes.wav") and "'Z'" in kinds["unknown-label"]["reason"]


# ----------------------------------------------------------------------------------- whole runs
def test_nothing_usable_is_an_error(iemocap, tmp_path, librosa_warm):
    root, recs, usable = iemocap
    for r in recs:
        Path(r["path"]).write_text("not audio")
    with pytest.raises(DataError, match="none of the .* audio files could be used"):
        _run(root, tmp_path)
    shutil.rmtree(root / "IEMOCAP_full_release" / "Session1" / "dialog")
    for s in range(2, 6):
        shutil.rmtree(root / "IEMOCAP_full_release" / f"Session{s}")
    with pytest.raises(DataError, match="no usable utterances") as err:
        load_protocol("iemocap", root, 0, SkipReport())
    assert "label file missing" in str(err.value)


def test_features_command_reports_every_problem(iemocap, tmp_path, monkeypatch, librosa_warm):
    root, recs, usable = iemocap
    Path(usable[0]["path"]).write_text("not audio")  # unreadable
    Path(usable[1]["path"]).write_bytes(b"")  # empty
    tiny_wav(Path(usable[2]["path"]), 3, sr=22050, n=6615)  # resampled
    tiny_wav(Path(usable[3]["path"]), 4, channels=2)  # stereo
    tiny_wav(Path(usable[4]["path"]), 5, subtype="PCM_24")  # fine
    Path(usable[5]["path"]).unlink()  # label line without audio
    tiny_wav(Path(recs[0]["path"]).parent / "Ses01F_impro01_M042.wav", 6)  # audio without label
    cache = tmp_path / "cache"
    args = ["features", "--corpus", "iemocap", "--root", str(root), "--cache-dir", str(cache), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    report = read_report(entry / "skipped_files.json")
    got = {(e["action"], e["kind"], Path(e["file"]).name) for e in report.entries}
    assert got == {("skipped", "unreadable", Path(usable[0]["path"]).name),
                   ("skipped", "empty", Path(usable[1]["path"]).name),
                   ("kept", "resampled", Path(usable[2]["path"]).name),
                   ("kept", "mixed-down", Path(usable[3]["path"]).name),
                   ("skipped", "no-audio", Path(usable[5]["path"]).name),
                   ("skipped", "no-label", "Ses01F_impro01_M042.wav")}
    assert (entry / "skipped_files.csv").read_text().startswith("action,kind,file,utt_id,reason")
    assert "skipped 4 file(s)" in result.output and "fold_counts-standard.md" in result.output
    assert (entry / "fold_counts-standard.json").is_file()
    counts = json.loads((entry / "fold_counts-standard.json").read_text())
    assert counts["all"]["total"] == len(usable) - 3 and counts["skipped_files"] == 4
    # a later run reuses the entry: no audio is read again
    monkeypatch.setattr(F.compute, "extract_mfcc", lambda *a: pytest.fail("re-extracted"))
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "skipped 4 file(s)" in again.output


def test_features_command_nothing_usable(iemocap, tmp_path, librosa_warm):
    root, recs, _ = iemocap
    for r in recs:
        Path(r["path"]).write_bytes(b"")
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["features", "--corpus", "iemocap", "--root", str(root), "--cache-dir",
                                      str(cache), "--no-progress"])
    assert result.exit_code == 2 and "none of the" in result.output and "0 bytes" in result.output
    assert (cache / "skipped_files.csv").is_file()
    assert not [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]  # no entry


def test_msp_improv_consensus_lines_and_audio_mismatch(tmp_path):
    from replicas import make_msp_improv

    recs = make_msp_improv(tmp_path, scenarios=("R",))
    Path(recs[0]["path"]).unlink()  # its consensus line stays
    extra = Path(recs[1]["path"]).parent / "MSP-IMPROV-S01A-F01-R-FM09.wav"
    tiny_wav(extra, 3)  # no consensus line
    report = SkipReport()
    load_protocol("msp-improv", tmp_path / "MSP-IMPROV", 0, report)
    kinds = {e["kind"]: e for e in report.skipped}
    assert set(kinds) == {"no-audio", "no-label"}
    assert "Evalution.txt:1:" in kinds["no-audio"]["reason"] and recs[0]["utt_id"] in kinds["no-audio"]["reason"]
    assert kinds["no-label"]["file"] == str(extra)
