"""The real corpus layouts (IEMOCAP, MSP-IMPROV, MSP-Podcast, csv) on small replicas, their protocols and
folds: utterance counts per class, speaker and fold; label mapping and merging; speaker independence."""
import json
from collections import Counter

import pytest
from replicas import make_csv_corpus, make_iemocap, make_msp_improv, make_msp_podcast

from emodarts.data import Utterance
from emodarts.data.counts import class_list, fold_counts, format_counts, save_counts
from emodarts.engine.legacy import legacy_class_order
from emodarts.data.protocols import (
    PAPER_CODE_IEMOCAP_GROUPS,
    balanced_speaker_groups,
    default_protocol,
    get_protocol,
    known_protocols,
    n_dev_speakers,
)
from emodarts.data.registry import (
    known_corpora,
    load_corpus,
    load_native,
    load_protocol,
)
from emodarts.data.report import SkipReport
from emodarts.runtime.errors import DataError

STANDARD = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
PAPER = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad"}
FOUR = {"A": "angry", "H": "happy", "S": "sad", "N": "neutral"}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {
        "iemocap": (root / "iemocap", make_iemocap(root / "iemocap")),
        "msp-improv": (root / "mspi" / "MSP-IMPROV", make_msp_improv(root / "mspi")),
        "msp-podcast": (root / "mspp" / "MSP-Podcast", make_msp_podcast(root / "mspp")),
        "csv": (root / "csv", make_csv_corpus(root / "csv")[1]),
    }


def _load(corpus, root, protocol=None, seed=0):
    report = SkipReport()
    utts, excluded, proto = load_protocol(corpus, root, 0, report, protocol)
    return utts, excluded, proto, report


def _check_folds(folds, utts):
    """Speaker independence, dev from training speakers, every test utterance in exactly one fold part."""
    for f in folds:
        sp = {k: set(v) for k, v in f.speakers().items()}
        assert not sp["test"] & sp["train"] and not sp["test"] & sp["dev"] and not sp["dev"] & sp["train"]
        ids = [u.utt_id for part in (f.split.train, f.split.dev, f.split.test) for u in part]
        assert len(ids) == len(set(ids))
        assert set(ids) <= {u.utt_id for u in utts}


# ------------------------------------------------------------------------------------------ IEMOCAP
def test_iemocap_native_loader(corpora):
    root, recs = corpora["iemocap"]
    report = SkipReport()
    utts = load_native("iemocap", root, 0, report)
    assert not report.entries  # the ._ file, the Categorical/ folder and the C-E/A-E lines are not problems
    by_id = {u.utt_id: u for u in utts}
    assert len(utts) == len(recs) == 90
    for r in recs:
        u = by_id[r["utt_id"]]
        assert (u.label, u.speaker, u.session) == (r["label"], r["speaker"], r["session"])
    # the speaker is the gender letter of the utterance, not of the dialog
    assert by_id["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert by_id["Ses03M_impro01_F002"].speaker == "Ses03F"
    # root may be the release folder or its parent
    assert load_native("iemocap", root / "IEMOCAP_full_release", 0, SkipReport()) == utts


def test_iemocap_standard_protocol(corpora):
    root, recs = corpora["iemocap"]
    utts, excluded, proto, _ = _load("iemocap", root)
    assert proto.name == "standard" == default_protocol("iemocap")
    want = Counter(STANDARD[r["label"]] for r in recs if r["label"] in STANDARD)
    assert Counter(u.label for u in utts) == want
    # excited merged into happy; scripted kept
    assert sum(1 for r in recs if r["label"] == "exc") > 0
    assert want["happy"] == sum(1 for r in recs if r["label"] in ("hap", "exc"))
    assert any(not r["improvised"] for r in recs if r["label"] in STANDARD)
    assert excluded == {f"label {k}": v for k, v in sorted(Counter(r["label"] for r in recs
                                                                    if r["label"] not in STANDARD).items())}
    per_speaker = Counter(u.speaker for u in utts)
    assert per_speaker == Counter(r["speaker"] for r in recs if r["label"] in STANDARD)
    assert len(per_speaker) == 10
    folds = proto.make_folds(utts, seed=0)
    assert len(folds) == 5
    for k, f in enumerate(folds):
        assert f.test_speakers == [f"Ses0{k + 1}F", f"Ses0{k + 1}M"]  # leave one session out
        assert {u.session for u in f.split.test} == {f"Ses0{k + 1}"}
        assert len(f.speakers()["dev"]) == 2 and len(f.speakers()["train"]) == 6
        # dev: one female and one male training speaker
        assert sorted(s[-1] for s in f.speakers()["dev"]) == ["F", "M"]
        assert len(f.split.test) == sum(1 for u in utts if u.session == f"Ses0{k + 1}")
        assert len(f.split.train) + len(f.split.dev) + len(f.split.test) == len(utts)
    _check_folds(folds, utts)
    # the folds' test parts cover the corpus once
    assert sorted(u.utt_id for f in folds for u in f.split.test) == sorted(u.utt_id for u in utts)


def test_iemocap_paper_code_protocol(corpora):
    root, recs = corpora["iemocap"]
    utts, excluded, proto, _ = _load("iemocap", root, "paper-code")
    want = [r for r in recs if r["improvised"] and r["label"] in PAPER]
    assert Counter(u.label for u in utts) == Counter(PAPER[r["label"]] for r in want)
    assert all("_impro" in u.utt_id for u in utts)
    assert "label exc" in excluded  # no excited merge
    assert excluded["scripted (improvised only)"] == sum(1 for r in recs if not r["improvised"])
    # both the F and the M recording of each improvisation are kept (the published code kept one)
    dialogs = {u.utt_id.rsplit("_", 1)[0] for u in utts}
    for s in range(1, 6):
        assert {f"Ses0{s}F_impro01", f"Ses0{s}M_impro01"} <= dialogs
    folds = proto.make_folds(utts, seed=3)
    assert [tuple(sorted(g)) for g in PAPER_CODE_IEMOCAP_GROUPS] == [tuple(f.test_speakers) for f in folds]
    _check_folds(folds, utts)


def test_dev_speakers_depend_on_seed_not_test(corpora):
    root, _ = corpora["iemocap"]
    utts, _, proto, _ = _load("iemocap", root)
    a = proto.make_folds(utts, seed=0)
    b = proto.make_folds(utts, seed=0)
    c = [proto.make_folds(utts, seed=s) for s in range(1, 6)]
    assert [f.speakers() for f in a] == [f.speakers() for f in b]  # deterministic
    assert any(f.speakers()["dev"] != g.speakers()["dev"] for folds in c for f, g in zip(folds, a))
    assert all(f.test_speakers == g.test_speakers for folds in c for f, g in zip(folds, a))


# ---------------------------------------------------------------------------------------- MSP-IMPROV
def test_msp_improv_consensus_overrides_letter(corpora):
    root, recs = corpora["msp-improv"]
    utts, excluded, proto, report = _load("msp-improv", root)
    assert not report.entries and proto.name == "sessions"
    want = Counter(FOUR[r["consensus"]] for r in recs if r["consensus"] in FOUR)
    assert Counter(u.label for u in utts) == want
    assert excluded == {"label O": sum(r["consensus"] == "O" for r in recs),
                        "label X": sum(r["consensus"] == "X" for r in recs)}
    by_id = {u.utt_id: u for u in utts}
    differs = [r for r in recs if r["consensus"] in FOUR and r["consensus"] != r["target"]]
    assert differs and all(by_id[r["utt_id"]].label == FOUR[r["consensus"]] for r in differs)
    assert {u.speaker for u in utts} == {f"{g}0{s}" for g in "FM" for s in range(1, 7)}
    folds = proto.make_folds(utts, 0)
    assert len(folds) == 6
    for k, f in enumerate(folds):
        assert f.test_speakers == [f"F0{k + 1}", f"M0{k + 1}"]
    _check_folds(folds, utts)


def test_msp_improv_letters_without_label_file(tmp_path):
    recs = make_msp_improv(tmp_path, with_labels=False)
    utts, excluded, _, report = _load("msp-improv", tmp_path / "MSP-IMPROV")
    assert not report.entries and not excluded
    assert Counter(u.label for u in utts) == Counter(FOUR[r["target"]] for r in recs)
    with pytest.raises(DataError, match="Evalution.txt"):
        load_native("msp-improv", tmp_path / "MSP-IMPROV", 0, SkipReport(), labels="consensus")


def test_msp_improv_paper_code(corpora):
    root, recs = corpora["msp-improv"]
    utts, excluded, proto, _ = _load("msp-improv", root, "paper-code")
    read = [r for r in recs if r["scenario"] == "R"]
    assert Counter(u.label for u in utts) == Counter(FOUR[r["target"]] for r in read)  # file-name letters
    assert excluded == {"not a read (R) clip": len(recs) - len(read)}
    folds = proto.make_folds(utts, 0)
    assert [f.name for f in folds] == ["test session1", "test session2", "test session3", "test session5"]
    _check_folds(folds, utts)


# --------------------------------------------------------------------------------------- MSP-Podcast
def test_msp_podcast_official_split(corpora):
    root, recs = corpora["msp-podcast"]
    utts, excluded, proto, report = _load("msp-podcast", root)
    assert proto.name == "official" and not report.entries
    official = {"Train": "train", "Development": "dev", "Test1": "test"}
    want = [r for r in recs if r["split"] in official and r["label"] in FOUR]
    assert Counter(u.label for u in utts) == Counter(FOUR[r["label"]] for r in want)
    (fold,) = proto.make_folds(utts, 0)
    for part in ("train", "dev", "test"):
        got = sorted(u.utt_id + ".wav" for u in getattr(fold.split, part))
        assert got == sorted(r["file"] for r in want if official[r["split"]] == part)
    assert excluded["split set not Train/Development/Test1"] == sum(r["split"] == "Test2" for r in recs)
    # speaker ids carry the gender; unknown speakers are one pseudo-speaker
    assert {u.speaker for u in utts} <= {f"{r['speaker_id']}_{r['gender'][0]}" for r in recs} | {"unknown"}
    # 8 classes on request
    utts8, excluded8, _, _ = _load("msp-podcast", root, "official-8class")
    assert set(class_list(utts8)) == {"angry", "happy", "neutral", "sad", "surprise", "contempt", "fear", "disgust"}
    assert class_list(utts8) == sorted(class_list(utts8))  # sorted; runs made before classes were recorded:
    assert legacy_class_order(class_list(utts8))[:4] == ["angry", "happy", "neutral", "sad"]
    assert {"label O", "label X"} <= set(excluded8) and "label U" not in excluded8


def test_msp_podcast_speaker_folds(corpora):
    root, recs = corpora["msp-podcast"]
    utts, excluded, proto, _ = _load("msp-podcast", root, "speakers")
    assert "unknown" not in {u.speaker for u in utts}
    assert excluded["speaker unknown"] == sum(r["speaker_id"] == "Unknown" for r in recs)
    # every split set is pooled
    assert {u.split for u in utts} == {"Train", "Development", "Test1", "Test2"}
    folds = proto.make_folds(utts, 0)
    assert len(folds) == 5
    _check_folds(folds, utts)
    assert sorted(u.utt_id for f in folds for u in f.split.test) == sorted(u.utt_id for u in utts)
    sizes = [len(f.split.test) for f in folds]
    assert max(sizes) - min(sizes) <= 6  # balanced by utterance count (6 per speaker here)


# ----------------------------------------------------------------------------------------------- csv
def test_csv_manifest_aliases_split_and_sessions(corpora):
    root, recs = corpora["csv"]
    utts, _, proto, report = _load("csv", root)
    assert not report.entries and proto.name == "speakers"
    alias = {"anger": "angry", "ang": "angry", "happy": "happy", "happiness": "happy", "neu": "neutral",
             "neutral": "neutral", "sad": "sad", "sadness": "sad"}
    assert Counter(u.label for u in utts) == Counter(alias[r["label"].lower()] for r in recs)
    assert utts[0].utt_id == recs[0]["rel"][:-4]  # utt_id defaults to the path without extension
    assert {u.session for u in utts} == {r["session"] for r in recs}
    _check_folds(proto.make_folds(utts, 0), utts)
    utts_s, _, proto_s, _ = _load("csv", root, "split")
    (fold,) = proto_s.make_folds(utts_s, 0)
    assert len(fold.split.dev) == sum(r["split"] == "dev" for r in recs)
    assert len(fold.split.test) == sum(r["split"] == "test" for r in recs)
    folds = _load("csv", root, "sessions")[2].make_folds(utts, 0)
    assert [f.name for f in folds] == ["test S1", "test S2", "test S3", "test S4"]
    _check_folds(folds, utts)


def test_session_folds_need_sessions(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "manifest.csv").write_text("path,label,speaker\n" + "".join(
        f"a.wav,sad,S{i}\n".replace("a.wav", f"a{i}.wav") for i in range(4)))
    for i in range(4):
        (tmp_path / f"a{i}.wav").write_bytes(b"x")
    utts, _, proto, _ = _load("csv", tmp_path, "sessions")
    with pytest.raises(DataError, match="no session"):
        proto.make_folds(utts, 0)


# ------------------------------------------------------------------------------------- registry etc.
def test_registry_and_protocol_names(corpora):
    assert {"iemocap", "msp-improv", "msp-podcast", "csv", "synthetic"} <= set(known_corpora())
    assert known_protocols("iemocap") == ["paper-code", "standard"]
    assert "official" in known_protocols("msp-podcast") and "speakers" in known_protocols("msp-podcast")
    with pytest.raises(DataError, match="unknown protocol 'nope'.*paper-code, standard"):
        get_protocol("iemocap", "nope")
    root, _ = corpora["iemocap"]
    assert len(load_corpus("iemocap", root)) == len(_load("iemocap", root)[0])
    with pytest.raises(DataError, match="Session1"):
        load_corpus("iemocap", root / "IEMOCAP_full_release" / "Session1")
    with pytest.raises(DataError, match="needs --root"):
        load_corpus("iemocap", None)


def test_synthetic_default_protocol(tiny_synthetic):
    from emodarts.data.manifest import read_manifest

    proto = get_protocol("synthetic")  # (loading "synthetic" with a root would regenerate the full corpus)
    utts, excluded = proto.select(read_manifest(tiny_synthetic / "manifest.csv"))
    assert proto.name == "speakers" and not excluded and len(utts) == 32
    folds = proto.make_folds(utts, 0)
    assert len(folds) == 4 and all(len(f.test_speakers) == 1 for f in folds)  # 4 speakers: 1 test, 1 dev, 2 train
    _check_folds(folds, utts)


def test_balanced_groups_and_dev_size():
    utts = [Utterance(f"{s}_{k}", f"/x/{s}_{k}.wav", "sad", s) for s in ("F1", "F2", "M1", "M2", "M3")
            for k in range({"F1": 10, "F2": 2, "M1": 5, "M2": 5, "M3": 2}[s])]
    groups = balanced_speaker_groups(utts, 2, seed=0)
    sizes = sorted(sum(1 for u in utts if u.speaker in g) for g in groups)
    assert sizes == [12, 12]
    assert sorted(s for g in groups for s in g) == ["F1", "F2", "M1", "M2", "M3"]
    assert [n_dev_speakers(n) for n in (2, 3, 4, 20, 21, 100)] == [1, 1, 2, 2, 2, 10]


def test_fold_counts_saved(corpora, tmp_path):
    root, _ = corpora["iemocap"]
    utts, excluded, proto, _ = _load("iemocap", root)
    folds = proto.make_folds(utts, 0)
    counts = fold_counts(folds, class_list(utts), utts, excluded, proto, skipped=2)
    assert counts["all"]["total"] == len(utts)
    for row, f in zip(counts["folds"], folds):
        assert row["counts"]["test"]["total"] == len(f.split.test)
        assert sum(row["counts"]["train"][c] for c in counts["classes"]) == len(f.split.train)
    save_counts(counts, tmp_path)
    assert json.loads((tmp_path / "fold_counts.json").read_text()) == counts
    md = (tmp_path / "fold_counts.md").read_text()
    assert "| 0 | train |" in md and "Ses01F, Ses01M" in md and "label fru" in md and "skipped files" in md
    assert md.strip() == format_counts(counts).strip()
