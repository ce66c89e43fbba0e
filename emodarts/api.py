"""The Python API: the CLI's runs, called from Python, writing the same run folders (so `emodarts report`,
`predict`, `evaluate` and `--resume` work on them as on the CLI's).

    import emodarts

    cfg = emodarts.Config.from_preset("tiny").with_overrides({"search.epochs": 2, "train.epochs": 2})
    run = emodarts.search(cfg, out="runs/api")   # RUN_DIR holding genotype.json
    emodarts.train(run)                          # trains the found genotype in RUN_DIR (as `emodarts run`)
    print(emodarts.evaluate(run)["ua"])          # UA, WA, macro-F1, confusion on the test speakers
    model = emodarts.load(run)
    print(model.predict("clip.wav"))             # {"label": ..., "probs": {class: probability}}

`Config` is the run configuration (config.json's fields): `Config.from_preset`, `Config.from_file` (YAML or
JSON, as --config) and `.with_overrides` (dotted keys, as --set).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from emodarts.engine.config import RunConfig, load_config
from emodarts.engine.predictor import Predictor
from emodarts.model.space import Genotype
from emodarts.runtime.errors import EmodartsError
from emodarts.runtime.progress import run_log

Config = RunConfig
RunDir = Union[str, Path]


def search(config: RunConfig, out: Optional[RunDir] = None, progress: bool = False, tensorboard: bool = True) -> Path:
    """Search a genotype under `config` in a new run folder (`out`, default runs/search-<time>); returns it.
    As `emodarts search`: config.json, the search's logs, run.log, tensorboard/ and checkpoints, genotype.json
    and report/."""
    from emodarts.cli.runs import run_folder
    from emodarts.engine.pipeline import prepare_data
    from emodarts.engine.search import run_search
    from emodarts.report import report_after_run
    from emodarts.runtime.progress import say

    cfg, run_dir = _new_run("search", config, out)
    with run_folder(cfg, run_dir, resuming=False):
        data = prepare_data(cfg, progress, run_dir=run_dir)
        run_search(cfg, data, run_dir, progress=progress, tensorboard=tensorboard)
        say(report_after_run(run_dir))
    return run_dir


def train(source: Union[RunConfig, RunDir], genotype: Union[Genotype, dict, RunDir, None] = None,
          out: Optional[RunDir] = None, progress: bool = False, tensorboard: bool = True) -> Path:
    """Train a genotype's network (the epoch chosen on the dev speakers); returns the run folder.

    `source` a run folder of `search`: its genotype is trained there, under its configuration (as `emodarts
    run` does after its search). `source` a Config: `genotype` (a Genotype, its dict, or a genotype.json) is
    trained in a new folder (`out`), as `emodarts train --genotype`."""
    from emodarts.cli.runs import RUN_LOG, run_folder
    from emodarts.engine.pipeline import prepare_data
    from emodarts.engine.training import run_train
    from emodarts.model.space import check_genotype_fits, genotype_from_dict, load_genotype, save_genotype

    if not isinstance(source, RunConfig):
        run_dir = Path(source)
        if genotype is not None or out is not None:
            raise EmodartsError("train(RUN_DIR) trains RUN_DIR's own genotype there; give a Config to train "
                                "another genotype in a new folder")
        cfg = load_config(run_dir / "config.json")
        found = load_genotype(run_dir / "genotype.json")
        with run_log(run_dir / RUN_LOG):
            data = prepare_data(cfg, progress, run_dir=run_dir, resuming=True)
            run_train(cfg, found, data, run_dir, progress=progress, tensorboard=tensorboard)
        return run_dir
    if genotype is None:
        raise EmodartsError("train(config, genotype): give the genotype to train (a Genotype, its dict or a "
                            "genotype.json), or train(RUN_DIR) for a search's run folder")
    if not isinstance(genotype, Genotype):
        genotype = genotype_from_dict(genotype) if isinstance(genotype, dict) else load_genotype(genotype)
    check_genotype_fits(genotype, source.model)
    cfg, run_dir = _new_run("train", source, out)
    with run_folder(cfg, run_dir, resuming=False):
        save_genotype(genotype, run_dir / "genotype.json")
        data = prepare_data(cfg, progress, run_dir=run_dir)
        run_train(cfg, genotype, data, run_dir, progress=progress, tensorboard=tensorboard)
    return run_dir


def evaluate(run: RunDir, device: str = "cpu", progress: bool = False) -> dict:
    """Evaluate the run's trained network on its test speakers, once (writes RUN_DIR/metrics.json): UA, WA,
    macro-F1, per-class recall and the confusion matrix, over the classes its config.json records."""
    from emodarts.cli.runs import with_device
    from emodarts.engine.evaluation import evaluate_run_folder
    from emodarts.engine.predictor import run_folder_config

    return evaluate_run_folder(Path(run), with_device(run_folder_config(Path(run)), device), progress)


def load(run: RunDir, device: str = "cpu") -> Predictor:
    """The run's trained network, with `.predict(path_or_waveform, sample_rate=None)`, `.classes` and
    `.network` (a torch module taking (N, 1, F, T) features)."""
    return Predictor(Path(run), device)


def _new_run(command: str, config: RunConfig, out: Optional[RunDir]):
    """(config on its device, the run folder, not made yet): the checks a new CLI run makes first."""
    from emodarts.cli.options import check_backend, check_corpus_names
    from emodarts.cli.runs import open_run
    from emodarts.engine.overrides import check_values

    if not isinstance(config, RunConfig):
        raise EmodartsError(f"expected an emodarts.Config, got {type(config).__name__} (Config.from_file reads one)")
    check_values(config, {})
    check_corpus_names(config.corpus, config.protocol or None)
    cfg, run_dir, _ = open_run(command, config, Path(out) if out else None, None, config.device, False, create=False)
    check_backend(cfg)
    return cfg, run_dir


__all__ = ["Config", "search", "train", "evaluate", "load"]
