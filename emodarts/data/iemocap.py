"""IEMOCAP as distributed (IEMOCAP_full_release).

    IEMOCAP_full_release/SessionN/sentences/wav/<dialog>/<utterance>.wav
    IEMOCAP_full_release/SessionN/dialog/EmoEvaluation/<dialog>.txt

The summary line of each utterance in <dialog>.txt reads
`[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]`, label one of neu, hap, exc, sad, ang, fru, sur,
fea, dis, oth, xxx. The speaker is the session plus the gender letter of the utterance's last field
(Ses01F_impro01_M003 is spoken by Ses01M: the letter after "Ses01" names who wore the markers, not the
speaker). The loader returns every labelled utterance with its IEMOCAP label code; a protocol
(data/protocols.py) maps and filters the labels.

--root may be IEMOCAP_full_release itself or the folder that holds it. macOS metadata files (._*) are
ignored.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from emodarts.data import Utterance
from emodarts.runtime.errors import DataError

LABELS = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
RELEASE_NAME = "IEMOCAP_full_release"
_SUMMARY = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]")
_UTT = re.compile(r"^(Ses\d{2})[FM]_.*_([FM])[^_]*$")


def find_release(root: Path) -> Path:
    """The folder that holds Session1..Session5: `root` or root/IEMOCAP_full_release."""
    if root is None:
        raise DataError("corpus 'iemocap' needs --root: the IEMOCAP_full_release folder (or its parent)")
    root = Path(root)
    if not root.exists():
        raise DataError(f"corpus root not found: {root}")
    for cand in (root, root / RELEASE_NAME):
        if cand.is_dir() and _session_dirs(cand):
            return cand
    raise DataError(f"no IEMOCAP session folders (Session1 .. Session5) in {root}: give the "
                    f"{RELEASE_NAME} folder as --root")


def _session_dirs(base: Path) -> List[Path]:
    return sorted((d for d in base.iterdir() if d.is_dir() and re.fullmatch(r"Session\d+", d.name)),
                  key=lambda d: int(d.name[7:]))


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def speaker_of(utt_id: str) -> Optional[Tuple[str, str]]:
    """(speaker, session) of an IEMOCAP utterance id, e.g. Ses01F_impro01_M003 -> (Ses01M, Ses01)."""
    m = _UTT.match(utt_id)
    if not m:
        return None
    return m.group(1) + m.group(2), m.group(1)


def parse_label_file(path: Path, report=None) -> Dict[str, Tuple[str, int]]:
    """utterance id -> (label, line number) from the summary lines of one EmoEvaluation file."""
    out: Dict[str, Tuple[str, int]] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        if report is None:
            raise DataError(f"cannot read label file {path}: {exc}") from exc
        report.skip(path, "unreadable", f"cannot read label file {path}: {exc}")
        return out
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith("["):
            continue
        m = _SUMMARY.match(line)
        if not m:
            msg = f"{path}:{lineno}: cannot parse the summary line {line.strip()[:60]!r}"
            if report is None:
                raise DataError(msg)
            report.skip(path, "bad-line", msg)
            continue
        utt, label = m.group(3), m.group(4)
        if utt in out:
            msg = f"{path}:{lineno}: {utt} is labelled twice (first on line {out[utt][1]}); the first is used"
            if report is None:
                raise DataError(msg)
            report.skip(path, "duplicate", msg, utt)
            continue
        out[utt] = (label, lineno)
    return out


def load_iemocap(root: Optional[Path], seed: int = 0, report=None) -> List[Utterance]:
    """Every labelled IEMOCAP utterance that has its audio, with the IEMOCAP label code.

    Problems (each named in `report`, the rest go on): a dialog without its label file, a label line
    without audio, audio without a label line, a label outside LABELS, an utterance id without a
    speaker letter. Without a report the first problem raises a DataError.
    """
    from emodarts.data.report import SkipReport

    strict = report is None
    report = report if report is not None else SkipReport()
    base = find_release(root)
    utts: List[Utterance] = []
    for sdir in _session_dirs(base):
        wav_root = sdir / "sentences" / "wav"
        eval_dir = sdir / "dialog" / "EmoEvaluation"
        audio: Dict[str, Dict[str, Path]] = {}
        if wav_root.is_dir():
            for d in sorted(p for p in wav_root.iterdir() if p.is_dir() and _visible(p)):
                audio[d.name] = {w.stem: w for w in sorted(d.glob("*.wav")) if _visible(w)}
        label_files = {}
        if eval_dir.is_dir():
            label_files = {p.stem: p for p in sorted(eval_dir.glob("*.txt")) if _visible(p)}
        for dialog in sorted(set(audio) | set(label_files)):
            wavs = audio.get(dialog, {})
            lf = label_files.get(dialog)
            if lf is None:
                for utt, w in wavs.items():
                    report.skip(w, "missing-label-file",
                                f"{w}: no label file {eval_dir / (dialog + '.txt')} for its dialog", utt)
                continue
            labels = parse_label_file(lf, report)
            for utt, (label, lineno) in labels.items():
                w = wavs.get(utt)
                if w is None:
                    expected = wav_root / dialog / f"{utt}.wav"
                    report.skip(expected, "no-audio",
                                f"{lf}:{lineno}: {utt} is labelled but its audio file is missing: {expected}", utt)
                    continue
                if label not in LABELS:
                    report.skip(w, "unknown-label",
                                f"{lf}:{lineno}: unknown label {label!r} for {w} "
                                f"(IEMOCAP labels: {', '.join(LABELS)})", utt)
                    continue
                who = speaker_of(utt)
                if who is None:
                    report.skip(w, "bad-name", f"{w}: cannot tell the speaker from the utterance id {utt!r} "
                                               f"(expected e.g. Ses01F_impro01_M003)", utt)
                    continue
                utts.append(Utterance(utt, os.path.abspath(w), label, who[0], who[1]))
            for utt, w in wavs.items():
                if utt not in labels:
                    report.skip(w, "no-label", f"{w}: no summary line for {utt} in {lf}", utt)
    if strict and report.skipped:
        raise DataError(report.skipped[0]["reason"])
    return utts

