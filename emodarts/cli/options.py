"""What the command modules (commands.py, corpus.py) share: the options, declared once in a table that also
says which configuration field each one sets (so that `build_config` turns the parsed options into a
RunConfig without a parameter per option), the checks on what was given, the pre-checks before a run
folder exists, the thread setup and the one-line error printing.

Adding an option to search/run/cv: one `opt(...)` line in MODEL_OPTIONS, with `to=` naming the
configuration field it sets (and `search_only=True` when only the search reads it; `cv --genotype` then
refuses it, and so does --resume unless it joins RESUME_MAY_CHANGE). To search/train/run/cv: the same in
COMMON_OPTIONS. A command with options of its own (compare, features) takes a shared one as a decorator
(`@THREADS`); compare's configuration comes from build_config too, features passes values on itself.
"""
import functools
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

import click
from click.core import ParameterSource

from emodarts.data.labels import labels_problem, split_labels
from emodarts.engine.config import (
    CLASS_WEIGHTS,
    PRESETS,
    RunConfig,
    alpha_split_problem,
    aux_weight_problem,
    with_changes,
    with_seq_space,
)
from emodarts.engine.overrides import check_values, merged, parse_set, read_config_file
from emodarts.features.config import FEATURE_KINDS
from emodarts.model.space import (
    DARTS_SEQ_PRIMITIVES,
    SEQ_SPACES,
    SEQ_SUBSETS,
)
from emodarts.runtime.errors import EmodartsError

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_NAME = "config.json"
# What --resume lets the command line change: run-time choices and epoch counts. Every other setting comes
# from RUN_DIR/config.json, and giving it again is an error rather than silently dropped.
RESUME_MAY_CHANGE = ("epochs", "train_epochs", "device", "fused", "amp", "channels_last", "progress", "threads",
                     "tensorboard")


def option_list(names: Sequence[str]) -> str:
    """'--a, --b and --c' for parameter names ('train_epochs' -> '--train-epochs')."""
    flags = ["--" + n.replace("_", "-") for n in names]
    return ", ".join(flags[:-1]) + " and " + flags[-1] if len(flags) > 1 else flags[0]


RESUME_HELP = ("Continue the run in this folder from its last checkpoint, with the settings of its config.json; "
               f"only {option_list(RESUME_MAY_CHANGE)} may be given with it (any other setting is refused).")


def backend_of(fused: bool) -> str:
    """The kernel backend that --fused asks for."""
    return "fused" if fused else "reference"


# ------------------------------------------------------------------------------------ the option table
@dataclass(frozen=True)
class Opt:
    """One command-line option: its click declaration and, when its value goes into the configuration,
    which field it sets. Applied to a command as a decorator (`@THREADS`)."""

    decls: Tuple[str, ...]
    attrs: Mapping[str, Any]
    to: Optional[str] = None  # "seed" or "search.max_skip_normal": the RunConfig field; None: not one field
    convert: Optional[Callable[[Any], Any]] = None  # parsed value -> field value (None keeps the preset's)
    check: Optional[Callable[[Any], Optional[str]]] = None  # why a given value cannot be used, or None
    search_only: bool = False  # only the search reads it: `cv --genotype` refuses it

    @functools.cached_property
    def name(self) -> str:
        """The parameter name click passes the value under (`--max-skip` -> max_skip)."""
        return click.Option(self.decls, **self.attrs).name

    def __call__(self, f: F) -> F:
        return click.option(*self.decls, **self.attrs)(f)


def opt(*decls: str, to: Optional[str] = None, convert: Optional[Callable[[Any], Any]] = None,
        check: Optional[Callable[[Any], Optional[str]]] = None, search_only: bool = False, **attrs: Any) -> Opt:
    """An Opt declared like click.option, plus where its value goes (`to`, `convert`, `check`)."""
    return Opt(decls, attrs, to, convert, check, search_only)


def _flag(value: Optional[bool]) -> Optional[bool]:
    """A flag that is off keeps the preset's value."""
    return value or None


FEATURES = opt("--features", to="features", type=click.Choice(FEATURE_KINDS), default=None,
               help="Input features: mfcc (default, the paper's), logmel, spectrogram (|STFT|, n_fft 278, hop 229, "
                    "max-pooled to the preset's shape) or npy (precomputed arrays named by the csv manifest's "
                    "features column). Part of the feature-cache key.")

CONFIG_FILE = opt("--config", "config_file", type=click.Path(path_type=Path), default=None, metavar="FILE",
                  help="YAML or JSON file with any keys of RUN_DIR/config.json (nested as there; a run's "
                       "config.json is one). Precedence: preset < FILE < options given < --set.")
SET_VALUES = opt("--set", "set_values", multiple=True, metavar="KEY=VALUE",
                 help="Any configuration field by its dotted key, e.g. --set search.alpha_lr=6e-4 --set "
                      "model.dropout=0.2 (repeatable; wins over everything else).")

THREADS = opt("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op CPU threads (default 1: see README, 'Threads and heap').")

# search, train, run, cv. --preset, --epochs and --batch-size are read by build_config itself (the preset
# is the base; which phase --epochs counts depends on the command).
COMMON_OPTIONS: Sequence[Opt] = (
    CONFIG_FILE,
    SET_VALUES,
    opt("--corpus", to="corpus", default="synthetic", show_default=True,
        help="Corpus: synthetic (built in), iemocap, msp-improv, msp-podcast or csv (a manifest with "
             "path,label,speaker)."),
    opt("--protocol", to="protocol", default=None,
        help="Named protocol of the corpus (docs/corpora.md); search/train/run use its fold 0."),
    opt("--labels", to="labels", convert=split_labels, check=lambda v: labels_problem(split_labels(v)), default=None,
        metavar="CLASSES", help="The classes, in order, and the corpus labels each takes, e.g. neutral,happy=happy+"
        "excited,sad,angry; others are skipped (default: the protocol's classes; a csv manifest's every label)."),
    opt("--root", to="root", convert=lambda root: str(root) if root else None,
        type=click.Path(path_type=Path), default=None,
        help="Corpus folder (or manifest file for csv). The synthetic corpus defaults to ~/.cache/emodarts."),
    opt("--preset", type=click.Choice(sorted(PRESETS)), default="tiny", show_default=True,
        help="Feature and model preset: tiny (CPU demo) or paper (the published settings)."),
    FEATURES,
    opt("--seed", to="seed", type=int, default=0, show_default=True,
        help="Fixes the data split, the initial weights and the search trajectory."),
    opt("--out", "out", type=click.Path(path_type=Path), default=None,
        help="Run folder (default runs/<command>-<time>)."),
    opt("--resume", "resume", type=click.Path(path_type=Path), default=None, help=RESUME_HELP),
    opt("--epochs", type=int, default=None, help="Epochs (search epochs for `run`)."),
    opt("--batch-size", type=int, default=None, help="Batch size (search and training)."),
    opt("--class-weights", type=click.Choice(CLASS_WEIGHTS), default=None,
        help="Cross-entropy class weights of the search and the final training: none, or balanced (inverse "
             "class frequency of the labels trained on). Default: none in the search, balanced in training."),
    opt("--device", to="device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
    opt("--fused", to="backend", convert=backend_of, is_flag=True,
        help="Use the fused kernels (Triton on CUDA, C++ on CPU) instead of plain PyTorch."),
    opt("--progress/--no-progress", default=True, show_default=True, help="Progress bars."),
    opt("--tensorboard/--no-tensorboard", default=True, show_default=True,
        help="TensorBoard logs in RUN_DIR/tensorboard (watch with: tensorboard --logdir runs/)."),
    THREADS,
    opt("--min-duration", to="min_duration", type=click.FloatRange(min=0), default=None,
        help="Shortest usable clip in seconds; shorter ones are skipped as too short (default 0.25)."),
)

# The network shape (search, run, cv; `train` takes them too, its node counts and sequential space default
# to the genotype's). --seq-space is read by build_config itself (it switches the candidates first).
SHAPE_OPTIONS: Sequence[Opt] = (
    opt("--cnn-layers", to="model.cnn_layers", type=int, default=None, help="Number of CNN cells."),
    opt("--channels", to="model.cnn_channels", type=int, default=None, help="Initial CNN channels."),
    opt("--cnn-nodes", to="model.cnn_nodes", type=int, default=None, help="Intermediate nodes per CNN cell."),
    opt("--seq-cells", to="model.seq_cells", type=int, default=None, help="Number of sequential cells."),
    opt("--seq-nodes", to="model.seq_nodes", type=int, default=None,
        help="Intermediate nodes per sequential cell."),
    opt("--hidden", to="model.hidden", type=int, default=None, help="Sequence width H (recurrent hidden size)."),
    opt("--seq-candidates", to="model.seq_primitives", convert=lambda name: SEQ_SUBSETS[name] if name else None,
        type=click.Choice(sorted(SEQ_SUBSETS)), default=None,
        help="Sequential candidate set of the emodarts space (default: the preset's)."),
    opt("--seq-space", type=click.Choice(list(SEQ_SPACES)), default=None,
        help="Sequential search space: emodarts (recurrent candidates per edge, default) or darts "
             "(the DARTS recurrent cell: activations mixed over one shared GEMM, 8 nodes; 4 in tiny)."),
)

# search, run, cv: the search space and the search; any preset value can be overridden. --train-epochs is
# read by build_config itself (final-training epochs of `run`).
MODEL_OPTIONS: Sequence[Opt] = (
    opt("--second-order", to="search.second_order", convert=_flag, search_only=True, is_flag=True,
        help="Unrolled second-order alpha gradient (default: first order)."),
    *SHAPE_OPTIONS,
    opt("--train-epochs", type=int, default=None, help="Final-training epochs (`run` only)."),
    opt("--max-skip", to="search.max_skip_normal", search_only=True, type=click.IntRange(min=0), default=None,
        help="Cap skip connections per derived CNN normal cell (P-DARTS; default off)."),
    opt("--skip-patience", to="search.skip_patience", search_only=True, type=click.IntRange(min=1), default=None,
        help="Stop the search after this many epochs in a row over --max-skip."),
    opt("--alpha-split", to="search.alpha_split", check=alpha_split_problem, search_only=True, type=float,
        default=None, metavar="FRACTION",
        help="Share of the search data (the training speakers' utterances) that trains the alphas; "
             "the rest trains the weights. Default 0.5 (DARTS); 0.8 as the published emoDARTS code."),
    opt("--partial-channels", to="model.partial_channels", search_only=True, type=click.IntRange(min=1),
        default=None, metavar="K",
        help="PC-DARTS: only 1/K of each CNN edge's channels go through the candidates (the rest bypass "
             "them, then a channel shuffle), with edge normalisation (one beta per edge). K must divide "
             "--channels. Default 1: plain DARTS."),
)

# train, run, cv: the auxiliary head of the final training.
AUX_OPTIONS: Sequence[Opt] = (
    opt("--aux-weight", to="train.aux_weight", check=aux_weight_problem, type=float, default=None,
        metavar="WEIGHT",
        help="Weight of the auxiliary head's loss in the final training (DARTS's auxiliary "
             "classifier after the second reduction cell; training only). 0 turns it off. "
             "Default: the preset's (paper 0.4, tiny 0)."),
)

# search, train, run: mixed precision and memory layout.
PRECISION_OPTIONS: Sequence[Opt] = (
    opt("--amp", to="amp", type=click.Choice(["none", "bf16"]), default=None,
        help="bf16 autocast for search and training (alphas stay fp32). Default none."),
    opt("--channels-last", to="channels_last", convert=_flag, is_flag=True,
        help="channels_last memory format for the CNN part (CUDA)."),
)

# Every option build_config may read a configuration field from, in the order their values are checked.
CONFIG_OPTIONS: Sequence[Opt] = tuple(o for group in (COMMON_OPTIONS, MODEL_OPTIONS, AUX_OPTIONS, PRECISION_OPTIONS)
                                      for o in group if o.to is not None)
# Options that only the search reads: `cv --genotype` (no search) refuses them.
SEARCH_ONLY: Tuple[str, ...] = tuple(o.name for o in MODEL_OPTIONS if o.search_only)


def options(group: Iterable[Opt]) -> Callable[[F], F]:
    """A decorator adding `group`'s options to a command, in the order listed (that of --help)."""
    group = list(group)

    def decorate(f: F) -> F:
        for o in reversed(group):
            f = o(f)
        return f
    return decorate


common_options = options(COMMON_OPTIONS)
shape_options = options(SHAPE_OPTIONS)
model_options = options(MODEL_OPTIONS)
aux_option = options(AUX_OPTIONS)
precision_options = options(PRECISION_OPTIONS)


# ------------------------------------------------------------------------------- options -> configuration
def parsed_options() -> Dict[str, Any]:
    """The running command's parsed options (click's params mapping), the input of build_config, with
    "_explicit": the names given on the command line (with a config file, an option left at its default
    does not override the file)."""
    ctx = click.get_current_context()
    explicit = {name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    return {**ctx.params, "_explicit": explicit}


def build_config(command: str, options: Mapping[str, Any]) -> RunConfig:
    """The configuration of a new run from parsed options (a mapping of option names to values; a missing
    or None value keeps the preset's). --preset chooses the base, --seq-space switches the sequential space
    before the shape options apply, and `command` says what --epochs counts: search epochs for search and
    run (whose final training takes --train-epochs), training epochs for train. Every other value goes to
    its field as the option table says (CONFIG_OPTIONS)."""
    file_data = read_config_file(options["config_file"]) if options.get("config_file") else {}
    if file_data and options.get("_explicit") is not None:  # the file wins over options left at their defaults
        explicit = options["_explicit"]
        options = {k: (v if k in explicit or k in ("config_file", "set_values") else None) for k, v in options.items()}
        options["preset"] = options["preset"] or file_data.get("preset") or "tiny"
    for o in CONFIG_OPTIONS:
        value = options.get(o.name)
        if value is not None and o.check is not None and o.check(value):
            raise EmodartsError(o.check(value))
    preset = options["preset"]
    if preset not in PRESETS:
        raise EmodartsError(f"{options['config_file']}: field 'preset' is {preset!r}; expected one of "
                            f"{', '.join(sorted(PRESETS))}")
    base = merged(PRESETS[preset], file_data)
    if options.get("seq_space") == "darts":
        if options.get("seq_candidates"):
            raise EmodartsError("--seq-candidates chooses among the emodarts recurrent candidates; the darts space "
                                f"always mixes {', '.join(DARTS_SEQ_PRIMITIVES[1:])} (drop one of the two options)")
        base = replace(base, model=with_seq_space(base.model, "darts", preset))
    epochs, batch_size = options.get("epochs"), options.get("batch_size")
    search_epochs = epochs if command in ("search", "run") else None
    final_epochs = options.get("train_epochs") if command == "run" else (epochs if command == "train" else None)
    weights = options.get("class_weights")
    changes: Dict[str, Any] = {
        "search": {"epochs": search_epochs, "batch_size": batch_size, "class_weights": weights},
        "train": {"epochs": final_epochs, "batch_size": batch_size, "class_weights": weights}, "model": {}}
    for o in CONFIG_OPTIONS:
        value = options.get(o.name)
        if o.convert is not None:
            value = o.convert(value)
        section, _, name = o.to.rpartition(".")
        (changes[section] if section else changes)[name] = value
    cfg = with_changes(base, changes)
    set_items = options.get("set_values") or ()
    sources = {str(options["config_file"]): file_data} if file_data else {}
    for item in set_items:
        layer = parse_set([item])
        sources[f"--set {item}"] = layer
        cfg = merged(cfg, layer)
    check_values(cfg, sources)
    return cfg


# --------------------------------------------------------------------------------- checks on what was given
def refuse_given(names: Iterable[str], why: str) -> None:
    """Options typed on the command line that the command would not use are an error, not dropped."""
    ctx = click.get_current_context()
    names = set(names)
    given = [p.opts[0] for p in ctx.command.params if isinstance(p, click.Option) and p.name in names
             and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE]
    if given:
        raise EmodartsError(f"{', '.join(given)}: {why}")


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
                            f"it without {', '.join(given)} (with --resume only {option_list(list(may_change))} may be given)")


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


# ------------------------------------------------------------------------ pre-checks before a run folder
def check_corpus_names(corpus: str, protocol: Optional[str]) -> None:
    """A misspelt corpus or protocol name is refused before a run folder is made."""
    from emodarts.data.protocols import get_protocol
    from emodarts.data.registry import known_corpora
    from emodarts.runtime.errors import DataError

    if corpus not in known_corpora():
        raise DataError(f"unknown corpus {corpus!r}; known corpora: {', '.join(known_corpora())}")
    get_protocol(corpus, protocol)


def check_backend(cfg: RunConfig) -> None:
    """A fused backend that is not built (or not for this device) fails here, before any work."""
    from emodarts.ops.backend import check_backend as check

    check(cfg.backend, cfg.device)


# ---------------------------------------------------------------------------- run-time setup and errors
def apply_threads(n: Optional[int]) -> int:
    """Set the process-wide run-time settings first thing, before any tensor work: the intra-op threads
    (emodarts/runtime/threads.py) and the heap policy (emodarts/runtime/heap.py, EMODARTS_HEAP)."""
    from emodarts.runtime.heap import apply_heap, heap_mode
    from emodarts.runtime.threads import apply_threads as apply

    try:
        apply_heap(heap_mode())
    except ValueError as exc:
        raise EmodartsError(str(exc)) from None
    return apply(n)


def interrupt_message(exc: KeyboardInterrupt) -> str:
    """What to do after Ctrl-C: resume the named folder, or run again when nothing was kept."""
    run_dir = getattr(exc, "run_dir", None)
    if run_dir is None:
        return "interrupted"
    if getattr(exc, "kept", True):
        return f"interrupted: the last finished epoch is checkpointed; continue with --resume {run_dir}"
    return f"interrupted before the first checkpoint: the run in {run_dir} was discarded; run the same command again"


def friendly_errors(f: F) -> F:
    """A known error is one `error: ` line and exit 2 (no traceback); Ctrl-C says what to do, exit 130."""
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except EmodartsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            click.echo("\n" + interrupt_message(exc), err=True)
            sys.exit(130)
    return wrapper  # type: ignore[return-value]
