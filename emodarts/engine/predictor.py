"""A trained run's network, ready to hear clips: what `emodarts predict` and the Python API's
`emodarts.load(RUN_DIR)` give. It takes the run's configuration, classes and feature settings from the
run folder, so a clip is turned into features exactly as the run's corpus was."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from emodarts.engine.config import RunConfig, load_config, recorded_classes
from emodarts.model.network import DerivedNetwork, has_auxiliary_head
from emodarts.model.space import genotype_from_dict
from emodarts.runtime.errors import DataError, EmodartsError


def run_folder_config(run_dir: Path) -> RunConfig:
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


class Predictor:
    """The final network of a run (model.pt) in eval mode, with its classes and feature settings.

    `predict(x)` takes an audio file, a waveform (with `sample_rate`) or, for an npy run, a features file
    or array, and returns {"label", "probs"}; `predict_files` a record per file, errors included."""

    def __init__(self, run_dir: Path, device: str = "cpu", extractor: str = "auto"):
        from emodarts.engine.legacy import load_run_checkpoint

        self.run_dir = Path(run_dir)
        self.config = run_folder_config(self.run_dir)
        state = load_run_checkpoint(self.run_dir / "model.pt", self.config)
        self.genotype = genotype_from_dict(state["genotype"], where=str(self.run_dir / "model.pt"))
        n_features = state["model"]["norm.mean"].shape[0]
        self.network = DerivedNetwork(self.config.model, self.genotype, n_features, len(state["classes"]),
                                      auxiliary=has_auxiliary_head(state["model"]))  # an auxiliary head is unused
        self.network.load_state_dict(state["model"])
        self.network.to(device).eval()
        self.classes: List[str] = recorded_classes(self.run_dir) or list(state["classes"])
        if self.classes != list(state["classes"]):
            raise EmodartsError(f"{self.run_dir / 'config.json'} records the classes {', '.join(self.classes)}, but "
                                f"model.pt was trained on {', '.join(state['classes'])}: the folder mixes two runs")
        self.device, self.extractor = device, extractor

    @functools.cached_property
    def feature_config(self):
        """The run's feature settings (npy: the rows the network was trained on); read on the first clip."""
        from emodarts.features import run_feature_config, with_rows

        return with_rows(run_feature_config(self.config), int(self.network.norm.mean.shape[0]))

    @torch.no_grad()
    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities of one clip's features (F x T) or a batch of them (N x F x T)."""
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        x = x[None, None] if x.dim() == 2 else x[:, None]
        return torch.softmax(self.network(x).float(), dim=-1).cpu().numpy()

    def predict(self, source, sample_rate: Optional[int] = None) -> Dict[str, object]:
        """{"label": the most probable class, "probs": {class: probability}} for an audio file path, a
        waveform (1-D or channels x samples, any rate, with `sample_rate`) or, for an npy run, a features
        file or array. DataError naming the file (or "waveform") when it cannot be used, a clip shorter than
        the run's --min-duration included (the run never trained on such clips)."""
        from emodarts.features.clip import clip_features

        probs = self.probabilities(clip_features(source, self.feature_config, sample_rate, self.extractor))[0]
        return {"label": self.classes[int(np.argmax(probs))], "probs": dict(zip(self.classes, map(float, probs)))}

    def predict_files(self, paths: Sequence[Path]) -> List[dict]:
        """One record per file: {file, label, probs}, or {file, error} for one that cannot be used."""
        out = []
        for path in paths:
            try:
                out.append({"file": str(path), **self.predict(str(path))})
            except DataError as exc:
                out.append({"file": str(path), "error": str(exc)})
        return out


__all__ = ["Predictor", "run_folder_config"]
