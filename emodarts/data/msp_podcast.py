"""MSP-Podcast as distributed.

    Audios/MSP-PODCAST_0001_0008.wav                     ("Audio/" also accepted)
    Labels/labels_consensus.csv                          (also accepted directly under --root)

labels_consensus.csv has (at least) the columns FileName, EmoClass, SpkrID, Gender, Split_Set. EmoClass is
one of A (angry), S (sad), H (happy), U (surprise), F (fear), D (disgust), C (contempt), N (neutral),
O (other), X (no agreement); Split_Set one of Train, Development, Test1, Test2 (Test3 in later releases).
SpkrID "Unknown" marks clips whose speaker is not identified: they become the speaker "unknown" and are
left out of speaker folds. The loader returns the EmoClass letter as the label and Split_Set as the split;
a protocol maps and filters them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from emodarts.data import Utterance
from emodarts.data.manifest import open_csv
from emodarts.runtime.errors import DataError

LETTERS = ("A", "S", "H", "U", "F", "D", "C", "N", "O", "X")
LABEL_FILE = "labels_consensus.csv"
COLUMNS = ("FileName", "EmoClass", "SpkrID", "Gender", "Split_Set")
UNKNOWN_SPEAKER = "unknown"


def find_files(root: Path):
    if root is None:
        raise DataError("corpus 'msp-podcast' needs --root: the MSP-Podcast folder (Audios/ and Labels/)")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corpus root not found or not a folder: {root}")
    labels = next((p for p in (root / "Labels" / LABEL_FILE, root / LABEL_FILE) if p.is_file()), None)
    if labels is None:
        raise DataError(f"label file missing: no Labels/{LABEL_FILE} in {root}")
    audio = next((p for p in (root / "Audios", root / "Audio") if p.is_dir()), None)
    if audio is None:
        raise DataError(f"no Audios/ folder in {root}")
    return labels, audio


def speaker_id(spkr: str, gender: str) -> str:
    spkr = spkr.strip()
    if not spkr or spkr.lower() == "unknown":
        return UNKNOWN_SPEAKER
    g = gender.strip()[:1].upper()
    return f"{spkr}_{g}" if g in ("F", "M") else spkr


def load_msp_podcast(root: Optional[Path], seed: int = 0, report=None) -> List[Utterance]:
    """Every labelled MSP-Podcast clip that has its audio, with its EmoClass letter and Split_Set."""
    from emodarts.data.report import SkipReport

    strict = report is None
    report = report if report is not None else SkipReport()
    label_path, audio_dir = find_files(root)
    reader = open_csv(label_path, COLUMNS, "label file")
    audio: Dict[str, Path] = {p.name: p for p in audio_dir.rglob("*.wav") if not p.name.startswith(".")}
    utts: List[Utterance] = []
    labelled = set()
    for row in reader:
        line = reader.line_num
        name = (row.get("FileName") or "").strip()
        if not name:
            if any((v or "").strip() for v in row.values() if isinstance(v, str)):
                report.skip(label_path, "empty-field", f"{label_path}:{line}: empty FileName")
            continue
        if name in labelled:
            report.skip(label_path, "duplicate", f"{label_path}:{line}: {name} is listed twice; the first is used",
                        Path(name).stem)
            continue
        labelled.add(name)
        letter = (row.get("EmoClass") or "").strip().upper()
        wav = audio.get(name)
        if wav is None:
            report.skip(audio_dir / name, "no-audio",
                        f"{label_path}:{line}: {name} is labelled but its audio file is missing from {audio_dir}",
                        Path(name).stem)
            continue
        if letter not in LETTERS:
            report.skip(wav, "unknown-label", f"{label_path}:{line}: unknown EmoClass {letter!r} for {wav} "
                                              f"(known: {', '.join(LETTERS)})", Path(name).stem)
            continue
        utts.append(Utterance(Path(name).stem, os.path.abspath(wav), letter,
                              speaker_id(row.get("SpkrID") or "", row.get("Gender") or ""), None,
                              (row.get("Split_Set") or "").strip() or None))
    for name in sorted(set(audio) - labelled):
        report.skip(audio[name], "no-label", f"{audio[name]}: no row for {name} in {label_path}", Path(name).stem)
    if strict and report.skipped:
        raise DataError(report.skipped[0]["reason"])
    return utts
