"""Utterances per class, fold and part: what `features` and `cv` print and save beside a run."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from emodarts.data import Utterance
from emodarts.data.labels import LabelSpec
from emodarts.data.protocols import Fold, Protocol


def class_list(utts: Sequence[Utterance], spec: Optional[LabelSpec] = None) -> List[str]:
    """The classes of a run over `utts`, label index i being the i-th: those of --labels in its order, else
    the labels present, sorted (the one definition; `prepare_data` and `cv` both use it; runs recorded
    before classes were, see engine/legacy.py: legacy_class_order)."""
    if spec is not None:
        return list(spec.classes)
    return sorted({u.label for u in utts})


def fold_counts(folds: Sequence[Fold], classes: Sequence[str], utts: Optional[Sequence[Utterance]] = None,
                excluded: Optional[Dict[str, int]] = None, protocol: Optional[Protocol] = None,
                skipped: int = 0) -> dict:
    """Utterances per class for every fold and part (train/dev/test), plus the totals."""
    def per_class(part):
        c = Counter(u.label for u in part)
        out = {k: int(c.get(k, 0)) for k in classes}
        out["total"] = len(part)
        return out

    rows = []
    for f in folds:
        sp = f.speakers()
        rows.append({"fold": f.index, "name": f.name,
                     "speakers": {p: sp[p] for p in ("train", "dev", "test")},
                     "counts": {p: per_class(getattr(f.split, p)) for p in ("train", "dev", "test")}})
    out = {"classes": list(classes), "folds": rows}
    if protocol is not None:
        out["corpus"], out["protocol"], out["description"] = protocol.corpus, protocol.name, protocol.description
    if utts is not None:
        out["all"] = per_class(utts)
        out["speakers"] = len({u.speaker for u in utts})
    out["excluded"] = dict(excluded or {})
    out["skipped_files"] = int(skipped)
    return out


def format_counts(counts: dict) -> str:
    """A Markdown table of fold_counts()."""
    classes = counts["classes"]
    lines = []
    if "protocol" in counts:
        lines.append(f"{counts['corpus']} / {counts['protocol']}: {counts['description']}")
        lines.append("")
    head = ["fold", "part", "speakers"] + classes + ["total"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(classes) + 1)) + "|")
    if "all" in counts:
        lines.append("| all | - | " + str(counts.get("speakers", "")) + " | "
                     + " | ".join(str(counts["all"][c]) for c in classes) + f" | {counts['all']['total']} |")
    for row in counts["folds"]:
        for part in ("train", "dev", "test"):
            spk = row["speakers"][part]
            shown = ", ".join(spk) if part == "test" and len(spk) <= 4 else str(len(spk))
            cells = [str(row["fold"]) if part == "train" else "", part, shown]
            cells += [str(row["counts"][part][c]) for c in classes] + [str(row["counts"][part]["total"])]
            lines.append("| " + " | ".join(cells) + " |")
    if counts.get("excluded"):
        lines.append("")
        lines.append("left out by the protocol: " + ", ".join(f"{k}: {v}" for k, v in counts["excluded"].items()))
    if counts.get("skipped_files"):
        lines.append(f"skipped files (see skipped_files.csv): {counts['skipped_files']}")
    return "\n".join(lines)


def save_counts(counts: dict, folder, name: str = "fold_counts") -> None:
    """Write <name>.json and <name>.md into `folder` (atomically)."""

    from emodarts.runtime.files import atomic_write_json, atomic_write_text

    atomic_write_json(Path(folder) / f"{name}.json", counts)
    atomic_write_text(Path(folder) / f"{name}.md", format_counts(counts) + "\n")
