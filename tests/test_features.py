import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import emodarts.features as F
from emodarts.data import Utterance
from emodarts.data.manifest import read_manifest
from emodarts.data.synthetic import MANIFEST_NAME
from emodarts.features import (
    FEATURE_PRESETS,
    FeatureConfig,
    build_features,
    extract_mfcc,
    load_audio,
)
from emodarts.runtime.errors import DataError

sf = pytest.importorskip("soundfile", reason="these tests write audio in formats (and read headers) that only soundfile "
                         "handles; the GPU machine has none")

ROOT = Path(__file__).resolve().parents[1]


def test_presets_and_keys():
    paper, tiny = FEATURE_PRESETS["paper"], FEATURE_PRESETS["tiny"]
    assert paper == FeatureConfig(32750, 8.0, 128, 2048, 512, 128, 4)
    assert paper.n_frames == 512 and paper.shape == (128, 128)
    assert tiny.shape == (20, 47)
    assert paper.key() != tiny.key() and len(paper.key()) == 12
    assert paper.key() == FeatureConfig(32750, 8.0, 128, 2048, 512, 128, 4).key()


def test_import_without_librosa():
    code = ("import sys; sys.modules['librosa'] = None\n"
            "import emodarts, emodarts.features as f, emodarts.data.splits, emodarts.data.registry\n"
            "import emodarts.data.synthetic, emodarts.data.manifest, emodarts.data.baseline\n"
            "print(f.FEATURE_PRESETS['tiny'].shape)\n"
            "assert 'librosa' not in {k for k, v in sys.modules.items() if v is not None}")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "(20, 47)" in out.stdout


def test_tiny_shape(tiny_synthetic, librosa_warm):
    utt = read_manifest(tiny_synthetic / MANIFEST_NAME)[0]
    m = extract_mfcc(utt.path, FEATURE_PRESETS["tiny"])
    assert m.shape == (20, 47) and m.dtype == np.float32 and np.isfinite(m).all()


def test_paper_shape_matches_reference(tiny_synthetic, librosa_warm):
    librosa = librosa_warm
    cfg = FEATURE_PRESETS["paper"]
    utt = read_manifest(tiny_synthetic / MANIFEST_NAME)[0]
    m = extract_mfcc(utt.path, cfg)
    assert m.shape == (128, 128) and m.dtype == np.float32
    # the published preparation, written out directly
    y, sr = sf.read(utt.path, dtype="float32")
    y = librosa.resample(y, orig_sr=sr, target_sr=32750)
    y = np.pad(y, (0, 32750 * 8 - len(y)))
    ref = librosa.feature.mfcc(y=y, sr=32750, n_mfcc=128)[:, :512]
    ref = ref.reshape(128, 128, 4).max(axis=2)
    np.testing.assert_allclose(m, ref, rtol=1e-4, atol=1e-3)


def test_length_fixed_by_truncation_and_padding(tmp_path, librosa_warm):
    cfg = FEATURE_PRESETS["tiny"]
    rng = np.random.default_rng(0)
    long = rng.standard_normal(16000 * 5).astype(np.float32) * 0.1
    sf.write(str(tmp_path / "long.wav"), long, 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "head.wav"), long[: 16000 * 3], 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "short.wav"), long[:8000], 16000, subtype="FLOAT")
    np.testing.assert_array_equal(extract_mfcc(tmp_path / "long.wav", cfg), extract_mfcc(tmp_path / "head.wav", cfg))
    assert extract_mfcc(tmp_path / "short.wav", cfg).shape == (20, 47)


def test_load_audio_mixdown_and_resample(tmp_path):
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    sf.write(str(tmp_path / "st.wav"), stereo, 8000, subtype="FLOAT")
    y = load_audio(tmp_path / "st.wav", 8000)
    np.testing.assert_allclose(y, stereo[:, 0] / 2, atol=1e-6)
    y16 = load_audio(tmp_path / "st.wav", 16000)
    assert y16.dtype == np.float32 and abs(len(y16) - 16000) <= 1


def test_load_audio_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    zero = tmp_path / "zero_bytes.wav"
    zero.write_bytes(b"")
    for path in (empty, junk, zero, tmp_path / "missing.wav"):
        with pytest.raises(DataError) as err:
            load_audio(path, 16000)
        assert str(path) in str(err.value)


def test_feature_cache_reused(tiny_synthetic, tmp_path, monkeypatch, librosa_warm):
    utts = read_manifest(tiny_synthetic / MANIFEST_NAME)[:6]
    cfg = FEATURE_PRESETS["tiny"]
    calls = []
    real = F.extract_mfcc

    def counting(path, c):
        calls.append(path)
        return real(path, c)

    monkeypatch.setattr(F.compute, "extract_mfcc", counting)
    fs = build_features(utts, cfg, tmp_path / "cache", progress=False)
    assert len(calls) == 6
    assert fs.features.shape == (6, 20, 47) and fs.features.dtype == np.float32
    assert fs.utt_ids == [u.utt_id for u in utts]
    np.testing.assert_array_equal(fs[utts[2].utt_id], real(utts[2].path, cfg))
    np.testing.assert_array_equal(fs.take([utts[3], utts[1]]), fs.features[[3, 1]])
    fs2 = build_features(utts, cfg, tmp_path / "cache", progress=False)
    assert len(calls) == 6  # second call: from the cache
    np.testing.assert_array_equal(np.asarray(fs2.features), np.asarray(fs.features))
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 1 and entries[0].name.startswith(cfg.key())
    assert sorted(p.name for p in entries[0].iterdir()) == ["features.npy", "index.json"]
    # another utterance list or another config: another entry
    build_features(utts[:3], cfg, tmp_path / "cache", progress=False)
    assert len(calls) == 9 and len(list((tmp_path / "cache").iterdir())) == 2
    with pytest.raises(DataError, match="not in the feature set"):
        fs.rows(["nope"])
    # the entry opens without its audio (a machine that only has the cache)
    loaded = F.load_feature_set(entries[0])
    assert loaded.utterances == utts and loaded.cfg == cfg
    np.testing.assert_array_equal(np.asarray(loaded.features), np.asarray(fs.features))
    with pytest.raises(DataError, match="not a readable feature cache"):
        F.load_feature_set(tmp_path)


def test_feature_cache_invalidated_by_changed_audio(tmp_path, monkeypatch, librosa_warm):
    cfg = FEATURE_PRESETS["tiny"]
    rng = np.random.default_rng(1)
    utts = []
    for i in range(2):
        p = tmp_path / "audio" / f"u{i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(str(p), rng.standard_normal(16000).astype(np.float32) * 0.1, 16000)
        utts.append(Utterance(f"u{i}", str(p), "sad", "F01"))
    first = np.array(build_features(utts, cfg, tmp_path / "cache", progress=False).features)
    sf.write(utts[0].path, rng.standard_normal(24000).astype(np.float32) * 0.1, 16000)
    os.utime(utts[0].path, ns=(1, 1))  # make sure the stamp differs even on coarse clocks
    second = np.array(build_features(utts, cfg, tmp_path / "cache", progress=False).features)
    assert not np.array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_feature_cache_not_written_on_failure(tmp_path, librosa_warm):
    good = tmp_path / "good.wav"
    sf.write(str(good), np.zeros(16000, dtype=np.float32), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    utts = [Utterance("g", str(good), "sad", "F01"), Utterance("b", str(bad), "sad", "F01")]
    with pytest.raises(DataError, match="bad.wav"):
        build_features(utts, FEATURE_PRESETS["tiny"], tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_feature_cache_key_depends_on_paths(tmp_path):
    cfg = FEATURE_PRESETS["tiny"]
    a = [Utterance("u0", str(tmp_path / "a" / "u0.wav"), "sad", "F01")]
    b = [Utterance("u0", str(tmp_path / "b" / "u0.wav"), "sad", "F01")]
    assert F.cache_dir_for(a, cfg, tmp_path) != F.cache_dir_for(b, cfg, tmp_path)
    assert F.cache_dir_for(a, cfg, tmp_path) == F.cache_dir_for(list(a), cfg, tmp_path)
    other = FeatureConfig(16000, 3.0, 20, 512, 256, 40, 2)
    assert F.cache_dir_for(a, cfg, tmp_path) != F.cache_dir_for(a, other, tmp_path)
