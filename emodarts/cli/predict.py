"""`emodarts predict RUN_DIR AUDIO...`: the emotion the run's final network hears in each audio file (the work
is engine/predictor.py's; this module lays out the records)."""
from pathlib import Path
from typing import List, Sequence

from emodarts.engine.predictor import Predictor, run_folder_config


def load_predictor(run_dir: Path, device: str = "cpu"):
    """(config, classes, network in eval mode) of RUN_DIR/model.pt (a run's or a cv fold's)."""
    p = Predictor(run_dir, device)
    return p.config, p.classes, p.network


def predict_files(run_dir: Path, paths: Sequence[Path], device: str = "cpu") -> List[dict]:
    """One record per file: {file, label, probs} or {file, error} for audio that cannot be used, a clip
    shorter than the run's --min-duration included."""
    return Predictor(run_dir, device).predict_files(paths)


def format_predictions(records: List[dict]) -> str:
    """The records as a table: file, emotion, then a column per class."""
    classes = next((list(r["probs"]) for r in records if "probs" in r), [])
    lines = [f"{'file':<40} {'emotion':<9} " + " ".join(f"{c:>8}" for c in classes)]
    for r in records:
        name = r["file"] if len(r["file"]) <= 40 else "..." + r["file"][-37:]
        if "error" in r:
            lines.append(f"{name:<40} error: {r['error']}")
        else:
            lines.append(f"{name:<40} {r['label']:<9} " + " ".join(f"{r['probs'][c]:>8.3f}" for c in classes))
    return "\n".join(lines)


__all__ = ["format_predictions", "load_predictor", "predict_files", "run_folder_config"]
