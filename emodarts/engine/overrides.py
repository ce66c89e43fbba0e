"""A configuration from layers of values: a preset, then a config file (YAML or JSON, nested as config.json),
then the options given, then `--set key=value` pairs. Each layer is checked before it applies: an unknown
key, a wrong type or an out-of-range value is one EmodartsError that names where it came from, the key and
what the key accepts."""
import functools
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from emodarts.engine.config import RunConfig, config_from_dict, config_problem, settings_of
from emodarts.engine.config_rules import flatten, value_problem
from emodarts.engine.legacy import upgrade_config_dict
from emodarts.runtime.errors import EmodartsError


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


@functools.lru_cache(maxsize=None)
def _loader():
    """yaml's SafeLoader reading 1e-3 as a number (YAML 1.2, JSON) where YAML 1.1 would read a string."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return Loader


def _yaml_load(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_loader())


def read_config_file(path) -> Dict[str, Any]:
    """The mapping in a YAML or JSON file (a run's config.json is one), checked for unknown keys and types."""
    import yaml  # JSON is YAML: one parser reads both

    path = Path(path)
    try:
        data = _yaml_load(path.read_text())
    except OSError as exc:
        raise EmodartsError(f"{path}: cannot read the configuration file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise EmodartsError(f"{path}: not a text file ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise EmodartsError(f"{path}: not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EmodartsError(f"{path}: a configuration file holds a mapping of keys (as config.json), not "
                            f"{type(data).__name__}")
    data = settings_of(upgrade_config_dict(data))  # a run's config.json: its recorded classes are no setting
    problem = config_problem(data, partial=True)
    if problem:
        raise EmodartsError(f"{path}: {problem}")
    return data


def parse_set(items: Iterable[str]) -> Dict[str, Any]:
    """`--set search.alpha_lr=6e-4 --set model.dropout=0.2` -> {"search": {"alpha_lr": 6e-4}, "model": {...}};
    values read as YAML (numbers, true/false, null, [lists], quoted or plain strings)."""
    import yaml

    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise EmodartsError(f"--set {item}: expected KEY=VALUE with a dotted key (e.g. search.alpha_lr=6e-4)")
        try:
            value = _yaml_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise EmodartsError(f"--set {item}: '{part}' is a value, not a section")
        node[parts[-1]] = value
        problem = config_problem(_nest(parts, value), partial=True)
        if problem:
            raise EmodartsError(f"--set {item}: {problem}")
    return out


def nested(changes: Dict[str, Any]) -> Dict[str, Any]:
    """{"search.w_lr": 0.1, "seed": 7} -> {"search": {"w_lr": 0.1}, "seed": 7} (nested keys stay nested)."""
    out: Dict[str, Any] = {}
    for key, value in changes.items():
        out = _deep_merge(out, _nest(key.split("."), value))
    return out


def checked(base: RunConfig, layer: Dict[str, Any], source: str) -> RunConfig:
    """`base` with `layer` (nested keys) merged in; an unknown key, a wrong type or an out-of-range value is
    an EmodartsError naming `source` (a file, "--set ...", an API call)."""
    problem = config_problem(layer, partial=True)
    if problem:
        raise EmodartsError(f"{source}: {problem}")
    cfg = merged(base, layer)
    check_values(cfg, {source: layer})
    return cfg


def _nest(parts, value) -> Dict[str, Any]:
    for part in reversed(parts):
        value = {part: value}
    return value


def merged(base: RunConfig, layer: Dict[str, Any]) -> RunConfig:
    """`base` with the (nested, checked) values of `layer` in place."""
    return config_from_dict(_deep_merge(base.to_dict(), layer))


def _deep_merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def check_values(cfg: RunConfig, sources: Dict[str, Dict[str, Any]]) -> None:
    """Raise EmodartsError for the first out-of-range value of `cfg`, naming where it came from (`sources`:
    a label, e.g. a file name or "--set", -> the layer it gave), or for a --partial-channels K that does
    not divide the channels."""
    problem = value_problem(cfg)
    if problem is None:
        return _check_partial_channels(cfg)
    key, message = problem
    origin: Optional[str] = None
    for label, layer in sources.items():
        if key in flatten(layer):
            origin = label
    raise EmodartsError(f"{origin}: {message}" if origin else message)


def _check_partial_channels(cfg: RunConfig) -> None:
    """PC-DARTS's K must divide the CNN channels (model/partial_channels.py)."""
    from emodarts.model.partial_channels import check_partial_channels

    try:
        check_partial_channels(cfg.model.partial_channels, cfg.model.cnn_channels)
    except ValueError as exc:
        raise EmodartsError(str(exc)) from None


__all__ = ["read_config_file", "parse_set", "merged", "nested", "checked", "check_values"]
