"""`emodarts export`: a run's selected final network, for use without emodarts.

OUT holds `model.torchscript.pt` (traced; dynamic batch), `model.onnx` (opset 17, dynamic batch),
`model.safetensors` (the weights, with the classes, genotype and configuration as metadata) and
`MODEL_CARD.md`. Both models take features (N, F, T) float32, normalise them as the run did and give class
probabilities (N, classes); each is checked against the network it came from before it is written.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from torch import nn

from emodarts.engine.predictor import Predictor
from emodarts.runtime.errors import EmodartsError
from emodarts.runtime.files import atomic_write_text

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
OPSET = 17
TRACE_TOLERANCE = 1e-6  # largest probability difference a traced model may show against the network


class Probabilities(nn.Module):
    """features (N, F, T) -> class probabilities (N, classes): the network (its normalisation inside), then
    a softmax; what `emodarts predict` computes."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(features.unsqueeze(1)).float(), dim=-1)


def onnx_available() -> bool:
    """torch's ONNX exporter needs the onnx package (pip install 'emodarts[export]')."""
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


def export_run(run_dir: Path, out: Path, formats: Sequence[str] = FORMATS) -> Dict[str, int]:
    """Write the exports of RUN_DIR (a run's or a cv fold's folder) into `out`; returns {file: bytes}. The
    folder is filled in a temporary one beside it and moved in place, so a failed export leaves none."""
    from emodarts.engine.model_card import model_card

    predictor = Predictor(run_dir)
    model = Probabilities(predictor.network).eval().requires_grad_(False)  # users get plain tensors back
    rows, frames = predictor.feature_config.shape
    example = torch.randn(2, rows, frames, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if "torchscript" in formats:
            _torchscript(model, example, work / FILES["torchscript"])
        if "onnx" in formats:
            _onnx(model, example, work / FILES["onnx"])
        _safetensors(predictor, work / "model.safetensors")
        files = {p.name: p.stat().st_size for p in sorted(work.iterdir())}
        metrics_path = Path(run_dir) / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        atomic_write_text(work / "MODEL_CARD.md", model_card(Path(run_dir), predictor.config, predictor.genotype,
                                                             predictor.classes, predictor.feature_config, metrics,
                                                             files))
        files["MODEL_CARD.md"] = (work / "MODEL_CARD.md").stat().st_size
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return files


def _torchscript(model: Probabilities, example: torch.Tensor, path: Path) -> None:
    import warnings

    with torch.no_grad():
        with warnings.catch_warnings():  # the tracer's notes on shape checks (F and T are fixed; N is checked)
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
        for n in (1, 3):  # another batch size than the traced one: the batch axis stayed free
            x = torch.randn(n, *example.shape[1:], generator=torch.Generator().manual_seed(n))
            diff = float((traced(x) - model(x)).abs().max())
            if diff > TRACE_TOLERANCE:
                raise EmodartsError(f"the traced model differs from the network by {diff:.2e} at batch {n}; not "
                                    "exported")
    traced.save(str(path))


def _onnx(model: Probabilities, example: torch.Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on traced shape checks and deprecations
        torch.onnx.export(model, (example,), str(path), input_names=["features"], output_names=["probs"],
                          dynamic_axes={"features": {0: "batch"}, "probs": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)


def _safetensors(predictor: Predictor, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in predictor.network.state_dict().items() if not k.startswith("aux_head.")}
    meta = {"classes": json.dumps(predictor.classes), "config": json.dumps(predictor.config.to_dict()),
            "genotype": json.dumps(predictor.genotype.to_dict()), "format": "emodarts-derived-network/1"}
    save_file(state, str(path), metadata=meta)


def export_targets(run_dir: Path, folds: str = "") -> List[Path]:
    """The run folders to export: RUN_DIR, or every finished fold of a cv run (those named by `folds`)."""
    from emodarts.engine.cv import CV_STATE, parse_folds

    run_dir = Path(run_dir)
    if not (run_dir / CV_STATE).is_file():
        if folds:
            raise EmodartsError(f"--folds: {run_dir} is not a cv run")
        if not (run_dir / "model.pt").is_file():
            raise EmodartsError(f"{run_dir}: no trained network to export (model.pt is missing; train first)")
        return [run_dir]
    done = sorted(int(p.name.split("_")[1]) for p in run_dir.glob("fold_*") if (p / "model.pt").is_file())
    if not done:
        raise EmodartsError(f"{run_dir}: no fold of this cv run has a trained network yet")
    chosen = parse_folds(folds, max(done) + 1) if folds else done
    missing = [k for k in chosen if k not in done]
    if missing:
        raise EmodartsError(f"--folds: fold {missing[0]} of {run_dir} has no trained network")
    return [run_dir / f"fold_{k}" for k in chosen]


__all__ = ["FORMATS", "Probabilities", "export_run", "export_targets", "onnx_available"]
