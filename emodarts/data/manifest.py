"""CSV manifests: one utterance a row, columns utt_id,path,label,speaker,session.

`path` may be absolute or relative to the manifest's folder; `session` may be empty or absent.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, List, Sequence

from ..errors import DataError
from . import EMOTIONS, Utterance

COLUMNS = ("utt_id", "path", "label", "speaker", "session")
REQUIRED = ("utt_id", "path", "label", "speaker")


def read_manifest(csv_path: Path, labels: Sequence[str] = EMOTIONS, check_files: bool = True) -> List[Utterance]:
    """Read a manifest; returns utterances with absolute paths, in file order.

    Raises DataError naming the file (and line) for a missing file, missing columns, empty fields,
    labels not in `labels`, duplicate utt_ids and (with check_files) audio files that do not exist.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"manifest not found: {csv_path}")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read manifest {csv_path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}:1: manifest lacks column(s) {', '.join(missing)} "
            f"(expected {','.join(COLUMNS)}; found {','.join(header) or 'no header'})"
        )
    reader.fieldnames = header
    base = Path(os.path.abspath(csv_path)).parent
    known = set(labels)
    seen = {}
    utts: List[Utterance] = []
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        vals = {c: (row.get(c) or "").strip() for c in COLUMNS}
        empty = [c for c in REQUIRED if not vals[c]]
        if empty:
            raise DataError(f"{csv_path}:{line}: empty field(s) {', '.join(empty)}")
        if vals["label"] not in known:
            raise DataError(
                f"{csv_path}:{line}: unknown label {vals['label']!r} (known: {', '.join(labels)})"
            )
        if vals["utt_id"] in seen:
            raise DataError(
                f"{csv_path}:{line}: duplicate utt_id {vals['utt_id']!r} (first on line {seen[vals['utt_id']]})"
            )
        seen[vals["utt_id"]] = line
        path = Path(vals["path"]).expanduser()
        if not path.is_absolute():
            path = base / path
        path = Path(os.path.normpath(path))
        if check_files and not path.is_file():
            raise DataError(f"{csv_path}:{line}: audio file not found: {path}")
        utts.append(Utterance(vals["utt_id"], str(path), vals["label"], vals["speaker"], vals["session"] or None))
    if not utts:
        raise DataError(f"{csv_path}: manifest has no utterances")
    return utts


def write_manifest(utts: Iterable[Utterance], csv_path: Path, relative: bool = True) -> Path:
    """Write a manifest atomically. With `relative`, paths under the manifest's folder are stored
    relative to it (so the corpus folder can move); other paths stay absolute."""
    from ..io import atomic_write_text

    csv_path = Path(csv_path)
    base = Path(os.path.abspath(csv_path)).parent
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for u in utts:
        path = Path(u.path)
        if relative:
            try:
                path = Path(os.path.abspath(path)).relative_to(base)
            except ValueError:
                pass
        writer.writerow([u.utt_id, path.as_posix(), u.label, u.speaker, u.session or ""])
    atomic_write_text(csv_path, buf.getvalue())
    return csv_path
