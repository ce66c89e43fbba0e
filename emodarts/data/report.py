"""The skipped-files report: every file a loader or the feature extraction could not use, and why.

Loaders and `build_features` add entries while they work; the run goes on with the rest. The caller prints
`summary()` and writes skipped_files.csv / skipped_files.json into the run or cache folder (`write`).
A DataError is raised only when nothing usable is left (`raise_if_empty`).

Each entry: file (the path the problem is about), kind (a short category), reason (a sentence that
names the file), action ("skipped": left out; "kept": used, with a conversion worth knowing about, such as
a resample or a stereo mix-down) and, when known, utt_id.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from emodarts.runtime.errors import DataError

REPORT_NAME = "skipped_files"

# kinds used by the loaders and the extraction (documented in docs/corpora.md)
KINDS = {
    "no-audio": "label line without an audio file",
    "no-label": "audio file without a label line",
    "missing-label-file": "label file missing",
    "unknown-label": "label not in the corpus's label set",
    "label-not-selected": "label taken by no class of --labels",
    "bad-line": "label line that cannot be parsed",
    "bad-name": "file name that does not follow the corpus's convention",
    "duplicate": "utterance listed twice",
    "empty-field": "manifest row with an empty field",
    "missing": "audio file not found",
    "unreadable": "not audio, or not readable",
    "empty": "audio file without samples",
    "truncated": "audio file shorter than its header says",
    "not-finite": "NaN or infinite samples",
    "too-short": "audio shorter than the minimum duration (--min-duration)",
    "missing-features": "features file not found (manifest column features)",
    "unreadable-features": "features file not a readable .npy array",
    "wrong-shape": "features array not rows x frames, or rows unlike the corpus's",
    "not-finite-features": "NaN or infinite feature values",
    "resampled": "sample rate differs from the corpus's usual rate (resampled)",
    "mixed-down": "more than one channel (averaged to mono)",
}


class SkipReport:
    """Collects (file, kind, reason) entries; see the module doc."""

    def __init__(self) -> None:
        self.entries: List[Dict[str, Optional[str]]] = []
        self._seen = set()

    # ------------------------------------------------------------------ adding
    def _add(self, action: str, file, kind: str, reason: str, utt_id: Optional[str]) -> None:
        key = (action, str(file), kind, reason)
        if key in self._seen:
            return
        self._seen.add(key)
        self.entries.append({"action": action, "kind": kind, "file": str(file), "reason": reason,
                             "utt_id": utt_id})

    def skip(self, file, kind: str, reason: str, utt_id: Optional[str] = None) -> None:
        """`file` is left out of the run because of `reason` (a sentence naming the file)."""
        self._add("skipped", file, kind, reason, utt_id)

    def note(self, file, kind: str, reason: str, utt_id: Optional[str] = None) -> None:
        """`file` is used, after a conversion the user should know about."""
        self._add("kept", file, kind, reason, utt_id)

    def extend(self, entries: Iterable[Dict]) -> None:
        for e in entries:
            self._add(e["action"], e["file"], e["kind"], e["reason"], e.get("utt_id"))

    # ------------------------------------------------------------------ reading
    @property
    def skipped(self) -> List[Dict]:
        return [e for e in self.entries if e["action"] == "skipped"]

    @property
    def kept_notes(self) -> List[Dict]:
        return [e for e in self.entries if e["action"] == "kept"]

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:  # an empty report is still a report object
        return True

    def counts(self) -> Dict[str, Dict[str, int]]:
        out: Dict[str, Dict[str, int]] = {"skipped": {}, "kept": {}}
        for (action, kind), n in sorted(Counter((e["action"], e["kind"]) for e in self.entries).items()):
            out[action][kind] = n
        return out

    def summary(self, where: Optional[Path] = None, examples: int = 3) -> str:
        """A few lines: counts per kind with the first reasons, and where the full report is."""
        if not self.entries:
            return "all files usable: nothing skipped"
        lines = []
        for entries, title, show_rest in ((self.skipped, "skipped {} file(s)", True),
                                          (self.kept_notes, "kept {} file(s) after a conversion", False)):
            if not entries:
                continue
            by_kind = Counter(e["kind"] for e in entries)
            lines.append(title.format(len(entries)) + ": "
                         + ", ".join(f"{n} {KINDS.get(k, k)}" for k, n in by_kind.most_common()))
            lines += [f"  - {e['reason']}" for e in entries[:examples]]
            if show_rest and len(entries) > examples:
                lines.append(f"  ... and {len(entries) - examples} more")
        if where is not None:
            lines.append(f"full list: {Path(where) / (REPORT_NAME + '.csv')}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ writing
    def write(self, folder: Path) -> Path:
        """Write skipped_files.csv and skipped_files.json (atomically) into `folder`; returns the csv path."""
        from emodarts.runtime.files import atomic_write_json, atomic_write_text

        folder = Path(folder)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["action", "kind", "file", "utt_id", "reason"])
        for e in self.entries:
            writer.writerow([e["action"], e["kind"], e["file"], e.get("utt_id") or "", e["reason"]])
        atomic_write_text(folder / f"{REPORT_NAME}.csv", buf.getvalue())
        atomic_write_json(folder / f"{REPORT_NAME}.json", {"counts": self.counts(), "entries": self.entries})
        return folder / f"{REPORT_NAME}.csv"

    def raise_if_empty(self, usable: int, what: str) -> None:
        """Raise a DataError (with the summary) when `usable` is 0."""
        if usable:
            return
        detail = self.summary()
        raise DataError(f"{what}: nothing usable is left" + (f"\n{detail}" if self.entries else ""))


def read_report(path: Path) -> SkipReport:
    """Read a skipped_files.json back."""
    rep = SkipReport()
    rep.extend(json.loads(Path(path).read_text())["entries"])
    return rep
