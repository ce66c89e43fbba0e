"""`emodarts predict RUN_DIR AUDIO...`: the emotion the run's final network hears in each audio file."""
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from emodarts.engine.config import load_config
from emodarts.model.network import DerivedNetwork, has_auxiliary_head
from emodarts.model.space import genotype_from_dict
from emodarts.runtime.errors import DataError, EmodartsError


def run_folder_config(run_dir: Path):
    """RUN_DIR/config.json; for a `cv` fold folder of an older version (no config.json of its own), the cv
    run's configuration with the fold's protocol and number (cv.legacy_fold_config)."""
    from emodarts.engine.legacy import legacy_fold_config

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if config_path.is_file():
        return load_config(config_path)
    cfg = legacy_fold_config(run_dir)
    if cfg is None:
        raise EmodartsError(f"{config_path}: not a run folder (config.json is missing)")
    return cfg


def load_predictor(run_dir: Path, device: str = "cpu"):
    """(config, classes, network in eval mode) from RUN_DIR/model.pt (a run's or a cv fold's). A network
    trained with an auxiliary head keeps it in model.pt; it is loaded but never used here."""
    from emodarts.engine.legacy import load_run_checkpoint

    run_dir = Path(run_dir)
    cfg = run_folder_config(run_dir)
    state = load_run_checkpoint(run_dir / "model.pt", cfg)
    genotype = genotype_from_dict(state["genotype"], where=str(run_dir / "model.pt"))
    n_features = state["model"]["norm.mean"].shape[0]
    net = DerivedNetwork(cfg.model, genotype, n_features, len(state["classes"]),
                         auxiliary=has_auxiliary_head(state["model"]))
    net.load_state_dict(state["model"])
    return cfg, list(state["classes"]), net.to(device).eval()


@torch.no_grad()
def predict_files(run_dir: Path, paths: Sequence[Path], device: str = "cpu") -> List[dict]:
    """One record per file: {file, label, probs} or {file, error} for audio that cannot be used, a clip
    shorter than the run's --min-duration included (the run never trained on such clips)."""
    from emodarts.features import check_duration, extract_features, run_feature_config, with_rows
    from emodarts.features.audio import audio_facts

    cfg, classes, net = load_predictor(run_dir, device)
    # the run's kind of features (npy: the files given are .npy arrays with the rows the network was trained on)
    feature_cfg = with_rows(run_feature_config(cfg), int(net.norm.mean.shape[0]))
    out = []
    for path in paths:
        if Path(path).is_dir():  # else "audio file not found", which misleads
            out.append({"file": str(path), "error": f"{path} is a directory, not an audio file"})
            continue
        try:
            facts = audio_facts(str(path)) if feature_cfg.kind != "npy" else None
            if facts:
                check_duration(str(path), facts["frames"] / facts["sr"], feature_cfg)
            x = extract_features(str(path), feature_cfg)
        except DataError as exc:
            out.append({"file": str(path), "error": str(exc)})
            continue
        logits = net(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device))
        probs = torch.softmax(logits.float(), dim=-1)[0].cpu().tolist()
        out.append({"file": str(path), "label": classes[int(np.argmax(probs))],
                    "probs": dict(zip(classes, probs))})
    return out


def format_predictions(records: List[dict]) -> str:
    classes = next((list(r["probs"]) for r in records if "probs" in r), [])
    lines = [f"{'file':<40} {'emotion':<9} " + " ".join(f"{c:>8}" for c in classes)]
    for r in records:
        name = r["file"] if len(r["file"]) <= 40 else "..." + r["file"][-37:]
        if "error" in r:
            lines.append(f"{name:<40} error: {r['error']}")
        else:
            lines.append(f"{name:<40} {r['label']:<9} " + " ".join(f"{r['probs'][c]:>8.3f}" for c in classes))
    return "\n".join(lines)
