import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from emodarts.data import EMOTIONS, Utterance
from emodarts.data.manifest import read_manifest, write_manifest
from emodarts.data.registry import known_corpora, load_corpus
from emodarts.data.splits import search_halves, speaker_gender, speaker_split
from emodarts.data.synthetic import MANIFEST_NAME, STAMP_NAME, ensure_synthetic_corpus
from emodarts.runtime.errors import DataError

sf = pytest.importorskip("soundfile", reason="these tests write audio in formats (and read headers) that only soundfile "
                         "handles; the GPU machine has none")


def _wav(path: Path, n=1600, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(n, dtype=np.float32), sr, subtype="PCM_16")
    return path


def _utts(n_speakers=12, per_label=5):
    out = []
    for s in range(n_speakers):
        spk = f"{'F' if s % 2 == 0 else 'M'}{s // 2 + 1:02d}"
        for lab in EMOTIONS:
            for k in range(per_label):
                out.append(Utterance(f"{spk}_{lab}_{k}", f"/x/{spk}_{lab}_{k}.wav", lab, spk, f"Ses{s // 2 + 1:02d}"))
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.wav")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    h.update((root / MANIFEST_NAME).read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_roundtrip_relative_paths(tmp_path):
    _wav(tmp_path / "audio" / "a.wav")
    _wav(tmp_path / "audio" / "b.wav")
    csv = tmp_path / "manifest.csv"
    csv.write_text("utt_id,path,label,speaker,session\n"
                   "a,audio/a.wav,angry,F01,S1\n"
                   f"b,{tmp_path / 'audio' / 'b.wav'},sad,M01,\n")
    utts = read_manifest(csv)
    assert [u.utt_id for u in utts] == ["a", "b"]
    assert all(os.path.isabs(u.path) and os.path.isfile(u.path) for u in utts)
    assert utts[0].session == "S1" and utts[1].session is None
    out = tmp_path / "copy.csv"
    write_manifest(utts, out)
    assert "audio/a.wav" in out.read_text()  # stored relative to the manifest's folder
    assert read_manifest(out) == utts


def test_manifest_session_column_optional(tmp_path):
    _wav(tmp_path / "a.wav")
    csv = tmp_path / "m.csv"
    csv.write_text("utt_id,path,label,speaker\na,a.wav,happy,F01\n")
    assert read_manifest(csv)[0].session is None


@pytest.mark.parametrize(
    "body, needle",
    [
        ("utt_id,path,speaker\na,a.wav,F01\n", "label"),  # missing column
        ("utt_id,path,label,speaker,session\na,a.wav,angry,F01,\nb,a.wav,bored,F01,\n", ":3:"),  # bad label
        ("utt_id,path,label,speaker,session\na,missing.wav,angry,F01,\n", "missing.wav"),  # no audio
        ("utt_id,path,label,speaker,session\na,a.wav,angry,F01,\na,a.wav,sad,F01,\n", "duplicate"),
        ("utt_id,path,label,speaker,session\na,a.wav,angry,,\n", "speaker"),  # empty field
        ("utt_id,path,label,speaker,session\n", "no utterances"),
    ],
)
def test_manifest_errors_name_the_file(tmp_path, body, needle):
    _wav(tmp_path / "a.wav")
    csv = tmp_path / "bad_manifest.csv"
    csv.write_text(body)
    with pytest.raises(DataError) as err:
        read_manifest(csv)
    assert str(csv) in str(err.value)
    assert needle in str(err.value)


def test_manifest_unknown_label_lists_known(tmp_path):
    _wav(tmp_path / "a.wav")
    csv = tmp_path / "m.csv"
    csv.write_text("utt_id,path,label,speaker,session\na,a.wav,bored,F01,\n")
    with pytest.raises(DataError, match="bored.*angry, happy, neutral, sad"):
        read_manifest(csv)


def test_manifest_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        read_manifest(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------ splits


def test_speaker_gender():
    assert speaker_gender("F01") == "F"
    assert speaker_gender("M12") == "M"
    assert speaker_gender("Ses01F") == "F"
    assert speaker_gender("spk_m_3") == "M"
    assert speaker_gender("speaker7") is None


def test_speaker_split_disjoint_deterministic_balanced():
    utts = _utts()
    a = speaker_split(utts, seed=3, n_test_speakers=3, n_dev_speakers=2)
    b = speaker_split(list(reversed(utts)), seed=3, n_test_speakers=3, n_dev_speakers=2)
    sp = a.speakers()
    assert len(sp["test"]) == 3 and len(sp["dev"]) == 2 and len(sp["train"]) == 7
    assert not set(sp["test"]) & set(sp["train"])
    assert not set(sp["test"]) & set(sp["dev"])
    assert not set(sp["dev"]) & set(sp["train"])
    assert len(a.train) + len(a.dev) + len(a.test) == len(utts)
    assert sp == b.speakers()  # independent of input order
    assert speaker_split(utts, seed=3, n_test_speakers=3, n_dev_speakers=2) == a
    genders = [speaker_gender(s) for s in sp["test"]]
    assert sorted(set(genders)) == ["F", "M"]  # 3 test speakers: 2 + 1
    assert sorted(speaker_gender(s) for s in sp["dev"]) == ["F", "M"]
    seen = {tuple(speaker_split(utts, seed=s).speakers()["test"]) for s in range(10)}
    assert len(seen) > 3  # the seed matters


def test_speaker_split_too_few_speakers():
    with pytest.raises(DataError, match="3 speakers"):
        speaker_split(_utts(n_speakers=3), seed=0, n_test_speakers=2, n_dev_speakers=1)


def test_search_halves_stratified_deterministic():
    train = _utts(n_speakers=4, per_label=10)
    w, a = search_halves(train, seed=1)
    assert not {u.utt_id for u in w} & {u.utt_id for u in a}
    assert len(w) + len(a) == len(train)
    for lab in EMOTIONS:
        assert sum(u.label == lab for u in w) == 20 and sum(u.label == lab for u in a) == 20
    assert search_halves(list(reversed(train)), seed=1)[0] == list(reversed(w))
    w2, _ = search_halves(train, seed=2)
    assert w2 != w
    w3, a3 = search_halves(train, seed=1, weight_fraction=0.2)
    assert len(w3) == 32 and len(a3) == 128
    with pytest.raises(DataError):
        search_halves(train, seed=1, weight_fraction=1.0)


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_corpus_layout(tiny_synthetic):
    utts = read_manifest(tiny_synthetic / MANIFEST_NAME)
    assert len(utts) == 4 * 4 * 2
    assert {u.label for u in utts} == set(EMOTIONS)
    assert {u.speaker for u in utts} == {"F01", "M01", "F02", "M02"}
    assert {u.session for u in utts} == {"Ses01", "Ses02"}
    info = sf.info(utts[0].path)
    assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.channels == 1
    assert abs(info.duration - 3.0) < 1e-3
    x, _ = sf.read(utts[0].path)
    assert 0.001 < np.sqrt(np.mean(x ** 2)) < 0.5 and np.abs(x).max() <= 1.0


def test_synthetic_deterministic_and_cached(tmp_path):
    a = ensure_synthetic_corpus(tmp_path / "a", seed=5, n_speakers=2, utts_per_class=1)
    b = ensure_synthetic_corpus(tmp_path / "b", seed=5, n_speakers=2, utts_per_class=1)
    c = ensure_synthetic_corpus(tmp_path / "c", seed=6, n_speakers=2, utts_per_class=1)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    wav = next(a.rglob("*.wav"))
    stamp = wav.stat().st_mtime_ns
    ensure_synthetic_corpus(a, seed=5, n_speakers=2, utts_per_class=1)  # cached: nothing rewritten
    assert wav.stat().st_mtime_ns == stamp
    # a different seed at the same root regenerates (config hash differs)
    ensure_synthetic_corpus(a, seed=6, n_speakers=2, utts_per_class=1)
    assert _digest(a) == _digest(c)


def test_synthetic_regenerates_incomplete(tmp_path):
    root = ensure_synthetic_corpus(tmp_path / "s", seed=0, n_speakers=2, utts_per_class=1)
    ref = _digest(root)
    wav = next(root.rglob("*.wav"))
    wav.unlink()  # a lost audio file
    ensure_synthetic_corpus(root, seed=0, n_speakers=2, utts_per_class=1)
    assert _digest(root) == ref
    (root / MANIFEST_NAME).unlink()  # an interrupted generation: no manifest yet
    ensure_synthetic_corpus(root, seed=0, n_speakers=2, utts_per_class=1)
    assert _digest(root) == ref
    (root / STAMP_NAME).write_text('{"hash": "other"}')  # another generator version
    ensure_synthetic_corpus(root, seed=0, n_speakers=2, utts_per_class=1)
    assert _digest(root) == ref
    assert not list(root.rglob("*.tmp"))


def test_synthetic_interrupted_generation_is_not_complete(tmp_path, monkeypatch):
    import emodarts.data.synthetic as syn

    calls = {"n": 0}
    real = syn.synthesize_utterance

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "synthesize_utterance", flaky)
    with pytest.raises(KeyboardInterrupt):
        syn.ensure_synthetic_corpus(tmp_path / "s", seed=0, n_speakers=2, utts_per_class=1)
    assert not (tmp_path / "s" / MANIFEST_NAME).exists()
    monkeypatch.setattr(syn, "synthesize_utterance", real)
    root = syn.ensure_synthetic_corpus(tmp_path / "s", seed=0, n_speakers=2, utts_per_class=1)
    assert len(read_manifest(root / MANIFEST_NAME)) == 8


# ------------------------------------------------------------------------------------------ registry


def test_registry(tmp_path, tiny_synthetic, monkeypatch):
    assert {"synthetic", "csv"} <= set(known_corpora())
    with pytest.raises(DataError, match="known corpora: .*csv.*synthetic"):
        load_corpus("iemocapp", None, 0)
    with pytest.raises(DataError, match="does_not_exist"):
        load_corpus("csv", tmp_path / "does_not_exist", 0)
    with pytest.raises(DataError, match="no manifest.csv"):
        load_corpus("csv", tmp_path, 0)
    with pytest.raises(DataError, match="needs a root"):
        load_corpus("csv", None, 0)
    by_folder = load_corpus("csv", tiny_synthetic, 0)
    by_file = load_corpus("csv", tiny_synthetic / MANIFEST_NAME, 0)
    assert by_folder == by_file and len(by_folder) == 32
    # the synthetic loader with an explicit root reuses the generated corpus (sizes pinned to the tiny one)
    import functools

    import emodarts.data.synthetic as syn

    monkeypatch.setattr(syn, "synthesize_utterance", lambda *a, **k: pytest.fail("regenerated"))
    monkeypatch.setattr(syn, "ensure_synthetic_corpus",
                        functools.partial(syn.ensure_synthetic_corpus, n_speakers=4, utts_per_class=2))
    assert load_corpus("synthetic", tiny_synthetic, 0) == by_folder
