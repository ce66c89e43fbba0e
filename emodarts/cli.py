"""The `emodarts` command: search, train, evaluate, run (search -> train -> evaluate)."""
import contextlib
import functools
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Set

import click
from click.core import ParameterSource

from .config import (PRESETS, RunConfig, alpha_split_problem, aux_weight_problem, load_config, with_changes,
                     with_overrides, with_seq_space)
from .distributed import info
from .progress import say
from .errors import EmodartsError
from .io import atomic_write_json
from .space import CNN_PRIMITIVES, DARTS_SEQ_PRIMITIVES, SEQ_SPACES, SEQ_SUBSETS, seq_primitives_of

CONFIG_NAME = "config.json"
# What --resume lets the command line change: run-time choices and epoch counts. Every other setting comes
# from RUN_DIR/config.json, and giving it again is an error rather than silently dropped.
RESUME_MAY_CHANGE = ("device", "fused", "progress", "threads", "epochs", "train_epochs", "amp", "channels_last")
RESUME_HELP = ("Continue the run in this folder from its last checkpoint, with the settings of its config.json; "
               "only --epochs, --train-epochs, --device, --fused, --amp, --channels-last, --progress and "
               "--threads may be given with it (any other setting is refused).")
# Files that show a run got further than its configuration: with none of them, a failed new run's folder
# is removed again (so the same --out can be retried).
STARTED_MARKERS = ("checkpoint.pt", "train_checkpoint.pt", "model.pt", "metrics.json")


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
        click.option("--resume", "resume", type=click.Path(path_type=Path), default=None, help=RESUME_HELP),
        click.option("--epochs", type=int, default=None, help="Epochs (search epochs for `run`)."),
        click.option("--batch-size", type=int, default=None, help="Batch size (search and training)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
        click.option("--fused", is_flag=True,
                     help="Use the fused kernels (Triton on CUDA, C++ on CPU) instead of plain PyTorch."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars."),
        _threads_option(),
        click.option("--min-duration", type=click.FloatRange(min=0), default=None,
                     help="Shortest usable clip in seconds; shorter ones are skipped as too short (default 0.25)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _threads_option():
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="Intra-op CPU threads (default 1: see README, 'Threads and heap').")


def _apply_threads(n: Optional[int]) -> int:
    """Set the process-wide run-time settings first thing, before any tensor work: the intra-op threads
    (emodarts/threads.py) and the heap policy (emodarts/heap.py, EMODARTS_HEAP)."""
    from .errors import EmodartsError
    from .heap import apply_heap, heap_mode
    from .threads import apply_threads

    try:
        apply_heap(heap_mode())
    except ValueError as exc:
        raise EmodartsError(str(exc)) from None
    return apply_threads(n)


def _shape_option_list() -> list:
    """The network shape: cell counts, widths, node counts and the sequential space."""
    return [
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
    ]


def _shape_options(f):
    """Network shape of `train`: node counts and the sequential space default to the genotype's."""
    for opt in reversed(_shape_option_list()):
        f = opt(f)
    return f


def _model_options(f):
    """Search-space shape; any preset value can be overridden."""
    options = [
        click.option("--second-order", is_flag=True, help="Unrolled second-order alpha gradient (default: first order)."),
        *_shape_option_list(),
        click.option("--train-epochs", type=int, default=None, help="Final-training epochs (`run` only)."),
        click.option("--max-skip", type=click.IntRange(min=0), default=None,
                     help="Cap skip connections per derived CNN normal cell (P-DARTS; default off)."),
        click.option("--skip-patience", type=click.IntRange(min=1), default=None,
                     help="Stop the search after this many epochs in a row over --max-skip."),
        click.option("--alpha-split", type=float, default=None, metavar="FRACTION",
                     help="Share of the search data (the training speakers' utterances) that trains the alphas; "
                          "the rest trains the weights. Default 0.5 (DARTS); 0.8 as the published emoDARTS code."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


# Options that only the search reads: `cv --genotype` (no search) refuses them.
SEARCH_ONLY = ("second_order", "max_skip", "skip_patience", "alpha_split")


def _aux_option(f):
    """The auxiliary head of the final training (train, run, cv)."""
    return click.option("--aux-weight", type=float, default=None, metavar="WEIGHT",
                        help="Weight of the auxiliary head's loss in the final training (DARTS's auxiliary "
                             "classifier after the second reduction cell; training only). 0 turns it off. "
                             "Default: the preset's (paper 0.4, tiny 0).")(f)


def refuse_given(options: Iterable[str], why: str) -> None:
    """Options typed on the command line that the command would not use are an error, not dropped."""
    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params if isinstance(p, click.Option) and p.name in set(options)
             and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE]
    if given:
        raise EmodartsError(f"{', '.join(given)}: {why}")


def _precision_options(f):
    """Mixed precision and memory layout."""
    f = click.option("--channels-last", is_flag=True, help="channels_last memory format for the CNN part (CUDA).")(f)
    return click.option("--amp", type=click.Choice(["none", "bf16"]), default=None,
                        help="bf16 autocast for search and training (alphas stay fp32). Default none.")(f)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C inside a run folder: says which folder, and whether it was kept (it has a checkpoint)."""

    def __init__(self, run_dir: Path, kept: bool):
        super().__init__(str(run_dir))
        self.run_dir, self.kept = run_dir, kept


def interrupt_message(exc: KeyboardInterrupt) -> str:
    """What to do after Ctrl-C: resume the named folder, or run again when nothing was kept."""
    run_dir = getattr(exc, "run_dir", None)
    if run_dir is None:
        return "interrupted"
    if getattr(exc, "kept", True):
        return f"interrupted: the last finished epoch is checkpointed; continue with --resume {run_dir}"
    return f"interrupted before the first checkpoint: the run in {run_dir} was discarded; run the same command again"


def _friendly_errors(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except EmodartsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            click.echo("\n" + interrupt_message(exc), err=True)
            sys.exit(130)
    return wrapper


def refuse_resume_conflicts(resume: Optional[Path], may_change: Iterable[str] = RESUME_MAY_CHANGE) -> None:
    """On --resume the settings come from RUN_DIR/config.json: an option typed on the command line that
    would change one of them is an error, not silently dropped. Only `may_change` options may be given."""
    if resume is None:
        return
    ctx = click.get_current_context()
    allowed = {"resume", *may_change}
    given = [p.opts[0] for p in ctx.command.params if isinstance(p, click.Option) and p.name not in allowed
             and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE]
    if given:
        raise EmodartsError(f"--resume {resume} continues the run with the settings of its {CONFIG_NAME}; resume "
                            f"it without {', '.join(given)} (with --resume only --epochs, --train-epochs, "
                            f"--device, --fused, --amp, --channels-last, --progress and --threads may be given)")


def resume_changes(phase_epochs: Dict[str, Optional[int]], amp: Optional[str] = None,
                   channels_last: bool = False) -> dict:
    """The settings a resumed run takes from the command line ({"search": {"epochs": 6}, "amp": ...}):
    epoch counts per phase, mixed precision and memory layout (the checkpoints allow all of them)."""
    out: dict = {phase: {"epochs": n} for phase, n in phase_epochs.items() if n is not None}
    if amp is not None:
        out["amp"] = amp
    if channels_last:
        out["channels_last"] = True
    return out


def build_config(command: str, corpus, root, preset, seed, epochs, batch_size, device, fused, second_order=False,
                 protocol=None,
                 cnn_layers=None, channels=None, cnn_nodes=None, seq_cells=None, seq_nodes=None, hidden=None,
                 seq_candidates=None, train_epochs=None, max_skip=None, skip_patience=None, amp=None,
                 channels_last=None, seq_space=None, min_duration=None, alpha_split=None,
                 aux_weight=None) -> RunConfig:
    for value, problem in ((alpha_split, alpha_split_problem), (aux_weight, aux_weight_problem)):
        if value is not None and problem(value):
            raise EmodartsError(problem(value))
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
                            max_skip_normal=max_skip, skip_patience=skip_patience, alpha_split=alpha_split)
    train = with_overrides(base.train, epochs=final_epochs, batch_size=batch_size, aux_weight=aux_weight)
    return with_overrides(base, corpus=corpus, root=str(root) if root else "", protocol=protocol, seed=seed, device=device,
                          backend="fused" if fused else "reference", model=model, search=search, train=train,
                          amp=amp, channels_last=channels_last or None, min_duration=min_duration)


def open_run(command: str, cfg: RunConfig, out: Optional[Path], resume: Optional[Path], device: str,
             fused: bool, changes: Optional[dict] = None, create: bool = True):
    """Return (config, run_dir, resuming). A new run never overwrites an existing one; with create=False
    its folder is not made yet (run_folder makes it once the checks passed). A resumed run's config.json
    takes `changes` (see resume_changes). Under torchrun the process joins its group here (and takes its
    own GPU); only rank 0 writes the run folder."""
    from .distributed import init_from_env
    from .ops.backend import check_device

    check_device(device)
    _, device = init_from_env(device)
    if resume is not None:
        return _resumed_config(Path(resume), device, fused, changes or {}), Path(resume), True
    cfg = with_overrides(cfg, device=device)
    run_dir = Path(out) if out else Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / CONFIG_NAME).exists():
        raise EmodartsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    if create:
        _create_run_dir(cfg, run_dir)
    return cfg, run_dir, False


def _resumed_config(run_dir: Path, device: str, fused: bool, changes: dict) -> RunConfig:
    """RUN_DIR/config.json with the honoured command-line changes written back (so a second resume keeps
    them), then this process's device and backend."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise EmodartsError(f"{path}: no run to resume (config.json is missing)")
    stored = load_config(path)
    cfg = with_changes(stored, changes)
    if cfg != stored and info().is_main:
        atomic_write_json(path, cfg.to_dict())
    return with_overrides(cfg, device=device, backend="fused" if fused else cfg.backend)


def _create_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    from .distributed import barrier

    barrier()
    if info().is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_NAME, cfg.to_dict())
    barrier()


def _started(run_dir: Path) -> bool:
    """Whether the run got further than its configuration (a checkpoint, a model, metrics; in any fold)."""
    return any(next(run_dir.rglob(name), None) is not None for name in STARTED_MARKERS)


def _discard_unstarted(run_dir: Path, before: Optional[Set[str]]) -> bool:
    """Remove what a new run put in `run_dir` when it never got to a checkpoint; entries that were there
    before (a folder given with --out) stay, and so does a skipped-files report (it says why the data did
    not do; without config.json the folder no longer blocks a retry). Returns whether the run was removed."""
    from .data.report import REPORT_NAME

    if not info().is_main or not run_dir.is_dir() or _started(run_dir):
        return False
    for entry in run_dir.iterdir():
        if entry.name.startswith(REPORT_NAME + "."):
            continue
        if before is None or entry.name not in before:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if before is None and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return True


@contextlib.contextmanager
def run_folder(cfg: RunConfig, run_dir: Path, resuming: bool) -> Iterator[Path]:
    """The run folder for the command's work. A new run's folder is made here, after every check that
    needs no data; if the work then fails (an error, Ctrl-C) before the run's first checkpoint, the folder
    is removed again, so that the same --out can be retried. A resumed folder is never removed."""
    before = None if resuming or not run_dir.exists() else {p.name for p in run_dir.iterdir()}
    if not resuming:
        _create_run_dir(cfg, run_dir)
    say(f"run folder: {run_dir}")
    try:
        yield run_dir
    except KeyboardInterrupt:
        removed = not resuming and _discard_unstarted(run_dir, before)
        raise RunInterrupted(run_dir, kept=not removed) from None
    except Exception:
        if not resuming:
            _discard_unstarted(run_dir, before)
        raise


def _check_backend(cfg: RunConfig) -> None:
    from .ops.backend import check_backend

    check_backend(cfg.backend, cfg.device)  # a fused backend that is not built fails here, before any work


def check_corpus_names(corpus: str, protocol: Optional[str]) -> None:
    """A misspelt corpus or protocol name is refused before a run folder is made."""
    from .data.protocols import get_protocol
    from .data.registry import known_corpora
    from .errors import DataError

    if corpus not in known_corpora():
        raise DataError(f"unknown corpus {corpus!r}; known corpora: {', '.join(known_corpora())}")
    get_protocol(corpus, protocol)


def read_genotype(path: Path):
    """The genotype in `path`; a missing or malformed file is an error naming it."""
    from .space import load_genotype

    if not Path(path).exists():
        raise EmodartsError(f"{path}: genotype file not found")
    return load_genotype(path)


def genotype_shape(genotype, model: dict) -> dict:
    """Model options for training `genotype`: the CNN and sequential node counts and the sequential space
    it determines fill in what the user did not give (what they gave is checked by fit_genotype)."""
    return {**model, "cnn_nodes": model.get("cnn_nodes") or len(genotype.normal.nodes),
            "seq_nodes": model.get("seq_nodes") or len(genotype.seq.nodes),
            "seq_space": model.get("seq_space") or genotype.seq_space}


def fit_genotype(cfg: RunConfig, genotype, path: Path, seq_candidates: Optional[str] = None) -> RunConfig:
    """`cfg` for training `genotype`: its candidate lists admit every operation of the genotype's space
    (a derived network needs none, and a preset's narrower list would refuse a genotype searched with
    more), unless --seq-candidates chose one. A genotype that does not fit is refused, naming the file."""
    from dataclasses import replace

    from .space import check_genotype_fits

    model = replace(cfg.model, cnn_primitives=CNN_PRIMITIVES)
    if not seq_candidates:
        model = replace(model, seq_primitives=seq_primitives_of(model.seq_space))
    check_genotype_fits(genotype, model, where=str(path))
    return replace(cfg, model=model)


@click.group()
@click.version_option(package_name="emodarts")
def cli():
    """emoDARTS: joint CNN + sequential differentiable architecture search for speech emotion recognition."""


@cli.command()
@_common
@_model_options
@_precision_options
@_friendly_errors
def search(corpus, protocol, root, preset, seed, out, resume, epochs, batch_size, device, fused, progress, threads,
           **model):
    """Search a genotype (bilevel DARTS) and write RUN_DIR/genotype.json."""
    from .pipeline import prepare_data
    from .train import run_search

    _apply_threads(threads)
    refuse_resume_conflicts(resume)
    refuse_given(["train_epochs"], "`search` has no final training (give it to `run` or `cv`)")
    model.pop("train_epochs")
    cfg = None
    if resume is None:
        check_corpus_names(corpus, protocol)
        cfg = build_config("search", corpus, root, preset, seed, epochs, batch_size, device, fused,
                           protocol=protocol, **model)
    changes = resume_changes({"search": epochs}, model["amp"], model["channels_last"])
    cfg, run_dir, resuming = open_run("search", cfg, out, resume, device, fused, changes, create=False)
    _check_backend(cfg)
    with run_folder(cfg, run_dir, resuming):
        data = prepare_data(cfg, progress, report_dir=run_dir)
        genotype = run_search(cfg, data, run_dir, resume=resuming, progress=progress)
    say(f"genotype: {run_dir / 'genotype.json'}  (best epoch {genotype.meta.get('epoch')})")
    _write_report(run_dir)


@cli.command()
@_common
@click.option("--genotype", "genotype_path", type=click.Path(path_type=Path), default=None,
              help="Genotype JSON to train (required unless --resume, which trains RUN_DIR/genotype.json).")
@_shape_options
@_aux_option
@_precision_options
@_friendly_errors
def train(corpus, protocol, root, preset, seed, out, resume, epochs, batch_size, device, fused, progress, threads,
          genotype_path, amp, channels_last, aux_weight, **shape):
    """Train the network of a genotype from scratch; the epoch is chosen on the dev speakers.

    The CNN and sequential node counts and the sequential space come from the genotype (a genotype of
    `search --cnn-nodes 3` trains as it is); --cnn-nodes, --seq-nodes and --seq-space, when given, must agree
    with it. Cell counts and widths (--cnn-layers, --channels, --seq-cells, --hidden) are the preset's unless
    given."""
    from .pipeline import prepare_data
    from .space import check_genotype_fits, save_genotype
    from .train import run_train

    _apply_threads(threads)
    refuse_resume_conflicts(resume)
    cfg = None
    if resume is None:
        if genotype_path is None:
            raise EmodartsError("give --genotype FILE (a genotype.json written by `emodarts search`), or "
                                "--resume RUN_DIR")
        check_corpus_names(corpus, protocol)
        genotype = read_genotype(genotype_path)
        cfg = build_config("train", corpus, root, preset, seed, epochs, batch_size, device, fused, protocol=protocol,
                           amp=amp, channels_last=channels_last, aux_weight=aux_weight, **genotype_shape(genotype, shape))
        cfg = fit_genotype(cfg, genotype, genotype_path, shape.get("seq_candidates"))
    changes = resume_changes({"train": epochs}, amp, channels_last)
    cfg, run_dir, resuming = open_run("train", cfg, out, resume, device, fused, changes, create=False)
    if resuming:
        genotype_path = run_dir / "genotype.json"
        genotype = read_genotype(genotype_path)
        check_genotype_fits(genotype, cfg.model, where=str(genotype_path))
    _check_backend(cfg)
    with run_folder(cfg, run_dir, resuming):
        if not resuming and info().is_main:
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
    from .cv import legacy_fold_config
    from .pipeline import prepare_data
    from .train import run_evaluate

    legacy = legacy_fold_config(run_dir)  # a fold folder of a `cv` of an older version
    if legacy is None:
        cfg, run_dir, _ = open_run("evaluate", None, None, run_dir, device, False)
    else:
        cfg = _with_device(legacy, device)
    data = prepare_data(cfg, progress, report_dir=run_dir)
    _print_metrics(run_evaluate(cfg, data, run_dir), run_dir)


def _with_device(cfg: RunConfig, device: str) -> RunConfig:
    from .distributed import init_from_env
    from .ops.backend import check_device

    check_device(device)
    return with_overrides(cfg, device=init_from_env(device)[1])


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
@_aux_option
@_precision_options
@_friendly_errors
def run(corpus, protocol, root, preset, seed, out, resume, epochs, batch_size, device, fused, progress, threads,
        **model):
    """Search, then train the found genotype, then evaluate it on the test speakers."""
    from .pipeline import prepare_data
    from .space import save_genotype
    from .train import run_evaluate, run_search, run_train

    _apply_threads(threads)
    refuse_resume_conflicts(resume)
    cfg = None
    if resume is None:
        check_corpus_names(corpus, protocol)
        cfg = build_config("run", corpus, root, preset, seed, epochs, batch_size, device, fused, protocol=protocol,
                           **model)
    changes = resume_changes({"search": epochs, "train": model["train_epochs"]}, model["amp"],
                             model["channels_last"])
    cfg, run_dir, resuming = open_run("run", cfg, out, resume, device, fused, changes, create=False)
    _check_backend(cfg)
    t0 = time.time()
    with run_folder(cfg, run_dir, resuming):
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
@_threads_option()
@_friendly_errors
def compare(preset, device, steps, second_order, seed, batch_size, seq_space, json_path, threads):
    """Run N search steps with the reference and with --fused from one state; exit 1 beyond tolerance."""
    from .compare import compare_backends, format_report
    from .features import FEATURE_PRESETS

    _apply_threads(threads)
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

    from .ops.backend import check_device
    from .predict import format_predictions, predict_files

    check_device(device)
    records = predict_files(run_dir, audio, device)
    click.echo(_json.dumps(records, indent=2) if as_json else format_predictions(records))
    if any("error" in r for r in records):
        sys.exit(1)


@cli.command()
@click.option("--device", default=None,
              help="Require this device (cpu, cuda or cuda:N): exit 1 when this machine cannot give it.")
@click.option("--fused", is_flag=True,
              help="Require the fused kernels for --device (default cpu): exit 1 when they are not available.")
def doctor(device, fused):
    """What this machine offers (torch, CUDA, triton, the extension, audio libraries) and what to do.

    Plain `doctor` only informs (exit 0); with --device and/or --fused it exits 1 when what they ask for
    is unavailable."""
    from .doctor import checks, format_checks, unmet

    rows = checks()
    click.echo(format_checks(rows))
    missing = unmet(rows, device, fused)
    for line in missing:
        click.echo(f"unavailable: {line}", err=True)
    sys.exit(1 if missing else 0)


def main() -> None:
    cli()


def _register_extra_commands() -> None:
    """Commands kept in their own modules (corpora tooling) join the group here."""
    from . import cli_corpus

    cli_corpus.register(cli, common=_common, model_options=_model_options, friendly_errors=_friendly_errors,
                        build_config=build_config, open_run=open_run, run_folder=run_folder,
                        refuse_resume_conflicts=refuse_resume_conflicts, resume_changes=resume_changes,
                        read_genotype=read_genotype, genotype_shape=genotype_shape, fit_genotype=fit_genotype,
                        apply_threads=_apply_threads, resume_may_change=RESUME_MAY_CHANGE,
                        aux_option=_aux_option, refuse_given=refuse_given, search_only=SEARCH_ONLY)


_register_extra_commands()


if __name__ == "__main__":
    main()
