"""The Python API (emodarts/api.py): README's example runs as printed; Config.from_file / with_overrides equal
what `emodarts config` resolves; load(...).predict gives `emodarts predict`'s probabilities for a file and the
same for its samples; train(config, genotype) makes a new run; misuse is a clear error."""
import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import invoke_cli

import emodarts
from emodarts.engine.config import config_from_dict
from emodarts.runtime.errors import DataError, EmodartsError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """README's example, run as printed in a fresh folder: (its run folder, what it printed)."""
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    cwd = tmp_path_factory.mktemp("api")
    old = os.getcwd()
    out = io.StringIO()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(old)
    return cwd / "runs" / "api-demo", out.getvalue()


def test_the_readme_example_runs(api_run):
    run, printed = api_run
    for name in ("config.json", "genotype.json", "model.pt", "metrics.json", "report/README.md"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    lines = printed.strip().splitlines()
    assert float(lines[-2]) == pytest.approx(metrics["ua"])
    assert "'label': " in lines[-1] and all(f"'{c}': " in lines[-1] for c in metrics["classes"])
    cfg = emodarts.Config.from_file(run / "config.json")
    assert (cfg.search.epochs, cfg.train.epochs, cfg.preset) == (1, 1, "tiny")


def test_load_predicts_as_the_cli_does(api_run, tmp_path):
    from emodarts.data.wav import write_wav

    run, _ = api_run
    model = emodarts.load(run)
    rng = np.random.default_rng(3)
    clip = tmp_path / "clip.wav"
    samples = (0.3 * np.sin(2 * np.pi * 180 * np.arange(24000) / 16000) + 0.05 * rng.standard_normal(24000))
    write_wav(clip, samples.astype(np.float32), 16000)
    cli = json.loads(invoke_cli("predict", str(run), str(clip), "--json").output)[0]
    got = model.predict(str(clip))
    assert got["label"] == cli["label"] and list(got["probs"]) == model.classes
    assert max(abs(got["probs"][c] - cli["probs"][c]) for c in model.classes) <= 1e-6
    from emodarts.features.audio import read_audio

    y, sr, _ = read_audio(clip)  # the file's own samples as a waveform, and as channels x samples
    assert model.predict(y, sample_rate=sr) == got
    assert model.predict(np.stack([y, y]), sample_rate=sr)["probs"] == pytest.approx(got["probs"], abs=1e-6)


def test_waveform_errors(api_run):
    model = emodarts.load(api_run[0])
    with pytest.raises(DataError, match="needs its sample_rate"):
        model.predict(np.zeros(16000, dtype=np.float32))
    with pytest.raises(DataError, match="audio too short .* waveform"):
        model.predict(np.zeros(100, dtype=np.float32), sample_rate=16000)
    with pytest.raises(DataError, match="NaN or infinite"):
        model.predict(np.full(16000, np.nan), sample_rate=16000)
    with pytest.raises(DataError, match="audio file not found: .*nothing.wav"):
        model.predict("nothing.wav")


def test_config_from_file_and_with_overrides_match_the_cli(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("preset: tiny\nsearch:\n  alpha_lr: 6.0e-4\nmodel:\n  dropout: 0.2\nlabels: [sad, happy]\n")
    cfg = emodarts.Config.from_file(path)
    cli = yaml.safe_load(invoke_cli("config", "--config", str(path)).output)
    assert cfg == config_from_dict(cli) and cfg.labels == ("sad", "happy")
    over = emodarts.Config.from_preset("tiny").with_overrides(
        {"search.alpha_lr": 6e-4, "model": {"dropout": 0.2}}, labels=["sad", "happy"])
    assert over == cfg
    with pytest.raises(EmodartsError, match="with_overrides: unknown field 'search.alpha_rate'"):
        cfg.with_overrides({"search.alpha_rate": 1.0})
    with pytest.raises(EmodartsError, match="with_overrides: field 'model.dropout' is 1.5; expected a number in"):
        cfg.with_overrides({"model.dropout": 1.5})
    with pytest.raises(EmodartsError, match="unknown preset 'huge'"):
        emodarts.Config.from_preset("huge")


def test_train_a_given_genotype_in_a_new_folder(api_run, tmp_path):
    run, _ = api_run
    genotype = json.loads((run / "genotype.json").read_text())
    cfg = emodarts.Config.from_file(run / "config.json").with_overrides(seed=1)
    out = emodarts.train(cfg, genotype, out=tmp_path / "t")
    assert json.loads((out / "genotype.json").read_text()) == genotype and (out / "model.pt").is_file()
    assert emodarts.evaluate(out)["classes"] == ["angry", "happy", "neutral", "sad"]
    with pytest.raises(EmodartsError, match="give the genotype to train"):
        emodarts.train(cfg)
    with pytest.raises(EmodartsError, match="trains RUN_DIR's own genotype there"):
        emodarts.train(run, genotype)
    with pytest.raises(EmodartsError, match="expected an emodarts.Config, got dict"):
        emodarts.search({"seed": 1})
    with pytest.raises(EmodartsError, match="already holds a run"):
        emodarts.train(cfg, genotype, out=out)
