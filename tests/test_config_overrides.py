"""--config FILE and --set KEY=VALUE (search, train, run, cv) and `emodarts config`: precedence preset < FILE <
options given < --set; every field reachable; an unknown key, a wrong type or an out-of-range value is one
error line naming the key (and the file or the --set item) and what it accepts, before a run folder exists;
a run made with --config equals, bit for bit, the run made with the same values as options."""
import json

import pytest
import yaml
from helpers import invoke_cli, one_error_line

from emodarts.engine.config import PRESETS, config_from_dict


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("emodarts_home")
    mp.setenv("EMODARTS_HOME", str(path))
    yield path
    mp.undo()


def resolved(*args):
    result = invoke_cli("config", *args)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_config_prints_the_preset_as_config_json_holds_it():
    assert resolved() == json.loads(json.dumps(PRESETS["tiny"].to_dict()))
    assert resolved("--preset", "paper") == json.loads(json.dumps(PRESETS["paper"].to_dict()))


def test_precedence_preset_file_options_set(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("preset: paper\nseed: 7\nsearch:\n  w_lr: 0.1\n  alpha_lr: 1e-3\nmodel: {dropout: 0.25}\n")
    d = resolved("--config", str(f))
    assert d["preset"] == "paper" and d["model"]["cnn_channels"] == PRESETS["paper"].model.cnn_channels
    assert d["seed"] == 7 and d["search"]["w_lr"] == 0.1 and d["search"]["alpha_lr"] == 0.001
    assert d["model"]["dropout"] == 0.25
    d = resolved("--config", str(f), "--set", "search.w_lr=0.2", "--set", "train.drop_path=0.05",
                 "--set", "search.alpha_betas=[0.9, 0.99]", "--set", "model.seq_primitives=[none, lstm_1]")
    assert d["search"]["w_lr"] == 0.2 and d["train"]["drop_path"] == 0.05
    assert d["search"]["alpha_betas"] == [0.9, 0.99] and d["model"]["seq_primitives"] == ["none", "lstm_1"]
    assert resolved("--config", str(f), "--preset", "tiny")["model"]["cnn_channels"] == 4  # an explicit preset


def test_a_runs_config_json_is_a_config_file(tmp_path, home):
    """`--config old/config.json --seed 7` repeats a run with another seed: the file's values stand where no
    option is typed (options left at their defaults do not override it), the typed one wins."""
    old = tmp_path / "old.json"
    cfg = PRESETS["tiny"].to_dict()
    cfg["search"]["w_lr"], cfg["seed"], cfg["search"]["epochs"] = 0.07, 3, 2
    old.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    result = invoke_cli("search", "--config", str(old), "--seed", "7", "--epochs", "1", "--out", str(out),
                        "--no-progress")
    assert result.exit_code == 0, result.output
    got = json.loads((out / "config.json").read_text())
    assert got["seed"] == 7 and got["search"]["w_lr"] == 0.07 and got["search"]["epochs"] == 1
    assert config_from_dict(got) == config_from_dict({**cfg, "seed": 7, "search": {**cfg["search"], "epochs": 1}})


@pytest.mark.parametrize("args, expected", [
    (["--set", "search.alpha_lrr=1e-3"], "--set search.alpha_lrr=1e-3: unknown field 'search.alpha_lrr' ('search' "
                                         "accepts: alpha_betas, alpha_lr"),
    (["--set", "search.w_lr=fast"], "--set search.w_lr=fast: field 'search.w_lr' is 'fast'; expected float"),
    (["--set", "search.epochs=2.5"], "field 'search.epochs' is 2.5; expected int"),
    (["--set", "train.drop_path=1.5"], "--set train.drop_path=1.5: field 'train.drop_path' is 1.5; expected a "
                                       "number in [0, 1)"),
    (["--set", "search.w_lr=-0.1"], "field 'search.w_lr' is -0.1; expected a number > 0"),
    (["--set", "model.cnn_primitives=[sep_conv_9x9]"], "field 'model.cnn_primitives' is ['sep_conv_9x9']; "
                                                        "expected a non-empty list of"),
    (["--set", "seed"], "--set seed: expected KEY=VALUE"),
    (["--set", "model=3"], "field 'model' must be an object"),
])
def test_bad_values_are_one_line_before_any_run_folder(tmp_path, args, expected):
    out = tmp_path / "run"
    line = one_error_line(invoke_cli("search", *args, "--out", str(out), "--no-progress"))
    assert expected in line and not out.exists()
    assert expected in one_error_line(invoke_cli("config", *args))


@pytest.mark.parametrize("text, expected", [
    ("search: {w_lr: 0.1, momentum: 0.9}\n", "unknown field 'search.momentum' ('search' accepts:"),
    ("model: {dropout: high}\n", "field 'model.dropout' is 'high'; expected float"),
    ("train: {momentum: 1.5}\n", "field 'train.momentum' is 1.5; expected a number in [0, 1)"),
    ("preset: huge\n", "field 'preset' is 'huge'; expected one of paper, tiny"),
    ("- a list\n", "a configuration file holds a mapping of keys"),
    ("search: {w_lr: [\n", "not valid YAML or JSON"),
])
def test_bad_config_files_name_the_file_and_the_key(tmp_path, text, expected):
    f = tmp_path / "exp.yaml"
    f.write_text(text)
    out = tmp_path / "run"
    line = one_error_line(invoke_cli("search", "--config", str(f), "--out", str(out), "--no-progress"))
    assert str(f) in line and expected in line and not out.exists()


def test_resume_refuses_config_and_set(tmp_path):
    line = one_error_line(invoke_cli("search", "--resume", str(tmp_path), "--set", "seed=3"))
    assert "--set" in line and "--resume" in line


def test_a_run_from_a_config_file_equals_the_run_from_options(tmp_path, home):
    """Bit for bit at a fixed seed: the genotype, the alphas of every epoch and the configuration."""
    options = ["--seed", "5", "--epochs", "2", "--batch-size", "16", "--alpha-split", "0.6", "--hidden", "16"]
    f = tmp_path / "same.json"
    f.write_text(json.dumps({"seed": 5, "search": {"epochs": 2, "batch_size": 16, "alpha_split": 0.6},
                             "train": {"batch_size": 16}, "model": {"hidden": 16}}))
    runs = {}
    for name, args in (("options", options), ("file", ["--config", str(f)])):
        runs[name] = tmp_path / name
        result = invoke_cli("search", *args, "--out", str(runs[name]), "--no-progress")
        assert result.exit_code == 0, result.output
    for name in ("config.json", "genotype.json", "alphas.jsonl"):
        assert (runs["file"] / name).read_bytes() == (runs["options"] / name).read_bytes(), name
