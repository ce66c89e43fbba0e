"""--alpha-split and --aux-weight on the command line: recorded in config.json, defaults per preset, bad
values and combinations refused before a run folder or any data, refused with --resume."""
import json

import pytest
from helpers import invoke_cli, one_error_line

from emodarts.engine.config import PRESETS


def _no_data(monkeypatch):
    import emodarts.engine.pipeline

    monkeypatch.setattr(emodarts.engine.pipeline, "prepare_data", lambda *a, **k: pytest.fail("data were loaded"))


@pytest.fixture
def recorded(monkeypatch):
    """Commands stop at their first phase (after writing a checkpoint, so the folder stays): the
    configuration each phase got is kept."""
    import emodarts.engine.cv
    import emodarts.engine.pipeline
    import emodarts.engine.search
    import emodarts.engine.training

    seen = {}

    def stop(name):
        def fake(cfg, *a, **k):
            seen[name] = cfg
            run_dir = a[1] if name != "cv" else a[0]
            (run_dir / "checkpoint.pt").write_bytes(b"")
            raise KeyboardInterrupt
        return fake

    monkeypatch.setattr(emodarts.engine.pipeline, "prepare_data", lambda *a, **k: None)
    monkeypatch.setattr(emodarts.engine.search, "run_search", stop("search"))
    monkeypatch.setattr(emodarts.engine.training, "run_train", lambda cfg, g, data, run_dir, **k: stop("train")(cfg, data, run_dir))
    monkeypatch.setattr(emodarts.engine.cv, "run_cv", stop("cv"))
    return seen


def _config(out):
    return json.loads((out / "config.json").read_text())


def test_alpha_split_and_aux_weight_are_recorded(tmp_path, recorded):
    out = tmp_path / "s"
    assert invoke_cli("search", "--alpha-split", "0.8", "--out", str(out), "--no-progress").exit_code == 130
    assert _config(out)["search"]["alpha_split"] == 0.8 and recorded["search"].search.alpha_split == 0.8
    out = tmp_path / "r"
    assert invoke_cli("run", "--aux-weight", "0.3", "--out", str(out), "--no-progress").exit_code == 130
    cfg = _config(out)
    assert cfg["train"]["aux_weight"] == 0.3 and cfg["search"]["alpha_split"] == 0.5  # DARTS's split by default
    out = tmp_path / "p"
    assert invoke_cli("run", "--preset", "paper", "--out", str(out), "--no-progress").exit_code == 130
    assert _config(out)["train"]["aux_weight"] == 0.4  # the published final training
    out = tmp_path / "t"
    assert invoke_cli("run", "--out", str(out), "--no-progress").exit_code == 130
    assert _config(out)["train"]["aux_weight"] == 0.0  # tiny: off unless given
    out = tmp_path / "c"
    assert invoke_cli("cv", "--alpha-split", "0.8", "--aux-weight", "0.4", "--out", str(out), "--no-progress").exit_code == 130
    assert recorded["cv"].search.alpha_split == 0.8 and recorded["cv"].train.aux_weight == 0.4


def test_train_takes_aux_weight(tmp_path, recorded):
    from test_cli_checks import _genotype, _write

    g = _write(tmp_path / "g.json", _genotype(cnn_nodes=2, tiny=True))
    out = tmp_path / "t"
    result = invoke_cli("train", "--genotype", str(g), "--aux-weight", "0.4", "--out", str(out), "--no-progress")
    assert result.exit_code == 130, result.output
    assert _config(out)["train"]["aux_weight"] == 0.4 and recorded["train"].train.aux_weight == 0.4


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan"])
def test_bad_alpha_split_is_refused_before_the_run_folder(value, tmp_path, monkeypatch):
    _no_data(monkeypatch)
    for command in ("search", "run", "cv"):
        line = one_error_line(invoke_cli(command, "--alpha-split", value, "--out", str(tmp_path / "r"), "--no-progress"))
        assert "--alpha-split" in line and "between 0 and 1" in line, line
        assert not (tmp_path / "r").exists()


def test_bad_aux_weight_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    _no_data(monkeypatch)
    for command in ("run", "cv"):
        line = one_error_line(invoke_cli(command, "--aux-weight", "-0.4", "--out", str(tmp_path / "r")))
        assert "--aux-weight" in line
        assert not (tmp_path / "r").exists()


def test_combinations_that_would_be_dropped_are_refused(tmp_path, monkeypatch):
    from test_cli_checks import _genotype, _write

    _no_data(monkeypatch)
    result = invoke_cli("search", "--aux-weight", "0.4", "--out", str(tmp_path / "r"))  # no final training
    assert result.exit_code == 2 and "--aux-weight" in result.output
    line = one_error_line(invoke_cli("search", "--train-epochs", "3", "--out", str(tmp_path / "r")))
    assert "--train-epochs" in line
    result = invoke_cli("train", "--alpha-split", "0.8", "--out", str(tmp_path / "r"))  # no search
    assert result.exit_code == 2 and "--alpha-split" in result.output
    g = _write(tmp_path / "g.json", _genotype(cnn_nodes=2, tiny=True))
    line = one_error_line(invoke_cli("cv", "--genotype", str(g), "--alpha-split", "0.8", "--second-order",
                                   "--out", str(tmp_path / "r")))
    assert "--second-order, --alpha-split" in line and "without a search" in line
    assert not (tmp_path / "r").exists()


def test_resume_refuses_aux_weight_and_alpha_split(tmp_path, monkeypatch):
    _no_data(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(PRESETS["tiny"].to_dict()))
    for args in (["run", "--aux-weight", "0.4"], ["search", "--alpha-split", "0.8"], ["cv", "--alpha-split", "0.8"],
                 ["train", "--aux-weight", "0"], ["cv", "--aux-weight", "0.4"]):
        line = one_error_line(invoke_cli(*args, "--resume", str(run)))
        assert f"resume it without {args[1]}" in line, line
    assert json.loads((run / "config.json").read_text()) == json.loads(json.dumps(PRESETS["tiny"].to_dict()))


def test_partial_channels_on_the_command_line(tmp_path, recorded, monkeypatch):
    """--partial-channels K reaches search, run and cv and config.json; a K that does not divide --channels,
    K < 1, train, cv --genotype and --resume are refused before a run folder or any data."""
    from test_cli_checks import _genotype, _write

    for command, phase in (("search", "search"), ("run", "search"), ("cv", "cv")):
        out = tmp_path / command
        recorded.clear()
        assert invoke_cli(command, "--partial-channels", "2", "--out", str(out), "--no-progress").exit_code == 130
        assert recorded[phase].model.partial_channels == 2
        if command != "cv":
            assert _config(out)["model"]["partial_channels"] == 2
    _no_data(monkeypatch)
    line = one_error_line(invoke_cli("search", "--partial-channels", "3", "--out", str(tmp_path / "x")))
    assert "--partial-channels 3 must divide" in line and "--channels 4" in line, line
    line = one_error_line(invoke_cli("run", "--channels", "6", "--partial-channels", "4", "--out", str(tmp_path / "x")))
    assert "--channels 6" in line, line
    assert invoke_cli("search", "--partial-channels", "0", "--out", str(tmp_path / "x")).exit_code == 2
    assert invoke_cli("train", "--partial-channels", "2", "--out", str(tmp_path / "x")).exit_code == 2
    g = _write(tmp_path / "g.json", _genotype(cnn_nodes=2, tiny=True))
    line = one_error_line(invoke_cli("cv", "--genotype", str(g), "--partial-channels", "2", "--out", str(tmp_path / "x")))
    assert "--partial-channels" in line and "without a search" in line, line
    run = tmp_path / "resumed"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(PRESETS["tiny"].to_dict()))
    line = one_error_line(invoke_cli("search", "--partial-channels", "2", "--resume", str(run)))
    assert "resume it without --partial-channels" in line, line
    assert not (tmp_path / "x").exists()
