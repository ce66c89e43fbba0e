"""The `emodarts` command: search, train, evaluate, run (search -> train -> evaluate).

The options and checks the commands share are in options.py, the run folders and the shared start in runs.py;
the corpus commands (`features`, `cv`) in corpus.py join the group at the end of this file."""
import sys
import time
from pathlib import Path
from typing import Any, Optional, Tuple

import click

from emodarts.cli import corpus as cli_corpus
from emodarts.cli.genotype_input import fit_genotype, genotype_shape, read_genotype
from emodarts.cli.options import (
    CONFIG_FILE,
    SET_VALUES,
    THREADS,
    apply_threads,
    aux_option,
    build_config,
    check_backend,
    common_options,
    friendly_errors,
    model_options,
    parsed_options,
    precision_options,
    refuse_given,
    resume_changes,
    shape_options,
)
from emodarts.cli.runs import run_folder, start_run, with_device
from emodarts.engine.config import PRESETS, RunConfig
from emodarts.model.space import SEQ_SPACES
from emodarts.runtime.distributed import info
from emodarts.runtime.errors import EmodartsError
from emodarts.runtime.files import atomic_write_json
from emodarts.runtime.progress import say


@click.group()
@click.version_option(package_name="emodarts")
def cli() -> None:
    """emoDARTS: joint CNN + sequential differentiable architecture search for speech emotion recognition."""


@cli.command()
@common_options
@model_options
@precision_options
@friendly_errors
def search(out: Optional[Path], resume: Optional[Path], epochs: Optional[int],
           device: str, fused: bool, progress: bool, threads: Optional[int], amp: Optional[str], channels_last: bool,
           tensorboard: bool, **_: Any) -> None:
    """Search a genotype (bilevel DARTS) and write RUN_DIR/genotype.json."""
    from emodarts.engine.pipeline import prepare_data
    from emodarts.engine.search import run_search

    cfg, run_dir, resuming = start_run(
        "search", lambda: build_config("search", parsed_options()), out, resume, device, fused,
        threads, resume_changes({"search": epochs}, amp, channels_last),
        refuse=lambda: refuse_given(["train_epochs"], "`search` has no final training (give it to `run` or `cv`)"))
    with run_folder(cfg, run_dir, resuming):
        data = prepare_data(cfg, progress, run_dir=run_dir, resuming=resuming)
        genotype = run_search(cfg, data, run_dir, resume=resuming, progress=progress, tensorboard=tensorboard)
        say(f"genotype: {run_dir / 'genotype.json'}  (best epoch {genotype.meta.get('epoch')})")
        _write_report(run_dir)


@cli.command()
@common_options
@click.option("--genotype", "genotype_path", type=click.Path(path_type=Path), default=None,
              help="Genotype JSON to train (required unless --resume, which trains RUN_DIR/genotype.json).")
@shape_options
@aux_option
@precision_options
@friendly_errors
def train(out: Optional[Path], resume: Optional[Path], epochs: Optional[int],
          device: str, fused: bool, progress: bool, threads: Optional[int], genotype_path: Optional[Path],
          amp: Optional[str], channels_last: bool, seq_candidates: Optional[str], tensorboard: bool,
          **_: Any) -> None:
    """Train the network of a genotype from scratch; the epoch is chosen on the dev speakers.

    The CNN and sequential node counts and the sequential space come from the genotype (a genotype of
    `search --cnn-nodes 3` trains as it is); --cnn-nodes, --seq-nodes and --seq-space, when given, must agree
    with it. Cell counts and widths (--cnn-layers, --channels, --seq-cells, --hidden) are the preset's unless
    given."""
    from emodarts.engine.pipeline import prepare_data
    from emodarts.engine.training import run_train
    from emodarts.model.space import check_genotype_fits, save_genotype

    def need_genotype() -> None:
        if resume is None and genotype_path is None:
            raise EmodartsError("give --genotype FILE (a genotype.json written by `emodarts search`), or "
                                "--resume RUN_DIR")

    def build() -> RunConfig:
        nonlocal genotype
        genotype = read_genotype(genotype_path)
        return fit_genotype(build_config("train", genotype_shape(genotype, parsed_options())), genotype, genotype_path,
                            seq_candidates)

    genotype = None
    cfg, run_dir, resuming = start_run("train", build, out, resume, device, fused, threads,
                                       resume_changes({"train": epochs}, amp, channels_last), refuse=need_genotype)
    if resuming:
        genotype_path = run_dir / "genotype.json"
        genotype = read_genotype(genotype_path)
        check_genotype_fits(genotype, cfg.model, where=str(genotype_path))
    with run_folder(cfg, run_dir, resuming):
        if not resuming and info().is_main:
            save_genotype(genotype, run_dir / "genotype.json")
        data = prepare_data(cfg, progress, run_dir=run_dir, resuming=resuming)
        best = run_train(cfg, genotype, data, run_dir, resume=resuming, progress=progress, tensorboard=tensorboard)
        say(f"best dev UA {best['ua']:.4f} at epoch {best['epoch'] + 1}; model: {run_dir / 'model.pt'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@friendly_errors
def evaluate(run_dir: Path, device: str, progress: bool) -> None:
    """Evaluate RUN_DIR's trained network on the test speakers (once); writes RUN_DIR/metrics.json."""
    from emodarts.engine.evaluation import evaluate_run_folder
    from emodarts.engine.predictor import run_folder_config

    cfg = with_device(run_folder_config(run_dir), device)  # a cv fold folder of an older version too
    _print_metrics(evaluate_run_folder(run_dir, cfg, progress), run_dir)


def _write_report(run_dir: Path) -> None:
    from emodarts.report import report_after_run
    from emodarts.runtime.distributed import info

    if not info().is_main:
        return
    say(report_after_run(run_dir))


def _print_metrics(metrics: dict, run_dir: Path) -> None:
    classes = metrics["classes"]
    say("confusion (rows: true, columns: predicted): " + ", ".join(classes))
    for name, row in zip(classes, metrics["confusion"]):
        say(f"  {name:>8s} " + " ".join(f"{v:5d}" for v in row))
    say(f"test UA {metrics['ua']:.4f}  WA {metrics['wa']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
               f"({metrics['n']} utterances; {run_dir / 'metrics.json'})")


@cli.command()
@common_options
@model_options
@aux_option
@precision_options
@friendly_errors
def run(out: Optional[Path], resume: Optional[Path], epochs: Optional[int],
        train_epochs: Optional[int], device: str, fused: bool, progress: bool, threads: Optional[int],
        amp: Optional[str], channels_last: bool, tensorboard: bool, **_: Any) -> None:
    """Search, then train the found genotype, then evaluate it on the test speakers."""
    from emodarts.engine.evaluation import run_evaluate
    from emodarts.engine.pipeline import prepare_data
    from emodarts.engine.search import run_search
    from emodarts.engine.training import run_train
    from emodarts.model.space import save_genotype

    cfg, run_dir, resuming = start_run("run", lambda: build_config("run", parsed_options()), out,
                                       resume, device, fused, threads,
                                       resume_changes({"search": epochs, "train": train_epochs}, amp, channels_last))
    t0 = time.time()
    with run_folder(cfg, run_dir, resuming):
        data = prepare_data(cfg, progress, run_dir=run_dir, resuming=resuming)
        genotype = run_search(cfg, data, run_dir, resume=resuming, progress=progress, tensorboard=tensorboard)
        if info().is_main:
            save_genotype(genotype, run_dir / "genotype.json")
        run_train(cfg, genotype, data, run_dir, resume=resuming, progress=progress, tensorboard=tensorboard)
        metrics = run_evaluate(cfg, data, run_dir)
        _print_metrics(metrics, run_dir)
        _write_report(run_dir)
        say(f"UA {metrics['ua']:.4f}  WA {metrics['wa']:.4f}  ({time.time() - t0:.0f} s)")


@cli.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--steps", type=int, default=3, show_default=True, help="Search steps to compare.")
@click.option("--second-order", is_flag=True, help="Compare unrolled second-order steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=None)
@click.option("--seq-space", type=click.Choice(list(SEQ_SPACES)), default=None,
              help="Sequential space to compare (default emodarts).")
@click.option("--ulp-runs", type=click.IntRange(min=0), default=4, show_default=True,
              help="Reruns of the float32 reference from one-ulp-perturbed weights when a quantity fails "
                   "(its error envelope); 0: judge against its one run.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the report here.")
@THREADS
@friendly_errors
def compare(preset: str, device: str, steps: int, second_order: bool, seed: int, batch_size: Optional[int],
            seq_space: Optional[str], ulp_runs: int, json_path: Optional[Path], threads: Optional[int]) -> None:
    """Run N search steps with the reference and with --fused from one state; exit 1 beyond tolerance."""
    from emodarts.engine.compare import compare_backends, format_report
    from emodarts.features import FEATURE_PRESETS

    apply_threads(threads)
    cfg = build_config("search", {**parsed_options(), "corpus": "synthetic", "fused": True})
    check_backend(cfg)
    n_features, n_frames = FEATURE_PRESETS[preset].shape
    report = compare_backends(cfg, steps, n_features, n_frames, ulp_runs=ulp_runs)
    click.echo(format_report(report))
    if json_path:
        atomic_write_json(json_path, report)
    sys.exit(0 if report["ok"] else 1)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@friendly_errors
def report(run_dir: Path) -> None:
    """Plots (alphas per epoch, loss and UA curves, confusion matrix, cell diagrams) and a Markdown summary."""
    from emodarts.report import write_report

    click.echo(f"report: {write_report(run_dir)}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
@friendly_errors
def predict(run_dir: Path, audio: Tuple[Path, ...], device: str, as_json: bool) -> None:
    """Predicted emotion and class probabilities for each AUDIO file, by RUN_DIR's trained network."""
    import json as _json

    from emodarts.cli.predict import format_predictions, predict_files
    from emodarts.ops.backend import check_device

    check_device(device)
    records = predict_files(run_dir, audio, device)
    click.echo(_json.dumps(records, indent=2) if as_json else format_predictions(records))
    if any("error" in r for r in records):
        sys.exit(1)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx", "all"]), default="all", show_default=True,
              help="What to write besides model.safetensors and MODEL_CARD.md.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder to write (default RUN_DIR/export; for a cv run, one fold_<k> folder in it per fold).")
@click.option("--folds", default=None, help="A cv run's folds to export, e.g. 0,2 (default: every trained fold).")
@friendly_errors
def export(run_dir: Path, fmt: str, out: Optional[Path], folds: Optional[str]) -> None:
    """The run's selected final network as TorchScript and ONNX (features in, class probabilities out, the
    normalisation inside), its weights as safetensors, and MODEL_CARD.md: how to use it without emodarts."""
    from emodarts.engine.export import FORMATS, export_run, export_targets, onnx_available

    formats = FORMATS if fmt == "all" else (fmt,)
    if "onnx" in formats and not onnx_available():
        if fmt == "onnx":
            raise EmodartsError("--format onnx needs the onnx package: pip install 'emodarts[export]' (or onnx)")
        formats = ("torchscript",)
        click.echo("model.onnx: not written (the onnx package is not installed: pip install 'emodarts[export]')")
    targets = export_targets(run_dir, folds or "")
    base = out or run_dir / "export"
    for target in targets:
        dest = base / target.name if target != run_dir else base
        files = export_run(target, dest, formats)
        click.echo(f"{dest}: " + ", ".join(f"{name} ({size / 1e6:.2f} MB)" for name, size in files.items()))


@cli.command("config")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="The base (default: the file's preset, else tiny).")
@CONFIG_FILE
@SET_VALUES
@friendly_errors
def config_command(preset: Optional[str], config_file: Optional[Path], set_values: Tuple[str, ...]) -> None:
    """Print the configuration that preset < --config FILE < --set resolve to, as YAML: what a run started
    with the same values records in RUN_DIR/config.json."""
    import json as _json

    import yaml

    options = {"preset": preset or "tiny", "config_file": config_file, "set_values": set_values,
               "_explicit": {"preset"} if preset else set()}
    cfg = build_config("search", options)
    click.echo(yaml.safe_dump(_json.loads(_json.dumps(cfg.to_dict())), sort_keys=False).rstrip())


@cli.command()
@click.option("--device", default=None,
              help="Require this device (cpu, cuda or cuda:N): exit 1 when this machine cannot give it.")
@click.option("--fused", is_flag=True,
              help="Require the fused kernels for --device (default cpu): exit 1 when they are not available.")
def doctor(device: Optional[str], fused: bool) -> None:
    """What this machine offers (torch, CUDA, triton, the extension, audio libraries) and what to do.

    Plain `doctor` only informs (exit 0); with --device and/or --fused it exits 1 when what they ask for
    is unavailable."""
    from emodarts.cli.doctor import checks, format_checks, unmet

    rows = checks()
    click.echo(format_checks(rows))
    missing = unmet(rows, device, fused)
    for line in missing:
        click.echo(f"unavailable: {line}", err=True)
    sys.exit(1 if missing else 0)


def main() -> None:
    """The console script `emodarts` (setup.py)."""
    cli()


# The corpus commands, kept in their own module, join the group.
cli.add_command(cli_corpus.features)
cli.add_command(cli_corpus.cv)


if __name__ == "__main__":
    main()
