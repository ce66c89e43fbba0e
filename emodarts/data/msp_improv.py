"""MSP-IMPROV as distributed.

    Audio/session1/S01A/P/MSP-IMPROV-S01A-F01-P-FM01.wav        (any folder depth under --root works)
    Evalution.txt                                                 (optional; also "Evaluation.txt")

The file name carries the sentence (S01..), the target emotion letter of the scenario (A angry, H happy,
S sad, N neutral), the speaker (F01..F06, M01..M06; session n holds F0n and M0n), the scenario type (R read,
S improvised target sentence, P other improvised turns, T natural interaction) and a turn id.

The consensus-label file, when present, overrides the letter. Its lines read
`UTD-IMPROV-S01A-F01-S-FM01.avi; N; A:3.000000; V:3.500000; D:3.000000;` (letters A, H, S, N, O other,
X no agreement); the UTD-IMPROV prefix names the same clip as MSP-IMPROV.

`labels`: "auto" (consensus file when present, else the target letter), "consensus" (requires the file) or
"target" (the file-name letter, as the published emoDARTS code does). The loader returns the letter as the
label; a protocol maps it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from emodarts.data import Utterance
from emodarts.runtime.errors import DataError

TARGET_LETTERS = ("A", "H", "S", "N")
CONSENSUS_LETTERS = ("A", "H", "S", "N", "O", "X")
SCENARIOS = ("R", "S", "P", "T")
LABEL_FILES = ("Evalution.txt", "Evaluation.txt")
_NAME = re.compile(r"^MSP-IMPROV-(S\d{2})([A-Z])-([FM])(\d{2})-([A-Z])-([A-Z0-9]+)$")


def parse_name(stem: str) -> Optional[Dict[str, str]]:
    """Fields of an MSP-IMPROV clip name (with the MSP- or UTD- prefix), or None."""
    stem = re.sub(r"^UTD-IMPROV-", "MSP-IMPROV-", stem)
    m = _NAME.match(stem)
    if not m:
        return None
    sentence, letter, gender, num, scenario, turn = m.groups()
    return {"sentence": sentence, "target": letter, "speaker": f"{gender}{num}",
            "session": f"session{int(num)}", "scenario": scenario, "turn": turn}


def find_label_file(root: Path) -> Optional[Path]:
    for name in LABEL_FILES:
        for cand in [root / name] + sorted(root.glob(f"*/{name}")):
            if cand.is_file():
                return cand
    return None


def parse_label_file(path: Path, report) -> Dict[str, Tuple[str, int]]:
    """clip id (MSP-IMPROV-...) -> (consensus letter, line)."""
    out: Dict[str, Tuple[str, int]] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read the MSP-IMPROV label file {path}: {exc}") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = [f.strip() for f in line.split(";")]
        if not fields[0] or not fields[0].lower().endswith((".avi", ".wav")):
            continue  # blank lines, per-evaluator detail lines
        if len(fields) < 2 or not fields[1]:
            report.skip(path, "bad-line", f"{path}:{lineno}: no consensus letter in {line.strip()[:60]!r}")
            continue
        clip = re.sub(r"^UTD-IMPROV-", "MSP-IMPROV-", os.path.splitext(fields[0])[0])
        if clip in out:
            report.skip(path, "duplicate", f"{path}:{lineno}: {clip} is labelled twice (first on line "
                                           f"{out[clip][1]}); the first is used", clip)
            continue
        out[clip] = (fields[1].upper(), lineno)
    return out


def load_msp_improv(root: Optional[Path], seed: int = 0, report=None, labels: str = "auto") -> List[Utterance]:
    """Every usable MSP-IMPROV clip with its emotion letter (see the module doc for `labels`)."""
    from emodarts.data.report import SkipReport

    if labels not in ("auto", "consensus", "target"):
        raise ValueError(f"labels must be auto, consensus or target, not {labels!r}")
    strict = report is None
    report = report if report is not None else SkipReport()
    if root is None:
        raise DataError("corpus 'msp-improv' needs --root: the MSP-IMPROV folder (Audio/ and Evalution.txt)")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corpus root not found or not a folder: {root}")
    label_file = find_label_file(root) if labels != "target" else None
    if labels == "consensus" and label_file is None:
        raise DataError(f"no consensus-label file ({' or '.join(LABEL_FILES)}) in {root}; it is needed for "
                        f"consensus labels (the 'target' label source reads the file names instead)")
    wavs = sorted(p for p in root.rglob("*.wav") if not p.name.startswith("."))
    if not wavs:
        raise DataError(f"no .wav files under {root} (expected Audio/sessionN/SxxY/T/MSP-IMPROV-*.wav)")
    consensus = parse_label_file(label_file, report) if label_file else None
    utts: List[Utterance] = []
    seen: Dict[str, Path] = {}
    for w in wavs:
        info = parse_name(w.stem)
        if info is None:
            report.skip(w, "bad-name", f"{w}: the file name does not follow MSP-IMPROV-S01A-F01-P-FM01.wav")
            continue
        if w.stem in seen:
            report.skip(w, "duplicate", f"{w}: the clip {w.stem} also exists as {seen[w.stem]}; the first is used",
                        w.stem)
            continue
        seen[w.stem] = w
        if consensus is not None:
            if w.stem not in consensus:
                report.skip(w, "no-label", f"{w}: no line for {w.stem} in {label_file}", w.stem)
                continue
            letter, lineno = consensus[w.stem]
            if letter not in CONSENSUS_LETTERS:
                report.skip(w, "unknown-label", f"{label_file}:{lineno}: unknown consensus label {letter!r} for "
                                                f"{w} (known: {', '.join(CONSENSUS_LETTERS)})", w.stem)
                continue
        else:
            letter = info["target"]
            if letter not in TARGET_LETTERS:
                report.skip(w, "unknown-label", f"{w}: unknown target-emotion letter {letter!r} in the file name "
                                                f"(known: {', '.join(TARGET_LETTERS)})", w.stem)
                continue
        utts.append(Utterance(w.stem, os.path.abspath(w), letter, info["speaker"], info["session"]))
    if consensus is not None:
        for clip, (_, lineno) in consensus.items():
            if clip not in seen:
                report.skip(f"{clip}.wav", "no-audio",
                            f"{label_file}:{lineno}: {clip} is labelled but no {clip}.wav is under {root}", clip)
    if strict and report.skipped:
        raise DataError(report.skipped[0]["reason"])
    return utts
