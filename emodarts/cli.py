"""The `emodarts` command: search, train, evaluate, run (search -> train -> evaluate)."""
import functools
import sys
import time
from pathlib import Path
from typing import Optional

import click

from .config import PRESETS, RunConfig, config_from_dict, with_overrides, with_seq_space
from .distributed import info
from .progress import say
from .errors import EmodartsError
from .io import atomic_write_json
from .space import DARTS_SEQ_PRIMITIVES, SEQ_SPACES, SEQ_SUBSETS

CONFIG_NAME = "config.json"


def _common(f):
    """Options every command shares."""
    options = [
        click.option("--corpus", default="synthetic", show_default=True,
                     help="Corpus: synthetic (built in), iemocap, msp-improv, msp-podcast or csv (a manifest with "
                          "path,label,speaker)."),
        click.option("--protocol", default=None,
                     help="Named protocol of the corpus (docs/corpora.md); search/train/run use its fold 0."),
        click.option("--root", type=click.Path(path_type=Path), default=None,
                     help="Corpus folder (or manifest file for csv). The synthetic corpus defaults to ~/.cache/emodarts."),
        click.option("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True,
                     help="Feature and model preset: tiny (CPU demo) or paper (the published settings)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Fixes the data split, the initial weights and the search trajectory."),
        click.option("--out", "out", type=click.Path(path_type=Path), default=None,
                     help="Run folder (default runs/<command>-<time>)."),
        click.option("--resume", "resume", type=click.Path(path_type=Path), default=None,
                     help="Continue the run in this folder from its last checkpoint."),
        click.option("--epochs", type=int, default=None, help="Epochs (search epochs for `run`)."),
        click.option("--batch-size", type=int, default=None, help="Batch size (search and training)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
        click.option("--fused", is_flag=True,
                     help="Use the fused kernels (Triton on CUDA, C++ on CPU) instead of plain PyTorch."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _model_options(f):
    """Search-space shape; any preset value can be overridden."""
    options = [
        click.option("--second-order", is_flag=True, help="Unrolled second-order alpha gradient (default: first order)."),
        click.option("--cnn-layers", type=int, default=None, help="Number of CNN cells."),
        click.option("--channels", type=int, default=None, help="Initial CNN channels."),
        click.option("--cnn-nodes", type=int, default=None, help="Intermediate nodes per CNN cell."),
        click.option("--seq-cells", type=int, default=None, help="Number of sequential cells."),
        click.option("--seq-nodes", type=int, default=None, help="Intermediate nodes per sequential cell."),
        click.option("--hidden", type=int, default=None, help="Sequence width H (recurrent hidden size)."),
        click.option("--seq-candidates", type=click.Choice(sorted(SEQ_SUBSETS)), default=None,
                     help="Sequential candidate set of the emodarts space (default: the preset's)."),
        click.option("--seq-space", type=click.Choice(list(SEQ_SPACES)), default=None,
                     help="Sequential search space: emodarts (recurrent candidates per edge, default) or darts "
                          "(the DARTS recurrent cell: activations mixed over one shared GEMM, 8 nodes; 4 in tiny)."),
        click.option("--train-epochs", type=int, default=None, help="Final-training epochs (`run` only)."),
        click.option("--max-skip", type=click.IntRange(min=0), default=None,
                     help="Cap skip connections per derived CNN normal cell (P-DARTS; default off)."),
        click.option("--skip-patience", type=click.IntRange(min=1), default=None,
                     help="Stop the search after this many epochs in a row over --max-skip."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _precision_options(f):
    """Mixed precision and memory layout."""
    f = click.option("--channels-last", is_flag=True, help="channels_last memory format for the CNN part (CUDA).")(f)
    return click.option("--amp", type=click.Choice(["none", "bf16"]), default=None,
                        help="bf16 autocast for search and training (alphas stay fp32). Default none.")(f)


def _friendly_errors(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except EmodartsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: the last finished epoch is checkpointed; continue with --resume RUN_DIR", err=True)
            sys.exit(130)
    return wrapper


def build_config(command: str, corpus, root, preset, seed, epochs, batch_size, device, fused, second_order=False,
                 protocol=None,
                 cnn_layers=None, channels=None, cnn_nodes=None, seq_cells=None, seq_nodes=None, hidden=None,
                 seq_candidates=None, train_epochs=None, max_skip=None, skip_patience=None, amp=None,
                 channels_last=None, seq_space=None) -> RunConfig:
    base = PRESETS[preset]
    model = base.model
    if seq_space == "darts":
        if seq_candidates:
            raise EmodartsError("--seq-candidates chooses among the emodarts recurrent candidates; the darts space "
                                f"always mixes {', '.join(DARTS_SEQ_PRIMITIVES[1:])} (drop one of the two options)")
        model = with_seq_space(model, "darts", preset)
    model = with_overrides(model, cnn_layers=cnn_layers, cnn_channels=channels, cnn_nodes=cnn_nodes,
                           seq_cells=seq_cells, seq_nodes=seq_nodes, hidden=hidden,
                           seq_primitives=SEQ_SUBSETS[seq_candidates] if seq_candidates else None)
    search_epochs = epochs if command in ("search", "run") else None
    final_epochs = train_epochs if command == "run" else (epochs if command == "train" else None)
    search = with_overrides(base.search, epochs=search_epochs, batch_size=batch_size, second_order=second_order or None,
                            max_skip_normal=max_skip, skip_patience=skip_patience)
    train = with_overrides(base.train, epochs=final_epochs, batch_size=batch_size)
    return with_overrides(base, corpus=corpus, root=str(root) if root else "", protocol=protocol, seed=seed, device=device,
                          backend="fused" if fused else "reference", model=model, search=search, train=train,
                          amp=amp, channels_last=channels_last or None)


def open_run(command: str, cfg: RunConfig, out: Optional[Path], resume: Optional[Path], device: str,
             fused: bool):
    """Return (config, run_dir, resuming). A new run never overwrites an existing one. Under torchrun the
    process joins its group here (and takes its own GPU); only rank 0 writes the run folder."""
    from .distributed import barrier, info, init_from_env

    _, device = init_from_env(device)
    if resume is not None:
        path = Path(resume) / CONFIG_NAME
        if not path.is_file():
            raise EmodartsError(f"{path}: no run to resume (config.json is missing)")
        import json

        cfg = config_from_dict(json.loads(path.read_text()))
        cfg = with_overrides(cfg, device=device, backend="fused" if fused else cfg.backend)
        return cfg, Path(resume), True
    cfg = with_overrides(cfg, device=device)
    run_dir = Path(out) if out else Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / CONFIG_NAME).exists():
        raise EmodartsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    barrier()
    if info().is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_NAME, cfg.to_dict())
    barrier()
    return cfg, run_dir, False


def _check_backend(cfg: RunConfig) -> None:
    from .ops.backend import check_backend

    check_backend(cfg.backend, cfg.device)  # a fused backend that is not built fails here, before any work


@click.group()
@click.version_option(package_name="emodarts")
def cli():
    """emoDARTS: joint CNN + sequential differentiable architecture search for speech emotion recognition."""


@cli.command()
@_common
@_model_options
@_precision_options
@_friendly_errors
def search(corpus, protocol, root, preset, seed, out, resume, epochs, batch_size, device, fused, progress, **model):
    """Search a genotype (bilevel DARTS) and write RUN_DIR/genotype.json."""
    from .pipeline import prepare_data
    from .train import run_search

    model.pop("train_epochs")
    cfg = build_config("search", corpus, root, preset, seed, epochs, batch_size, device, fused, protocol=protocol, **model)
    _check_backend(cfg)
    cfg, run_dir, resuming = open_run("search", cfg, out, resume, device, fused)
    data = prepare_data(cfg, progress, report_dir=run_dir)
    genotype = run_search(cfg, data, run_dir, resume=resuming, progress=progress)
    say(f"genotype: {run_dir / 'genotype.json'}  (best epoch {genotype.meta.get('epoch')})")
    _write_report(run_dir)


@cli.command()
@_common
@click.option("--genotype", "genotype_path", type=click.Path(path_type=Path), default=None,
              help="Genotype JSON to train (default: RUN_DIR/genotype.json of --resume, else required).")
@_precision_options
@_friendly_errors
def train(corpus, protocol, root, preset, seed, out, resume, epochs, batch_size, device, fused, progress, genotype_path,
          amp, channels_last):
    """Train the network of a genotype from scratch; the epoch is chosen on the dev speakers."""
    from .pipeline import prepare_data
    from .space import load_genotype
    from .train import run_train

    given = None
    if genotype_path is not None and resume is None:  # its sequential space shapes the network
        if not genotype_path.exists():
            raise EmodartsError(f"{genotype_path}: genotype file not found")
        given = load_genotype(genotype_path)
    cfg = build_config("train", corpus, root, preset, seed, epochs, batch_size, device, fused, protocol=protocol,
                       amp=amp, channels_last=channels_last, seq_space=given.seq_space if given else None)
    cfg, run_dir, resuming = open_run("train", cfg, out, resume, device, fused)
    genotype_path = genotype_path or run_dir / "genotype.json"
    if not genotype_path.exists():
        raise EmodartsError(f"{genotype_path}: genotype file not found (give --genotype FILE)")
    genotype = given or load_genotype(genotype_path)
    if genotype_path != run_dir / "genotype.json":
        from .space import save_genotype

        if info().is_main:
            save_genotype(genotype, run_dir / "genotype.json")
    data = prepare_data(cfg, progress, report_dir=run_dir)
    best = run_train(cfg, genotype, data, run_dir, resume=resuming, progress=progress)
    say(f"best dev UA {best['ua']:.4f} at epoch {best['epoch'] + 1}; model: {run_dir / 'model.pt'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@_friendly_errors
def evaluate(run_dir, device, progress):
    """Evaluate RUN_DIR's trained network on the test speakers (once); writes RUN_DIR/metrics.json."""
    from .pipeline import prepare_data
    from .train import run_evaluate

    cfg, run_dir, _ = open_run("evaluate", None, None, run_dir, device, False)
    data = prepare_data(cfg, progress, report_dir=run_dir)
    _print_metrics(run_evaluate(cfg, data, run_dir), run_dir)


def _write_report(run_dir: Path) -> None:
    from .distributed import info
    from .report import write_report

    if not info().is_main:
        return
    click.echo(f"report: {write_report(run_dir)}")


def _print_metrics(metrics: dict, run_dir: Path) -> None:
    classes = metrics["classes"]
    click.echo("confusion (rows: true, columns: predicted): " + ", ".join(classes))
    for name, row in zip(classes, metrics["confusion"]):
        click.echo(f"  {name:>8s} " + " ".join(f"{v:5d}" for v in row))
    click.echo(f"test UA {metrics['ua']:.4f}  WA {metrics['wa']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
               f"({metrics['n']} utterances; {run_dir / 'metrics.json'})")


@cli.command()
@_common
@_model_options
@_precision_options
@_friendly_errors
def run(corpus, protocol, root, preset, seed, out, resume, epochs, batch_size, device, fused, progress, **model):
    """Search, then train the found genotype, then evaluate it on the test speakers."""
    from .pipeline import prepare_data
    from .space import save_genotype
    from .train import run_evaluate, run_search, run_train

    cfg = build_config("run", corpus, root, preset, seed, epochs, batch_size, device, fused, protocol=protocol, **model)
    _check_backend(cfg)
    cfg, run_dir, resuming = open_run("run", cfg, out, resume, device, fused)
    t0 = time.time()
    data = prepare_data(cfg, progress, report_dir=run_dir)
    genotype = run_search(cfg, data, run_dir, resume=resuming, progress=progress)
    if info().is_main:
        save_genotype(genotype, run_dir / "genotype.json")
    run_train(cfg, genotype, data, run_dir, resume=resuming, progress=progress)
    metrics = run_evaluate(cfg, data, run_dir)
    if not info().is_main:
        return
    _print_metrics(metrics, run_dir)
    _write_report(run_dir)
    click.echo(f"UA {metrics['ua']:.4f}  WA {metrics['wa']:.4f}  ({time.time() - t0:.0f} s)")


@cli.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--steps", type=int, default=3, show_default=True, help="Search steps to compare.")
@click.option("--second-order", is_flag=True, help="Compare unrolled second-order steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=None)
@click.option("--seq-space", type=click.Choice(list(SEQ_SPACES)), default=None,
              help="Sequential space to compare (default emodarts).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the report here.")
@_friendly_errors
def compare(preset, device, steps, second_order, seed, batch_size, seq_space, json_path):
    """Run N search steps with the reference and with --fused from one state; exit 1 beyond tolerance."""
    from .compare import compare_backends, format_report
    from .features import FEATURE_PRESETS

    cfg = build_config("search", "synthetic", None, preset, seed, None, batch_size, device, True,
                       second_order=second_order, seq_space=seq_space)
    _check_backend(cfg)
    n_features, n_frames = FEATURE_PRESETS[preset].shape
    report = compare_backends(cfg, steps, n_features, n_frames)
    click.echo(format_report(report))
    if json_path:
        atomic_write_json(json_path, report)
    sys.exit(0 if report["ok"] else 1)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_friendly_errors
def report(run_dir):
    """Plots (alphas per epoch, loss and UA curves, confusion matrix, cell diagrams) and a Markdown summary."""
    _write_report(run_dir)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
@_friendly_errors
def predict(run_dir, audio, device, as_json):
    """Predicted emotion and class probabilities for each AUDIO file, by RUN_DIR's trained network."""
    import json as _json

    from .predict import format_predictions, predict_files

    records = predict_files(run_dir, audio, device)
    click.echo(_json.dumps(records, indent=2) if as_json else format_predictions(records))
    if any("error" in r for r in records):
        sys.exit(1)


@cli.command()
def doctor():
    """What this machine offers (torch, CUDA, triton, the extension, audio libraries) and what to do."""
    from .doctor import checks, format_checks

    click.echo(format_checks(checks()))


def main() -> None:
    cli()


def _register_extra_commands() -> None:
    """Commands kept in their own modules (corpora tooling) join the group here."""
    from . import cli_corpus

    cli_corpus.register(cli, common=_common, model_options=_model_options, friendly_errors=_friendly_errors,
                        build_config=build_config, open_run=open_run)


_register_extra_commands()


if __name__ == "__main__":
    main()
