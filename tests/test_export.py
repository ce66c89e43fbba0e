"""`emodarts export`: TorchScript and ONNX models that give `emodarts predict`'s probabilities (TorchScript within
1e-6, ONNX through onnxruntime), the weights as safetensors without the auxiliary head, and a model card whose
feature recipe, run as printed, computes the features the run used."""
import json
import re

import numpy as np
import pytest
import torch
from helpers import invoke_cli, one_error_line
from test_labels import make_corpus

CLASSES = ("angry", "happy", "neutral", "sad")


def ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on a small csv corpus, with an auxiliary head (which the export leaves out)."""
    root = tmp_path_factory.mktemp("export")
    manifest = make_corpus(root / "c", CLASSES)
    run = root / "run"
    ok(invoke_cli("run", "--corpus", "csv", "--root", str(manifest), "--preset", "tiny", "--epochs", "1",
                  "--train-epochs", "1", "--aux-weight", "0.4", "--no-progress", "--out", str(run)))
    clips = sorted((root / "c" / "wav").rglob("*.wav"))[:3]
    return run, clips


def _predicted(run, clips):
    records = json.loads(ok(invoke_cli("predict", str(run), *map(str, clips), "--json")).output)
    return np.array([[r["probs"][c] for c in CLASSES] for r in records])


def _features(run, clips):
    from emodarts.engine.predictor import Predictor
    from emodarts.features.clip import clip_features

    cfg = Predictor(run).feature_config
    return np.stack([clip_features(str(c), cfg) for c in clips])


def test_export_gives_predicts_probabilities(trained, tmp_path):
    run, clips = trained
    out = tmp_path / "e"
    ok(invoke_cli("export", str(run), "--out", str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "model.onnx", "model.safetensors",
                                                     "model.torchscript.pt"]
    want, x = _predicted(run, clips), _features(run, clips)
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    got = scripted(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-6
    assert np.abs(scripted(torch.from_numpy(x[:1])).numpy() - want[:1]).max() <= 1e-6  # batch 1 too

    from safetensors.torch import load_file, safe_open

    weights = load_file(str(out / "model.safetensors"))
    state = torch.load(run / "model.pt", weights_only=True)["model"]
    assert any(k.startswith("aux_head.") for k in state) and not any(k.startswith("aux_head.") for k in weights)
    assert all(torch.equal(weights[k], state[k]) for k in weights) and len(weights) == len(state) - sum(
        k.startswith("aux_head.") for k in state)
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()["classes"]) == list(CLASSES)

    ort = pytest.importorskip("onnxruntime", reason="ONNX is checked with onnxruntime, not installed here")
    session = ort.InferenceSession(str(out / "model.onnx"))
    probs = session.run(["probs"], {"features": x})[0]
    assert probs.shape == (3, 4) and np.abs(probs - want).max() <= 1e-5


def test_the_model_cards_recipe_computes_the_runs_features(trained, tmp_path):
    pytest.importorskip("librosa", reason="the card's feature recipe is librosa code")
    run, clips = trained
    out = tmp_path / "e"
    ok(invoke_cli("export", str(run), "--out", str(out), "--format", "torchscript"))
    assert not (out / "model.onnx").exists() and (out / "model.torchscript.pt").is_file()
    card = (out / "MODEL_CARD.md").read_text()
    for needed in ("0 `angry`, 1 `happy`, 2 `neutral`, 3 `sad`", "sample rate 16000 Hz", "UA ", "```mermaid",
                   "final training: 1 epoch(s)", "auxiliary weight 0.4", "corpus `csv`"):
        assert needed in card, needed
    recipe = re.search(r"## Features to compute.*?```python\n(.*?)```", card, re.S).group(1)
    scope = {"path": str(clips[0])}
    exec(recipe, scope)
    assert np.array_equal(scope["features"], _features(run, clips[:1])[0])


def test_a_cv_run_exports_its_folds_and_errors_are_named(tmp_path):
    manifest = make_corpus(tmp_path / "c", CLASSES)
    cv = tmp_path / "cv"
    ok(invoke_cli("cv", "--corpus", "csv", "--root", str(manifest), "--preset", "tiny", "--epochs", "1",
                  "--train-epochs", "1", "--folds", "1", "--no-progress", "--out", str(cv)))
    whole, fold = (cv / "run.log").read_text(), (cv / "fold_1" / "run.log").read_text()  # one log per fold
    assert "train epoch 1/1" in fold and "fold 1 (" in fold and "Cross-validation" not in fold
    assert "train epoch 1/1" in whole and "Cross-validation" in whole
    result = ok(invoke_cli("export", str(cv), "--format", "torchscript"))
    assert (cv / "export" / "fold_1" / "model.torchscript.pt").is_file() and "fold_1" in result.output
    assert "fold 0 of" in one_error_line(invoke_cli("export", str(cv), "--folds", "0"))
    assert "no trained network to export" in one_error_line(invoke_cli("export", str(tmp_path / "c")))
    assert "is not a cv run" in one_error_line(invoke_cli("export", str(cv / "fold_1"), "--folds", "1"))


def test_without_the_onnx_package(trained, tmp_path, monkeypatch):
    """`--format all` writes the rest and says why there is no model.onnx; `--format onnx` is an error."""
    import emodarts.engine.export as export_mod

    monkeypatch.setattr(export_mod, "onnx_available", lambda: False)
    run, _ = trained
    result = ok(invoke_cli("export", str(run), "--out", str(tmp_path / "e")))
    assert "model.onnx: not written (the onnx package is not installed" in result.output
    assert not (tmp_path / "e" / "model.onnx").exists() and (tmp_path / "e" / "model.torchscript.pt").is_file()
    assert "needs the onnx package" in one_error_line(invoke_cli("export", str(run), "--format", "onnx"))
