"""The resumable feature cache (shards, interruption, process pool) and the torchaudio backend."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from replicas import tiny_wav

import emodarts.features as F
from emodarts.data import Utterance
from emodarts.data.report import SkipReport
from emodarts.features import (
    FEATURE_PRESETS,
    TORCHAUDIO_TOLERANCE,
    build_features,
    cache_dir_for,
    mfcc_from_audio,
    mfcc_torch,
    work_dir_for,
)

TINY = FEATURE_PRESETS["tiny"]


def _corpus(folder, n=10, sr=16000):
    utts = []
    for i in range(n):
        p = tiny_wav(folder / f"u{i:02d}.wav", i, sr=sr, n=sr * 3 // 10)
        utts.append(Utterance(f"u{i:02d}", str(p), "sad", f"F{i % 3}"))
    return utts


def _entries(cache):
    return sorted(p.name for p in cache.iterdir())


def test_interrupted_extraction_resumes(tmp_path, monkeypatch, librosa_warm):
    utts = _corpus(tmp_path / "audio")
    full = build_features(utts, TINY, tmp_path / "ref", progress=False, report=SkipReport(), chunk_size=3)
    reference = np.array(full.features)

    real, calls = F.extract_mfcc, []

    def dies_after_five(path, cfg):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(path)
        return real(path, cfg)

    monkeypatch.setattr(F.compute, "extract_mfcc", dies_after_five)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_features(utts, TINY, cache, progress=False, report=SkipReport(), chunk_size=3)
    work = work_dir_for(cache_dir_for(utts, TINY, cache))
    assert _entries(cache) == [work.name]  # no entry yet, only the work folder
    assert sorted(p.name for p in work.glob("shard-*.npz")) == ["shard-00000.npz"]  # 1 finished chunk of 3

    calls.clear()
    monkeypatch.setattr(F.compute, "extract_mfcc", lambda p, c: (calls.append(p), real(p, c))[1])
    resumed = build_features(utts, TINY, cache, progress=False, report=SkipReport(), chunk_size=3)
    assert len(calls) == len(utts) - 3  # the finished chunk was not redone
    np.testing.assert_array_equal(np.array(resumed.features), reference)
    assert _entries(cache) == [cache_dir_for(utts, TINY, cache).name]  # work folder gone
    ref_index = json.loads((full.path / "index.json").read_text())
    new_index = json.loads((resumed.path / "index.json").read_text())
    for key in ("utt_ids", "utterances", "stamps", "skipped", "notes", "config", "audio"):
        assert ref_index[key] == new_index[key], key
    # and a strict build_features call (the pipeline's old path) reuses the same entry
    calls.clear()
    build_features(utts, TINY, cache, progress=False)
    assert not calls


def test_damaged_or_stale_shards_are_redone(tmp_path, monkeypatch, librosa_warm):
    utts = _corpus(tmp_path / "audio", n=6)
    real, calls = F.extract_mfcc, []
    monkeypatch.setattr(F.compute, "extract_mfcc", lambda p, c: (calls.append(p), real(p, c))[1])
    cache = tmp_path / "cache"
    work = work_dir_for(cache_dir_for(utts, TINY, cache))
    # a previous run left: a good shard, a half-written one and one computed from older audio
    ref = build_features(utts, TINY, tmp_path / "ref", progress=False, report=SkipReport(), chunk_size=2)
    work.mkdir(parents=True)
    (work / "plan.json").write_text(json.dumps({"n": 6, "key": TINY.key(), "chunk": 2}))
    for c in range(3):
        rows = range(2 * c, 2 * c + 2)
        res = F.extract_chunk([(utts[i].utt_id, utts[i].path) for i in rows], TINY)
        F.shards.write_shard(work / f"shard-{c:05d}.npz", [utts[i].utt_id for i in rows],
                             [F.cache.file_stamp(utts[i].path) for i in rows], res, "librosa")
    (work / "shard-00001.npz").write_bytes((work / "shard-00001.npz").read_bytes()[:100])
    tiny_wav(__import__("pathlib").Path(utts[5].path), 99, n=6000)  # audio changed after its shard
    calls.clear()
    fs = build_features(utts, TINY, cache, progress=False, report=SkipReport())
    assert sorted(calls) == sorted([utts[2].path, utts[3].path, utts[4].path, utts[5].path])
    np.testing.assert_array_equal(np.array(fs.features)[:5], np.array(ref.features)[:5])
    np.testing.assert_array_equal(fs.features[5], real(utts[5].path, TINY))


def test_process_pool_equals_in_process(tmp_path, librosa_warm):
    utts = _corpus(tmp_path / "audio", n=8)
    one = build_features(utts, TINY, tmp_path / "a", progress=False, report=SkipReport(), chunk_size=2)
    two = build_features(utts, TINY, tmp_path / "b", progress=False, report=SkipReport(), chunk_size=2, workers=2)
    np.testing.assert_array_equal(np.array(one.features), np.array(two.features))
    assert one.utt_ids == two.utt_ids


def test_strict_mode_stops_at_the_bad_file_and_keeps_nothing(tmp_path, librosa_warm):
    utts = _corpus(tmp_path / "audio", n=5)
    (tmp_path / "audio" / "u03.wav").write_text("not audio")
    with pytest.raises(F.DataError, match="u03.wav"):
        build_features(utts, TINY, tmp_path / "cache", progress=False, chunk_size=2)
    assert list((tmp_path / "cache").iterdir()) == []


# ------------------------------------------------------------------------------------- torchaudio
def _signals():
    from emodarts.data.synthetic_voice import make_speakers, synthesize_utterance

    spk = make_speakers(0, 2)
    sigs = [synthesize_utterance(spk[i % 2], e, np.random.default_rng(i))
            for i, e in enumerate(("angry", "sad"))]
    sigs.append((np.random.default_rng(9).standard_normal(24000) * 0.1).astype(np.float32))
    sigs.append(np.zeros(8000, np.float32))
    return sigs


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_torchaudio_matches_librosa(preset, librosa_warm):
    librosa = librosa_warm
    pytest.importorskip("torchaudio")
    cfg = FEATURE_PRESETS[preset]
    sigs = _signals()
    rates = (16000, 44100) if preset == "paper" else (16000, 8000)
    for sr in rates:
        ins = [s if sr == 16000 else librosa.resample(s, orig_sr=16000, target_sr=sr) for s in sigs]
        ref = np.stack([mfcc_from_audio(y if sr == cfg.sample_rate else
                                        librosa.resample(y, orig_sr=sr, target_sr=cfg.sample_rate), cfg)
                        for y in ins])
        got = mfcc_torch(ins, [sr] * len(ins), cfg, "cpu")
        assert got.shape == ref.shape == (len(sigs),) + cfg.shape and got.dtype == np.float32
        diff = np.abs(got - ref)
        if sr == cfg.sample_rate:
            assert diff.max() <= TORCHAUDIO_TOLERANCE["same_rate_atol"], diff.max()
        else:
            assert diff.max() <= TORCHAUDIO_TOLERANCE["resampled_rel_max"] * np.abs(ref).max()
            rms = np.sqrt((diff ** 2).mean()) / np.sqrt((ref ** 2).mean())
            assert rms <= TORCHAUDIO_TOLERANCE["resampled_rel_rms"], rms


def test_torchaudio_backend_entry_is_reused(tmp_path, monkeypatch, librosa_warm):
    pytest.importorskip("torchaudio")
    utts = _corpus(tmp_path / "audio", n=6)
    utts.append(Utterance("bad", str(tmp_path / "audio" / "bad.wav"), "sad", "F9"))
    (tmp_path / "audio" / "bad.wav").write_text("not audio")
    stereo = tiny_wav(tmp_path / "audio" / "st.wav", 4, channels=2)
    utts.append(Utterance("st", str(stereo), "sad", "F9"))
    report = SkipReport()
    fs = build_features(utts, TINY, tmp_path / "cache", progress=False, report=report, extractor="torchaudio",
                        device="cpu", workers=2, chunk_size=3)
    assert fs.extractor == "torchaudio" and "bad" not in fs and len(fs) == 7
    assert {(e["kind"], e["action"]) for e in report.entries} == {("unreadable", "skipped"), ("mixed-down", "kept")}
    ref = build_features(utts, TINY, tmp_path / "ref", progress=False, report=SkipReport())
    np.testing.assert_allclose(np.array(fs.features), np.array(ref.features),
                               atol=TORCHAUDIO_TOLERANCE["same_rate_atol"])
    monkeypatch.setattr(F.compute, "extract_mfcc", lambda *a: pytest.fail("re-extracted"))
    again = build_features(utts, TINY, tmp_path / "cache", progress=False, report=SkipReport())
    assert again.path == fs.path and again.extractor == "torchaudio"


def test_features_command_torchaudio_and_workers(tmp_path, librosa_warm):
    from replicas import make_csv_corpus

    from emodarts.cli.commands import cli

    manifest, recs = make_csv_corpus(tmp_path / "c", n_speakers=4, per_speaker=3)
    base = ["features", "--corpus", "csv", "--root", str(manifest), "--no-progress"]
    a = CliRunner().invoke(cli, base + ["--cache-dir", str(tmp_path / "a"), "--backend", "torchaudio",
                                        "--device", "cpu"])
    assert a.exit_code == 0, a.output
    assert "backend torchaudio" in a.output and f"features: {len(recs)} utterances x 20x47" in a.output
    b = CliRunner().invoke(cli, base + ["--cache-dir", str(tmp_path / "b"), "--workers", "2"])
    assert b.exit_code == 0, b.output
    fa = F.load_feature_set(next(p for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")))
    fb = F.load_feature_set(next(p for p in (tmp_path / "b").iterdir() if not p.name.startswith(".")))
    np.testing.assert_allclose(np.array(fa.features), np.array(fb.features),
                               atol=TORCHAUDIO_TOLERANCE["same_rate_atol"])
    assert "| all |" in b.output and "speakers" in b.output
