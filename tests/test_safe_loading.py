"""model.pt and checkpoints are read with torch.load(weights_only=True): a run's files hold only tensors and
plain containers (numpy's generator state included), runs of older versions (numpy's state as an array) still
resume and load, and a file that would run code when unpickled is refused without running it."""
import pickle

import numpy as np
import pytest
import torch
from helpers import invoke_cli, one_error_line

from emodarts.engine.checkpoint import read_state, rng_state, set_rng_state
from emodarts.runtime.errors import CheckpointError

SEARCH = ("search", "--preset", "tiny", "--no-progress", "--set", "search.batch_size=64")


def test_a_runs_files_need_no_unsafe_global(tmp_path):
    run = tmp_path / "r"
    assert invoke_cli("run", "--preset", "tiny", "--epochs", "1", "--train-epochs", "1", "--no-progress",
                      "--out", str(run)).exit_code == 0
    for name in ("model.pt", "checkpoint.pt", "train_checkpoint.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(run / name)) == [], name


def test_the_numpy_state_round_trips():
    np.random.seed(5)
    state = rng_state()
    a = np.random.standard_normal(3)
    set_rng_state(state)
    assert np.array_equal(np.random.standard_normal(3), a)
    np.random.seed(5)
    old = {**state, "numpy": np.random.get_state()}  # an older checkpoint's form: a tuple with an array
    np.random.seed(9)
    set_rng_state(old)
    assert np.array_equal(np.random.standard_normal(3), a)


def test_an_older_runs_checkpoint_resumes(tmp_path):
    """A search checkpoint written as earlier versions did (numpy's state as an array) resumes safely."""
    run = tmp_path / "r"
    assert invoke_cli(*SEARCH, "--epochs", "1", "--out", str(run)).exit_code == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    np.random.seed(1)
    state["rng"]["numpy"] = np.random.get_state()
    torch.save(state, run / "checkpoint.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(run / "checkpoint.pt"))  # the old form
    result = invoke_cli("search", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert result.exit_code == 0, result.output


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/emodarts-unsafe-load-ran", "w"))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    import os

    marker = "/tmp/emodarts-unsafe-load-ran"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="not loaded"):
        read_state(path)
    assert not os.path.exists(marker)
    run = tmp_path / "r"
    assert invoke_cli(*SEARCH, "--epochs", "1", "--out", str(run)).exit_code == 0
    torch.save({"config": {}, "payload": _Payload()}, run / "checkpoint.pt")
    line = one_error_line(invoke_cli("search", "--resume", str(run), "--epochs", "2"))
    assert "checkpoint.pt: not a readable emodarts checkpoint" in line and not os.path.exists(marker)
    (run / "checkpoint.pt").write_bytes(pickle.dumps("not a zip"))
    assert "not a readable emodarts checkpoint" in one_error_line(invoke_cli("search", "--resume", str(run)))
