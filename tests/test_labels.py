"""Any label set: a csv manifest's classes are its labels (sorted), --labels chooses, orders and merges them,
and the head, the metrics, the confusion plot, predict and report follow the class list config.json records.
End to end through the CLI with a 6-class (CREMA-D's) and an 8-class (RAVDESS's) corpus."""
import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import invoke_cli, one_error_line
from replicas import tiny_wav

from emodarts.data.labels import parse_labels
from emodarts.data.protocols import get_protocol
from emodarts.data.report import SkipReport
from emodarts.engine.config import load_config
from emodarts.runtime.errors import DataError

CREMA_D = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")  # CREMA-D's codes, as its file names write them
RAVDESS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
QUIET = ("--preset", "tiny", "--epochs", "1", "--no-progress", "--set", "search.batch_size=16",
         "--set", "train.batch_size=16")


def make_corpus(root: Path, labels, n_speakers: int = 6, per_label: int = 2, missing=None) -> Path:
    """root/manifest.csv over n_speakers speakers with `per_label` clips of every label each; `missing`
    (speaker, label) pairs are left out."""
    rows = [["path", "label", "speaker"]]
    seed = 0
    for s in range(n_speakers):
        spk = f"{'F' if s % 2 == 0 else 'M'}{s // 2 + 1:02d}"
        for label in labels:
            if missing and (spk, label) in missing:
                continue
            for k in range(per_label):
                rel = f"wav/{spk}/{label}_{k}.wav"
                tiny_wav(root / rel, seed)
                rows.append([rel, label, spk])
                seed += 1
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root / "manifest.csv"


def ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


# ------------------------------------------------------------------------------------- whole runs
def test_six_classes_end_to_end(tmp_path):
    """CREMA-D's six codes: the classes are the manifest's labels as emotions, sorted; a run, predict and
    report all have six."""
    manifest = make_corpus(tmp_path / "crema", CREMA_D)
    run = tmp_path / "run"
    ok(invoke_cli("run", "--corpus", "csv", "--root", str(manifest), *QUIET, "--train-epochs", "1", "--out", str(run)))
    classes = ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    assert json.loads((run / "config.json").read_text())["classes"] == classes
    assert load_config(run / "config.json").labels == ()  # the record is no setting
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == classes and len(metrics["confusion"]) == 6
    assert len(metrics["recall"]) == 6
    state = torch.load(run / "model.pt", weights_only=False)
    assert state["classes"] == classes and state["model"]["head.linear.weight"].shape[0] == 6
    report = (run / "report" / "README.md").read_text()
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ") and line.count("|") == 4]
    assert [r[0][2:] for r in rows[1:]] == classes  # per-class recall, in the recorded order
    assert sum(int(r[1]) for r in rows[1:]) == metrics["n"]
    clip = str(tmp_path / "crema" / "wav" / "F01" / "SAD_0.wav")
    probs = json.loads(ok(invoke_cli("predict", str(run), clip, "--json")).output)[0]["probs"]
    assert list(probs) == classes and abs(sum(probs.values()) - 1) < 1e-5
    table = ok(invoke_cli("predict", str(run), clip)).output
    assert all(c in table.splitlines()[0] for c in classes)


def test_eight_classes_and_labels_that_merge_and_select(tmp_path):
    """RAVDESS's eight labels: all eight by default; --labels keeps the given order, merges calm into
    neutral, drops surprise (skipped_files.csv: label-not-selected) and records the classes."""
    manifest = make_corpus(tmp_path / "ravdess", RAVDESS)
    run8 = tmp_path / "run8"
    ok(invoke_cli("run", "--corpus", "csv", "--root", str(manifest), *QUIET, "--train-epochs", "1", "--out", str(run8)))
    eight = sorted(["neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise"])
    assert json.loads((run8 / "config.json").read_text())["classes"] == eight
    assert len(json.loads((run8 / "metrics.json").read_text())["confusion"]) == 8

    run = tmp_path / "merged"
    labels = "sad,neutral=neutral+calm,happy,angry,fear=fearful,disgust"
    ok(invoke_cli("search", "--corpus", "csv", "--root", str(manifest), *QUIET, "--labels", labels, "--out", str(run)))
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["classes"] == ["sad", "neutral", "happy", "angry", "fear", "disgust"]
    assert recorded["labels"] == labels.split(",")
    with open(run / "skipped_files.csv") as fh:
        skipped = list(csv.DictReader(fh))
    assert {r["kind"] for r in skipped} == {"label-not-selected"} and len(skipped) == 12  # two surprised each
    assert all("surprised" in r["file"] for r in skipped)
    # the same selection from a config file, and a run's config.json (classes and all) as --config
    import yaml

    again = yaml.safe_load(ok(invoke_cli("config", "--config", str(run / "config.json"))).output)
    assert again["labels"] == labels.split(",") and "classes" not in again


# ---------------------------------------------------------------------------------------- errors
def test_a_class_missing_from_a_part_is_named(tmp_path):
    """Fear spoken by one speaker only: two of train, dev and test have none, which is an error naming the
    class and the part, before the run folder exists; --labels without fear runs."""
    only = {(f"{g}{n:02d}", "fear") for g in "FM" for n in (1, 2, 3)} - {("F01", "fear")}
    manifest = make_corpus(tmp_path / "c", ("angry", "fear", "sad"), missing=only)
    line = one_error_line(invoke_cli("search", "--corpus", "csv", "--root", str(manifest), *QUIET,
                                     "--out", str(tmp_path / "r")))
    assert "class 'fear' has no utterance in the" in line and "part" in line and "--labels" in line
    assert not (tmp_path / "r" / "config.json").exists()  # a run that never started leaves no run
    ok(invoke_cli("search", "--corpus", "csv", "--root", str(manifest), *QUIET, "--labels", "angry,sad",
                  "--out", str(tmp_path / "r")))


def test_label_errors(tmp_path):
    manifest = make_corpus(tmp_path / "c", ("angry", "sad", "happy"))
    base = ("search", "--corpus", "csv", "--root", str(manifest), *QUIET)
    line = one_error_line(invoke_cli(*base, "--labels", "angry,sadd", "--out", str(tmp_path / "a")))
    assert "no utterance of corpus csv" in line and "'sadd'" in line and "angry, happy, sad" in line
    line = one_error_line(invoke_cli(*base, "--labels", "angry,happy=sad+angry", "--out", str(tmp_path / "b")))
    assert "label 'angry' is taken by two classes (angry and happy)" in line
    line = one_error_line(invoke_cli(*base, "--set", "labels=[angry]", "--out", str(tmp_path / "c2")))
    assert "--set labels=[angry]: field 'labels' is ['angry']; expected a list of classes" in line
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c2"))
    # --resume keeps refusing changes
    ok(invoke_cli(*base, "--labels", "angry,sad", "--out", str(tmp_path / "r")))
    line = one_error_line(invoke_cli("search", "--resume", str(tmp_path / "r"), "--labels", "angry,happy"))
    assert "--labels" in line


def test_protocol_corpora_take_labels_by_code_or_name():
    """IEMOCAP's codes or their names: `exc` and `excited` are one label; its standard protocol's own
    merge (exc into happy) is what --labels neutral,happy=happy+excited,sad,angry writes out."""
    from emodarts.data import Utterance

    proto = get_protocol("iemocap", "standard")
    utts = [Utterance(f"u{i}", f"/x/{i}.wav", code, "Ses01F", "Ses01")
            for i, code in enumerate(("neu", "hap", "exc", "sad", "ang", "fru"))]
    default, excluded = proto.select(utts)
    spec = parse_labels(("neutral", "happy=happy+excited", "sad", "angry"))
    report = SkipReport()
    chosen, _ = proto.select(utts, spec, report)
    assert [u.label for u in chosen] == [u.label for u in default] and excluded == {"label fru": 1}
    assert [e["kind"] for e in report.skipped] == ["label-not-selected"] and "'fru'" in report.skipped[0]["reason"]
    by_code, _ = proto.select(utts, parse_labels(("neu", "hap=hap+exc", "frustrated")), SkipReport())
    assert [u.label for u in by_code] == ["neu", "hap", "hap", "frustrated"]
    with pytest.raises(DataError, match="no utterance of corpus iemocap .* the label 'bored'"):
        proto.select(utts, parse_labels(("neu", "bored")), SkipReport())


def test_resumed_runs_follow_the_classes_they_recorded(tmp_path):
    """A new run records its classes; resuming finds the same or says the corpus changed; a run of a version
    that recorded none keeps that version's order (the four emotions first)."""
    from emodarts.data import Utterance
    from emodarts.data.counts import class_list
    from emodarts.engine.pipeline import settle_classes

    utts = [Utterance(str(i), f"/x/{i}.wav", label, "S") for i, label in enumerate(("sad", "fear", "angry"))]
    classes = class_list(utts)
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0}))
    assert settle_classes(classes, False, tmp_path, resuming=True) == ["angry", "sad", "fear"]  # an older run
    assert settle_classes(classes, True, tmp_path, resuming=True) == ["angry", "fear", "sad"]  # --labels' order
    assert settle_classes(classes, False, tmp_path, resuming=False) == ["angry", "fear", "sad"]  # a new one records
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 0, "classes": ["angry", "fear", "sad"]}
    assert settle_classes(classes, False, tmp_path, resuming=True) == ["angry", "fear", "sad"]
    with pytest.raises(DataError, match="records the classes angry, fear, sad; the corpus now gives angry, sad"):
        settle_classes(class_list(utts[::2]), False, tmp_path, resuming=True)
