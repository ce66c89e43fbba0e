"""Model and run configuration: presets `paper` and `tiny`; any field can be overridden."""
import json
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from emodarts.engine.legacy import upgrade_config_dict
from emodarts.features.config import FEATURE_KINDS
from emodarts.model.config import ModelConfig
from emodarts.model.space import DARTS_SEQ_PRIMITIVES, SEQ_SPACES
from emodarts.runtime.errors import EmodartsError

    # edge normalisation (emodarts/model/partial_channels.py); 1: plain DARTS


CLASS_WEIGHTS = ("none", "balanced")  # the cross entropy's class weights (engine/losses.py)


@dataclass(frozen=True)
class SearchConfig:
    epochs: int = 50
    batch_size: int = 16
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    alpha_lr: float = 3e-4
    alpha_betas: Tuple[float, float] = (0.5, 0.999)
    alpha_weight_decay: float = 1e-3
    alpha_split: float = 0.5  # share of the search data that trains alpha (the rest trains w); DARTS: 0.5,
    # the published emoDARTS code: 0.8. Older config.json files stored its complement as `weight_fraction`.
    second_order: bool = False
    max_skip_normal: Optional[int] = None  # cap on skip connections per derived CNN normal cell (off: None)
    skip_patience: int = 0  # stop the search after this many epochs over the cap in a row (0: never)
    class_weights: str = "none"  # cross-entropy class weights: none, or balanced (inverse class frequency)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 16
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    drop_path: float = 0.2
    aux_weight: float = 0.0  # weight of the auxiliary head's loss (0: no auxiliary head); the paper preset: 0.4
    class_weights: str = "balanced"  # cross-entropy class weights: balanced (inverse class frequency) or none


@dataclass(frozen=True)
class RunConfig:
    corpus: str = "synthetic"
    root: str = ""
    protocol: str = ""  # a named protocol of the corpus (fold 0 is used by search/train/run); "" = default split
    fold: int = 0  # the protocol's fold this run uses (`cv` writes one configuration per fold)
    preset: str = "tiny"
    min_duration: Optional[float] = None  # shortest usable clip in seconds; None: the feature preset's (0.25)
    features: str = "mfcc"  # input features (features.FEATURE_KINDS): mfcc, logmel, spectrogram or npy
    labels: Tuple[str, ...] = ()  # --labels (data/labels.py): the classes and the labels each takes; (): the protocol's
    seed: int = 0
    device: str = "cpu"
    backend: str = "reference"
    amp: str = "none"  # "bf16": autocast for search and training
    channels_last: bool = False  # channels_last memory format for the CNN part (CUDA only)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.features not in FEATURE_KINDS:  # a Python API caller's typo fails here, not mid-extraction
            raise EmodartsError(f"field 'features' is {self.features!r}; expected one of {', '.join(FEATURE_KINDS)}")

    @classmethod
    def from_preset(cls, name: str = "tiny") -> "RunConfig":
        """The preset `name` (tiny: a CPU demo; paper: the published settings)."""
        if name not in PRESETS:
            raise EmodartsError(f"unknown preset {name!r}; expected one of {', '.join(sorted(PRESETS))}")
        return PRESETS[name]

    @classmethod
    def from_file(cls, path) -> "RunConfig":
        """The configuration of a YAML or JSON file (keys nested as config.json; a run's config.json is one)
        over its preset (tiny when it names none): what `emodarts config --config FILE` prints."""
        from emodarts.engine.overrides import checked, read_config_file

        data = read_config_file(path)
        return checked(cls.from_preset(data.get("preset", "tiny")), data, str(path))

    def with_overrides(self, changes: Optional[Dict[str, Any]] = None, **fields: Any) -> "RunConfig":
        """This configuration with `changes` ({"search.alpha_lr": 6e-4, "model": {"dropout": 0.2}}; dotted or
        nested keys) and `fields` (top-level: seed=7) in place, checked as --set checks them."""
        from emodarts.engine.overrides import checked, nested

        return checked(self, nested({**(changes or {}), **fields}), "with_overrides")

    def to_dict(self) -> Dict[str, Any]:
        """The configuration as config.json and checkpoints hold it. `features` only when not mfcc: runs of
        versions without the field (their checkpoints compare against this) stay resumable and loadable."""
        d = asdict(self)
        if d["features"] == "mfcc":
            del d["features"]
        if not d["labels"]:  # likewise the protocol's classes (no --labels)
            del d["labels"]
        if d["model"]["partial_channels"] == 1:  # likewise plain DARTS (no --partial-channels)
            del d["model"]["partial_channels"]
        for phase, default in (("search", "none"), ("train", "balanced")):  # likewise the class weights
            if d[phase]["class_weights"] == default:
                del d[phase]["class_weights"]
        return d


PRESETS: Dict[str, RunConfig] = {
    "paper": RunConfig(preset="paper", train=TrainConfig(aux_weight=0.4)),
    "tiny": RunConfig(
        preset="tiny",
        model=ModelConfig(
            cnn_layers=3, cnn_channels=4, cnn_nodes=2, seq_cells=1, seq_nodes=2, hidden=32,
            cnn_primitives=("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"),
            seq_primitives=("none", "skip_connect", "lstm_1", "lstm_2", "rnn_1", "rnn_2", "lstm_att_1", "rnn_att_1"),
            dropout=0.1,
        ),
        search=SearchConfig(epochs=20, batch_size=32, w_lr=0.05),
        train=TrainConfig(epochs=40, batch_size=32, lr=0.05, drop_path=0.1),
    ),
}


DARTS_STEPS: Dict[str, int] = {"paper": 8, "tiny": 4}  # nodes of the DARTS recurrent cell per preset


def with_seq_space(model: ModelConfig, seq_space: str, preset: str) -> ModelConfig:
    """Switch the sequential search space. `darts` takes the DARTS activations as candidates and the DARTS
    paper's 8 nodes (4 in the tiny preset); --seq-nodes still overrides the node count afterwards."""
    if seq_space not in SEQ_SPACES:
        raise ValueError(f"unknown sequential space {seq_space!r}; choose one of {', '.join(SEQ_SPACES)}")
    if seq_space == model.seq_space:
        return model
    if seq_space == "darts":
        return replace(model, seq_space="darts", seq_primitives=DARTS_SEQ_PRIMITIVES,
                       seq_nodes=DARTS_STEPS.get(preset, 8))
    base = PRESETS.get(preset, PRESETS["paper"]).model
    return replace(model, seq_space="emodarts", seq_primitives=base.seq_primitives, seq_nodes=base.seq_nodes)




def alpha_split_problem(value: float, name: str = "--alpha-split") -> Optional[str]:
    """Why `value` cannot be the alpha share of the search data, or None."""
    if not 0.0 < value < 1.0:
        return (f"{name} is the share of the search data that trains the alphas, strictly between 0 and 1 "
                f"(0.5: DARTS; 0.8: the published emoDARTS code); got {value}")
    return None


def aux_weight_problem(value: float, name: str = "--aux-weight") -> Optional[str]:
    """Why `value` cannot weigh the auxiliary head's loss, or None."""
    if not value >= 0.0:
        return f"{name} is the weight of the auxiliary head's loss, 0 (off) or more; got {value}"
    return None


def _from_dict(cls, data: Dict[str, Any]):
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in ("model", "search", "train"):
            value = _from_dict({"model": ModelConfig, "search": SearchConfig, "train": TrainConfig}[f.name], value)
        elif isinstance(value, list):
            value = tuple(float(v) if hints[f.name] == Tuple[float, float] else v for v in value)
        elif isinstance(value, int) and not isinstance(value, bool) and float in (hints[f.name],
                                                                                  *typing.get_args(hints[f.name])):
            value = float(value)  # 1 in a YAML file or --set for a float field: the same run as 1.0
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(data: Dict[str, Any]) -> RunConfig:
    return _from_dict(RunConfig, upgrade_config_dict(data))


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field annotated `hint` (int, float, str, bool, tuples, Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
    return True


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def config_problem(data: Any, cls=RunConfig, prefix: str = "", partial: bool = False) -> Optional[str]:
    """The first thing that keeps `data` from being a configuration of `cls` (an unknown field, with the
    fields its section accepts; a field of the wrong type), or None. Missing fields take their defaults (a
    config.json of an older version); `partial` (a config file or --set): no field is required."""
    if not isinstance(data, dict):
        return f"field '{prefix.rstrip('.')}' must be an object" if prefix else "expected a JSON object"
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
        return f"unknown field '{prefix}{unknown[0]}' ({where} accepts: {', '.join(sorted(known))})"
    for name, value in data.items():
        hint = hints[name]
        if is_dataclass(hint):
            problem = config_problem(value, hint, f"{prefix}{name}.", partial)
            if problem:
                return problem
        elif not _type_ok(value, hint):
            return f"field '{prefix}{name}' is {value!r}; expected {_describe(hint)}"
    if not prefix and not partial and "model" not in data:
        return "field 'model' is missing"
    return None


def load_config(path: Path) -> RunConfig:
    """The configuration in a run's config.json. A file that is not JSON, or not a configuration, is an
    EmodartsError naming the file and what is wrong (the CLI prints one line, not a traceback)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise EmodartsError(f"{path}: cannot read the run configuration ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise EmodartsError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise EmodartsError(f"{path}: not a text file ({exc.reason})") from exc
    data = settings_of(upgrade_config_dict(data))
    problem = config_problem(data)
    if problem:
        raise EmodartsError(f"{path}: not a valid emodarts configuration: {problem}")
    if data.get("features", "mfcc") not in FEATURE_KINDS:
        raise EmodartsError(f"{path}: not a valid emodarts configuration: field 'features' is "
                            f"{data['features']!r}; expected one of {', '.join(FEATURE_KINDS)}")
    if data["model"].get("seq_space", "emodarts") not in SEQ_SPACES:
        raise EmodartsError(f"{path}: not a valid emodarts configuration: field 'model.seq_space' is "
                            f"{data['model']['seq_space']!r}; expected one of {', '.join(SEQ_SPACES)}")
    cfg = config_from_dict(data)
    problem = (alpha_split_problem(cfg.search.alpha_split, "field 'search.alpha_split'")
               or aux_weight_problem(cfg.train.aux_weight, "field 'train.aux_weight'")
               or (f"field 'fold' is {cfg.fold}; expected 0 or more" if cfg.fold < 0 else None))
    if problem:
        raise EmodartsError(f"{path}: not a valid emodarts configuration: {problem}")
    return cfg


CLASSES_KEY = "classes"  # what a run records in config.json once its data gave its classes: not a setting


def settings_of(data: Any) -> Any:
    """A config.json's settings: the mapping without what the run recorded (its classes)."""
    return {k: v for k, v in data.items() if k != CLASSES_KEY} if isinstance(data, dict) else data


def recorded_classes(run_dir: Path) -> Optional[List[str]]:
    """The classes RUN_DIR/config.json records (label index i is the i-th), or None: a run of a version
    that did not record them, or one whose data has not been read yet."""
    try:
        value = json.loads((Path(run_dir) / "config.json").read_text()).get(CLASSES_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return [str(c) for c in value] if isinstance(value, list) else None


def record_classes(run_dir: Path, classes: List[str]) -> None:
    """Add the run's classes to RUN_DIR/config.json (predict, report and a resume follow them)."""
    from emodarts.runtime.files import atomic_write_json

    path = Path(run_dir) / "config.json"
    atomic_write_json(path, {**json.loads(path.read_text()), CLASSES_KEY: list(classes)})


def with_changes(cfg: RunConfig, changes: Dict[str, Any]) -> RunConfig:
    """`cfg` with top-level values and nested ones ({"search": {"epochs": 6}}) replaced; None is ignored."""
    top = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            value = with_overrides(getattr(cfg, key), **value)
        top[key] = value
    return with_overrides(cfg, **top)


def with_overrides(cfg, **changes):
    """dataclasses.replace that ignores None values (options the user did not give)."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})
