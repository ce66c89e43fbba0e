"""Input features beyond the paper's MFCCs (issue 15): logmel, spectrogram and precomputed npy arrays, each
with its own cache key; npy files checked like audio (skipped-files report); the model takes their row count."""
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_run_config
from replicas import tiny_wav

import emodarts.features as F
from emodarts.data import Utterance
from emodarts.data.manifest import read_manifest, write_manifest
from emodarts.data.report import SkipReport
from emodarts.engine.config import RunConfig, config_from_dict, load_config
from emodarts.engine.run_data import RunData, TensorSplit
from emodarts.engine.search import run_search
from emodarts.engine.training import run_train
from emodarts.runtime.errors import DataError, EmodartsError

TINY = F.FEATURE_PRESETS["tiny"]
AUDIO_KINDS = ("mfcc", "logmel", "spectrogram")
LABELS = ("angry", "happy", "neutral", "sad")


def _clips(folder: Path, n: int = 3):
    return [Utterance(f"a{i}", str(tiny_wav(folder / f"a{i}.wav", seed=i, n=16000)), LABELS[i % 4], f"s{i % 2}")
            for i in range(n)]


# ------------------------------------------------------------------------------------------- settings
def test_each_kind_has_its_own_key_and_mfcc_keeps_its_old_one():
    keys = {k: F.feature_config("tiny", kind=k).key() for k in F.FEATURE_KINDS}
    assert len(set(keys.values())) == len(F.FEATURE_KINDS)
    assert keys["mfcc"] == TINY.key() == F.feature_config("tiny").key()
    # an mfcc entry records the settings as before kinds existed (its index.json and key stay valid)
    assert "kind" not in TINY.record() and F.feature_config("tiny", kind="logmel").record()["kind"] == "logmel"
    assert F.feature_config("tiny", 0.1, "logmel").key() not in (keys["logmel"], F.feature_config("tiny", 0.1).key())
    for k in F.FEATURE_KINDS:
        assert F.feature_config("paper", kind=k).shape == (128, 128)
    with pytest.raises(DataError, match="--features is one of mfcc, logmel, spectrogram, npy"):
        F.feature_config("tiny", kind="wav2vec")
    with pytest.raises(DataError, match="feature kind"):
        replace(TINY, kind="mel")


def test_run_config_features_field(tmp_path):
    assert RunConfig().features == "mfcc"
    assert "features" not in RunConfig().to_dict()  # mfcc runs' configs and checkpoints read as before
    cfg = RunConfig(preset="tiny", features="logmel")
    assert cfg.to_dict()["features"] == "logmel" and config_from_dict(cfg.to_dict()) == cfg
    assert F.run_feature_config(cfg) == F.feature_config("tiny", None, "logmel")
    assert F.run_feature_config(RunConfig(preset="paper", min_duration=0.5)) == F.feature_config("paper", 0.5)
    with pytest.raises(EmodartsError, match="field 'features' is 'hubert'"):
        RunConfig(features="hubert")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**RunConfig().to_dict(), "features": "hubert"}))
    with pytest.raises(EmodartsError, match=r"config.json: not a valid emodarts configuration: field 'features'"):
        load_config(path)
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_config(path).features == "logmel"


# ------------------------------------------------------------------------------------- audio kinds
def _adaptive_max_pool(m: np.ndarray, shape) -> np.ndarray:
    """PyTorch's adaptive max pooling windows, written out: [floor(i L / n), ceil((i + 1) L / n))."""
    out = np.empty(shape, m.dtype)
    (rows, cols), (R, C) = m.shape, shape
    for i in range(R):
        r0, r1 = (i * rows) // R, -((-(i + 1) * rows) // R)
        for j in range(C):
            c0, c1 = (j * cols) // C, -((-(j + 1) * cols) // C)
            out[i, j] = m[r0:r1, c0:c1].max()
    return out


def test_logmel_and_spectrogram_follow_their_definitions(tmp_path, librosa_warm):
    librosa = librosa_warm
    path = tiny_wav(tmp_path / "x.wav", seed=3, n=20000)
    y = F.load_audio(path, 16000)
    y = np.pad(y, (0, 48000 - len(y)))
    for k in AUDIO_KINDS:
        m = F.extract_features(path, F.feature_config("tiny", kind=k))
        assert m.shape == (20, 47) and m.dtype == np.float32 and np.isfinite(m).all()
    np.testing.assert_array_equal(F.extract_features(path, TINY), F.extract_mfcc(path, TINY))
    # log mel: the MFCC's mel spectrogram with n_mfcc bands, in dB, before the DCT
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=256, n_mels=20))
    ref = mel[:, :188].reshape(20, 47, 4).max(axis=2)
    np.testing.assert_allclose(F.extract_features(path, F.feature_config("tiny", kind="logmel")), ref,
                               rtol=1e-5, atol=1e-4)
    # spectrogram: |STFT| with n_fft 278 and hop 229 (140 bins x 210 frames), max-pooled to 20 x 47
    mag = np.abs(librosa.stft(y, n_fft=278, hop_length=229)).astype(np.float32)
    assert mag.shape == (140, 1 + 48000 // 229)
    got = F.extract_features(path, F.feature_config("tiny", kind="spectrogram"))
    np.testing.assert_allclose(got, _adaptive_max_pool(mag, (20, 47)), rtol=1e-6)
    paper = F.extract_features(path, F.feature_config("paper", kind="spectrogram"))
    assert paper.shape == (128, 128) and np.isfinite(paper).all()


@pytest.mark.parametrize("kind", ["logmel", "spectrogram"])
def test_torchaudio_backend_agrees(tmp_path, librosa_warm, kind):
    pytest.importorskip("torchaudio")
    utts = _clips(tmp_path / "audio")
    cfg = F.feature_config("tiny", kind=kind)
    ref = F.build_features(utts, cfg, tmp_path / "a", progress=False)
    got = F.build_features(utts, cfg, tmp_path / "b", progress=False, extractor="torchaudio", device="cpu")
    scale = float(np.abs(np.asarray(ref.features)).max())
    np.testing.assert_allclose(np.asarray(got.features), np.asarray(ref.features),
                               atol=F.TORCHAUDIO_TOLERANCE["same_rate_atol"] * max(1.0, scale / 100), rtol=0)


def test_each_kind_gets_its_own_cache_entry(tmp_path, librosa_warm, monkeypatch):
    utts = _clips(tmp_path / "audio")
    entries = {k: F.build_features(utts, F.feature_config("tiny", kind=k), tmp_path / "cache", progress=False)
               for k in AUDIO_KINDS}
    assert len({fs.path for fs in entries.values()}) == 3
    assert entries["mfcc"].path.name.startswith(TINY.key())
    assert not np.allclose(np.asarray(entries["mfcc"].features), np.asarray(entries["logmel"].features))
    index = json.loads((entries["logmel"].path / "index.json").read_text())
    assert index["config"]["kind"] == "logmel"
    assert F.load_feature_set(entries["spectrogram"].path).cfg.kind == "spectrogram"
    monkeypatch.setattr(F.compute, "features_from_audio", lambda *a: pytest.fail("re-extracted"))
    monkeypatch.setattr(F.compute, "extract_mfcc", lambda *a: pytest.fail("re-extracted"))
    for k in AUDIO_KINDS:
        again = F.build_features(utts, F.feature_config("tiny", kind=k), tmp_path / "cache", progress=False)
        np.testing.assert_array_equal(np.asarray(again.features), np.asarray(entries[k].features))


# --------------------------------------------------------------------------------------------- npy
def _npy_manifest(root: Path, files: dict, speakers: int = 4) -> Path:
    """A manifest whose rows name features files (audio absent); `files`: name -> array, bytes, or None
    (not written)."""
    (root / "feats").mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["utt_id", "path", "label", "speaker", "features"])
        for i, (name, content) in enumerate(files.items()):
            if isinstance(content, np.ndarray):
                np.save(root / "feats" / f"{name}.npy", content)
            elif isinstance(content, bytes):
                (root / "feats" / f"{name}.npy").write_bytes(content)
            w.writerow([name, f"audio/{name}.wav", LABELS[i % 4], f"spk{(i // 4) % speakers}", f"feats/{name}.npy"])
    return manifest


def _array(seed: int, rows: int = 12, frames: int = 47) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, frames)).astype(np.float32)


def test_manifest_features_column(tmp_path):
    manifest = _npy_manifest(tmp_path / "c", {"u0": _array(0), "u1": _array(1)})
    utts = read_manifest(manifest)  # the audio is absent: rows naming features need none
    assert [u.features for u in utts] == [str(tmp_path / "c" / "feats" / f"u{i}.npy") for i in range(2)]
    assert utts[0].path == str(tmp_path / "c" / "audio" / "u0.wav")
    out = write_manifest(utts, tmp_path / "c" / "copy.csv")
    assert out.read_text().splitlines()[0] == "utt_id,path,label,speaker,session,features"
    assert "feats/u1.npy" in out.read_text() and read_manifest(out) == utts
    plain = write_manifest([replace(u, features=None) for u in utts], tmp_path / "c" / "plain.csv")
    assert plain.read_text().splitlines()[0] == "utt_id,path,label,speaker,session"
    with pytest.raises(DataError, match="audio file not found"):  # without a features file the audio must exist
        read_manifest(plain)


def test_npy_shapes_rows_and_cache(tmp_path, monkeypatch):
    arrays = {"u0": _array(0, frames=30), "u1": _array(1, frames=80), "u2": _array(2).astype(np.float64)}
    utts = read_manifest(_npy_manifest(tmp_path / "c", arrays))
    cfg = F.feature_config("tiny", kind="npy")
    fs = F.build_features(utts, cfg, tmp_path / "cache", progress=False, report=SkipReport())
    assert fs.shape == (3, 12, 47) and fs.cfg.n_mfcc == 12 and fs.cfg.kind == "npy"
    x = np.asarray(fs.features)
    np.testing.assert_array_equal(x[0, :, :30], arrays["u0"])
    assert not x[0, :, 30:].any()  # zero-padded at the end, as a short clip is
    np.testing.assert_array_equal(x[1], arrays["u1"][:, :47])  # the first frames kept, as audio's first seconds
    np.testing.assert_array_equal(x[2], arrays["u2"].astype(np.float32))
    monkeypatch.setattr(F.compute, "load_npy_features", lambda *a: pytest.fail("re-extracted"))
    again = F.build_features(utts, cfg, tmp_path / "cache", progress=False)
    assert again.path == fs.path and F.load_feature_set(fs.path).shape == (3, 12, 47)
    monkeypatch.undo()
    np.save(tmp_path / "c" / "feats" / "u2.npy", 2 * _array(2, frames=60))  # a features file changed: rebuilt
    changed = F.build_features(utts, cfg, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(np.asarray(changed.features)[2], 2 * _array(2, frames=60)[:, :47])
    # the same utterances as audio features get another entry
    assert F.cache_dir_for(utts, cfg, tmp_path) != F.cache_dir_for(utts, TINY, tmp_path)


def test_npy_bad_files_are_reported_like_bad_audio(tmp_path):
    good = {f"g{i}": _array(i) for i in range(3)}
    nan, inf = _array(7), _array(8)
    nan[3, 5], inf[0, 46] = np.nan, np.inf
    cut = tmp_path / "cut.npy"
    np.save(cut, _array(9, frames=400))
    bad = {"missing": None, "flat": np.zeros(47, np.float32), "cube": np.zeros((2, 12, 47), np.float32),
           "rows": _array(5, rows=13), "nan": nan, "inf": inf, "garbage": b"not an array at all",
           "truncated": cut.read_bytes()[:300], "text": np.array([["a"] * 47] * 12)}
    root = tmp_path / "c"
    utts = read_manifest(_npy_manifest(root, {**good, **bad}))
    utts.append(Utterance("none", str(root / "audio" / "none.wav"), "sad", "spk0"))  # no features column value
    report = SkipReport()
    fs = F.build_features(utts, F.feature_config("tiny", kind="npy"), tmp_path / "cache", progress=False,
                          report=report)
    assert fs.utt_ids == list(good) and fs.shape == (3, 12, 47)
    kinds = {Path(e["file"]).stem: e["kind"] for e in report.skipped}
    assert kinds == {"missing": "missing-features", "flat": "wrong-shape", "cube": "wrong-shape",
                     "rows": "wrong-shape", "nan": "not-finite-features", "inf": "not-finite-features",
                     "garbage": "unreadable-features", "truncated": "unreadable-features",
                     "text": "unreadable-features", "none": "missing-features"}
    for e in report.skipped:  # every reason names the file (or, without one, the utterance)
        assert (e["file"] in e["reason"]) if Path(e["file"]).suffix == ".npy" else ("'none'" in e["reason"])
    reasons = {Path(e["file"]).stem: e["reason"] for e in report.skipped}
    assert reasons["rows"].startswith("features file has 13 rows; the corpus's other features files have 12")
    assert "not a rows x frames array (shape (47,))" in reasons["flat"]
    assert reasons["missing"].startswith("features file not found")
    assert "NaN or infinite feature values" in report.summary()
    csv_path = report.write(tmp_path / "report")
    assert sum(1 for line in csv_path.read_text().splitlines() if line.startswith("skipped,")) == len(bad) + 1
    # a later run reads the skipped files from the entry, and without a report the first one is an error
    again = SkipReport()
    F.build_features(utts, F.feature_config("tiny", kind="npy"), tmp_path / "cache", progress=False, report=again)
    assert len(again.skipped) == len(bad) + 1
    with pytest.raises(DataError, match="features file not found: .*missing.npy"):
        F.build_features(utts, F.feature_config("tiny", kind="npy"), tmp_path / "strict", progress=False)


def test_npy_nothing_usable(tmp_path):
    utts = read_manifest(_npy_manifest(tmp_path / "c", {"a": None, "b": _array(0)[None]}))
    with pytest.raises(DataError, match="none of the 2 features files could be used"):
        F.build_features(utts, F.feature_config("tiny", kind="npy"), tmp_path / "cache", progress=False,
                         report=SkipReport())


# ------------------------------------------------------------------------------------------- model
def test_npy_features_of_another_height_run_end_to_end(tmp_path):
    """Features 12 rows high (not the preset's 20): search, final training and predict take their height
    from the data."""
    n = 24
    arrays = {f"u{i:02d}": _array(i) + (i % 4) for i in range(n)}
    utts = read_manifest(_npy_manifest(tmp_path / "c", arrays))
    fs = F.build_features(utts, F.feature_config("tiny", kind="npy"), tmp_path / "cache", progress=False)
    classes = list(LABELS)

    def split(part):
        x = torch.from_numpy(fs.take(part)).unsqueeze(1)
        return TensorSplit(x, torch.tensor([classes.index(u.label) for u in part]))

    data = RunData(classes, split(utts[:8]), split(utts[8:16]), split(utts[:16]), split(utts[16:20]),
                   split(utts[20:]))
    assert data.n_features == 12
    cfg = replace(small_run_config(epochs=1), preset="tiny", features="npy")
    genotype = run_search(cfg, data, tmp_path / "run", progress=False)
    run_train(cfg, genotype, data, tmp_path / "run", progress=False)
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
    from emodarts.cli.predict import predict_files

    out = predict_files(tmp_path / "run", [utts[20].features, tmp_path / "c" / "feats" / "absent.npy"])
    assert out[0]["label"] in classes and abs(sum(out[0]["probs"].values()) - 1) < 1e-5
    assert "features file not found" in out[1]["error"]


def test_features_option_on_the_command_line(tmp_path, monkeypatch):
    """`emodarts run --corpus csv --features npy` end to end (search, training, evaluation) on 12-row arrays;
    config.json records the kind, and the `features` command passes --features on."""
    from helpers import invoke_cli

    monkeypatch.setenv("EMODARTS_HOME", str(tmp_path / "home"))
    manifest = _npy_manifest(tmp_path / "c", {f"u{i:02d}": _array(i) + (i % 4) for i in range(48)},
                             speakers=8)
    out = tmp_path / "run"
    result = invoke_cli("run", "--corpus", "csv", "--root", str(manifest), "--features", "npy", "--epochs", "1",
                        "--train-epochs", "1", "--batch-size", "8", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["features"] == "npy"
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["ua"] <= 1.0
    import emodarts.engine.cv

    seen = {}
    monkeypatch.setattr(emodarts.engine.cv, "load_protocol_data", lambda *a, **k: seen.update(k) or (_ for _ in ()).throw(
        KeyboardInterrupt))
    invoke_cli("features", "--corpus", "csv", "--root", str(manifest), "--features", "logmel",
               "--cache-dir", str(tmp_path / "cache"))
    assert seen["features"] == "logmel"


def test_relabelling_protocol_keeps_the_features_file():
    """A protocol that maps labels (e.g. IEMOCAP's excited -> happy) keeps every other field of the
    utterance, the npy features file included."""
    from emodarts.data import Utterance
    from emodarts.data.protocols import Protocol

    proto = Protocol("c", "p", "", folds_fn=lambda utts, seed: [], label_map={"exc": "happy", "sad": "sad"})
    u = Utterance("u0", "/a/u0.wav", "exc", "s1", "S1", "train", features="/a/u0.npy")
    kept, excluded = proto.select([u, Utterance("u1", "/a/u1.wav", "fru", "s1")])
    assert kept == [Utterance("u0", "/a/u0.wav", "happy", "s1", "S1", "train", features="/a/u0.npy")]
    assert excluded == {"label fru": 1}
