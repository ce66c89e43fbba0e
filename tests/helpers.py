"""Small shared builders for the model tests: a miniature configuration and random data, and a fresh
Python process for settings read once per process."""
import contextlib
import os
import subprocess
import sys

import torch

from emodarts.engine.config import RunConfig, SearchConfig, TrainConfig
from emodarts.engine.run_data import RunData, TensorSplit
from emodarts.model.config import ModelConfig

SMALL_SEQ = ("none", "skip_connect", "lstm_1", "rnn_2", "lstm_att_1", "rnn_att_1")


def small_model_config(**changes) -> ModelConfig:
    base = dict(cnn_layers=3, cnn_channels=2, cnn_nodes=2, stem_multiplier=2, seq_cells=1, seq_nodes=2,
                hidden=8, seq_primitives=SMALL_SEQ, dropout=0.1)
    base.update(changes)
    return ModelConfig(**base)


def small_run_config(epochs: int = 2, second_order: bool = False, **model_changes) -> RunConfig:
    return RunConfig(
        corpus="random", preset="custom", seed=3, model=small_model_config(**model_changes),
        search=SearchConfig(epochs=epochs, batch_size=8, second_order=second_order),
        train=TrainConfig(epochs=epochs, batch_size=8),
    )


def random_split(n: int, n_features: int = 10, n_frames: int = 13, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, n_features, n_frames, generator=g) + 0.5 * y[:, None, None, None]
    return TensorSplit(x, y)


def random_run_data(n: int = 16) -> RunData:
    return RunData(["angry", "happy", "neutral", "sad"], random_split(n, seed=1), random_split(n, seed=2),
                   random_split(n, seed=3), random_split(n // 2, seed=4), random_split(n // 2, seed=5))


def run_in_fresh_process(code: str, **env: str) -> str:
    """Run `code` in a new interpreter with extra environment variables (e.g. a switch the extension reads
    once, at load time); fail the test with its stderr when it fails. Returns its stdout."""
    full_env = dict(os.environ, **env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def invoke_cli(*args: str):
    """The `emodarts` command run in this process (click's CliRunner)."""
    from click.testing import CliRunner

    from emodarts.cli.commands import cli

    return CliRunner().invoke(cli, [*args])


def one_error_line(result) -> str:
    """The command failed with exit 2 and exactly one `error: ` line (no traceback); return that line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@contextlib.contextmanager
def sync_debug(mode: str):
    """torch.cuda.set_sync_debug_mode for a block (process-wide: always reset)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


GPU_MACHINE_MISSING = ("soundfile", "librosa", "cffi", "matplotlib")  # what the GPU machine lacks (docs/toolchain.md)


def env_without(modules, folder) -> dict:
    """An environment whose Python processes (children included) cannot import `modules`: a sitecustomize.py
    in `folder`, first on PYTHONPATH, sets them to None in sys.modules (import raises ImportError and
    importlib.util.find_spec answers None, as for a package that is not installed)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as fh:
        fh.write("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), os.getcwd()] + [p for p in [env.get("PYTHONPATH")] if p])
    return env
