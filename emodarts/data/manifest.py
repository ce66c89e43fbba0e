"""CSV manifests: one utterance a row, columns path,label,speaker and optional utt_id, session, split, features.

`path` may be absolute or relative to the manifest's folder; `utt_id` defaults to the path as written
without its extension; `session` and `split` may be empty or absent. `features` names the utterance's
precomputed features (.npy, rows x frames; absolute or relative to the manifest's folder), which
`--features npy` reads instead of the audio; a row that names one need not have its audio file here.

Strict mode (no `report`): the first bad row raises a DataError naming the file and line. With a
`report` (data.report.SkipReport), bad rows are recorded there (file:line and why) and left out, and only
problems with the manifest as a whole (unreadable, missing columns) raise.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from emodarts.data import EMOTIONS, Utterance
from emodarts.runtime.errors import DataError

COLUMNS = ("utt_id", "path", "label", "speaker", "session", "split")
REQUIRED = ("path", "label", "speaker")
FEATURES = "features"  # optional column: precomputed features of the utterance (--features npy)


def open_csv(path: Path, required: Sequence[str], what: str = "file", optional: str = "") -> csv.DictReader:
    """A DictReader over a UTF-8 CSV (BOM allowed) with stripped header names; a DataError naming the file
    when it cannot be read or lacks a required column."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path}:1: {what} lacks column(s) {', '.join(missing)} (expected {','.join(required)}"
            f"{' and ' + optional if optional else ''}; found {','.join(header) or 'no header'})"
        )
    reader.fieldnames = header
    return reader


def read_manifest(csv_path: Path, labels: Optional[Sequence[str]] = EMOTIONS, check_files: bool = True,
                  report=None) -> List[Utterance]:
    """Read a manifest; returns utterances with absolute paths, in file order.

    labels: the accepted labels (None: any; the csv corpus takes any, data/labels.py). Problems: a missing file, missing columns, empty fields,
    unknown labels, duplicate utt_ids and (with check_files) audio files that do not exist; each message
    names the file and line. See the module doc for strict mode and `report`.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"manifest not found: {csv_path}")
    reader = open_csv(csv_path, REQUIRED, "manifest", "optionally utt_id,session,split,features")
    base = Path(os.path.abspath(csv_path)).parent
    known = set(labels) if labels is not None else None
    seen = {}
    utts: List[Utterance] = []

    def problem(line: int, kind: str, msg: str, file=csv_path, utt_id=None) -> None:
        text = f"{csv_path}:{line}: {msg}"
        if report is None:
            raise DataError(text)
        report.skip(file, kind, text, utt_id)

    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        vals = {c: (row.get(c) or "").strip() for c in COLUMNS}
        empty = [c for c in REQUIRED if not vals[c]]
        if empty:
            problem(line, "empty-field", f"empty field(s) {', '.join(empty)}")
            continue
        path = Path(vals["path"]).expanduser()
        utt_id = vals["utt_id"] or Path(vals["path"]).with_suffix("").as_posix()
        if not path.is_absolute():
            path = base / path
        path = Path(os.path.normpath(path))
        features = _resolve(base, (row.get(FEATURES) or "").strip())
        label = vals["label"]
        if known is not None and label not in known:
            problem(line, "unknown-label", f"unknown label {label!r} (known: {', '.join(labels)})", path, utt_id)
            continue
        if utt_id in seen:
            problem(line, "duplicate", f"duplicate utt_id {utt_id!r} (first on line {seen[utt_id]})", path, utt_id)
            continue
        seen[utt_id] = line
        if check_files and not features and not path.is_file():
            problem(line, "no-audio", f"audio file not found: {path}", path, utt_id)
            continue
        utts.append(Utterance(utt_id, str(path), label, vals["speaker"], vals["session"] or None,
                              vals["split"] or None, features))
    if not utts and report is None:
        raise DataError(f"{csv_path}: manifest has no utterances")
    return utts


def _resolve(base: Path, value: str) -> Optional[str]:
    """An absolute, normalised path for a path column's value (relative ones are under `base`), or None."""
    if not value:
        return None
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


def write_manifest(utts: Iterable[Utterance], csv_path: Path, relative: bool = True) -> Path:
    """Write a manifest atomically. With `relative`, paths under the manifest's folder are stored
    relative to it (so the corpus folder can move); other paths stay absolute. The split column is
    written only when some utterance has a split, the features column when some utterance has features."""
    from emodarts.runtime.files import atomic_write_text

    utts = list(utts)
    columns = COLUMNS if any(u.split for u in utts) else COLUMNS[:-1]
    with_features = any(getattr(u, "features", None) for u in utts)
    if with_features:
        columns = columns + (FEATURES,)
    csv_path = Path(csv_path)
    base = Path(os.path.abspath(csv_path)).parent
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)

    def shown(p: str) -> str:
        path = Path(p)
        if relative:
            try:
                path = Path(os.path.abspath(path)).relative_to(base)
            except ValueError:
                pass
        return path.as_posix()

    for u in utts:
        row = [u.utt_id, shown(u.path), u.label, u.speaker, u.session or ""]
        if "split" in columns:
            row.append(u.split or "")
        if with_features:
            row.append(shown(u.features) if u.features else "")
        writer.writerow(row)
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path
