"""Corpus names -> loaders that return utterance lists.

A loader is `loader(root: Path | None, seed: int) -> list[Utterance]`; it may also take `report=` (a
data.report.SkipReport that collects the files it leaves out) and protocol-specific keyword options. Add
one with `register_corpus(name, loader)`. Loaders return the corpus's own label codes; `load_corpus`
applies a protocol (data/protocols.py) that maps them to classes and leaves out the rest.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from emodarts.data import Utterance
from emodarts.runtime.errors import DataError

Loader = Callable[..., List[Utterance]]
_CORPORA: Dict[str, Loader] = {}


def register_corpus(name: str, loader: Loader) -> None:
    _CORPORA[name] = loader


def known_corpora() -> List[str]:
    return sorted(_CORPORA)


def load_native(name: str, root: Optional[Path] = None, seed: int = 0, report=None,
                **options) -> List[Utterance]:
    """Utterances of corpus `name` with the corpus's own labels (no protocol applied)."""
    try:
        loader = _CORPORA[name]
    except KeyError:
        raise DataError(f"unknown corpus {name!r}; known corpora: {', '.join(known_corpora())}") from None
    params = inspect.signature(loader).parameters
    takes_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {}
    if report is not None and ("report" in params or takes_kw):
        kwargs["report"] = report
    for k, v in options.items():
        if k in params or takes_kw:
            kwargs[k] = v
    return loader(Path(root).expanduser() if root is not None else None, seed, **kwargs)


CORPUS_SEED = 0  # the built-in corpus is one fixed data set; the run seed rules split, weights and search


def load_protocol(name: str, root: Optional[Path] = None, seed: int = 0, report=None,
                  protocol: Optional[str] = None,
                  labels: Sequence[str] = ()) -> Tuple[List[Utterance], Dict[str, int], object]:
    """(utterances labelled by `protocol`, or by `labels` (--labels, data/labels.py), what the protocol left
    out and why, the Protocol).

    Files that cannot be used go to `report` (a SkipReport; a private one when None, summarised on the
    console). Raises DataError when no utterance is left."""
    from emodarts.data.labels import parse_labels
    from emodarts.data.protocols import get_protocol
    from emodarts.data.report import SkipReport
    from emodarts.runtime.progress import say

    own = report is None
    report = SkipReport() if own else report
    proto = get_protocol(name, protocol) if name in _CORPORA else None
    if proto is None:
        load_native(name, root, seed)  # raises the unknown-corpus error
    native = load_native(name, root, seed, report, **proto.loader_options)
    utts, excluded = proto.select(native, parse_labels(labels), report)
    if own and report.entries:
        say(f"corpus {name}: " + report.summary())
    if not utts:
        where = f" at {root}" if root is not None else ""
        detail = report.summary() if report.entries else ""
        left = (", ".join(f"{k}: {v}" for k, v in excluded.items())) if excluded else ""
        raise DataError(f"corpus {name!r}{where}: no usable utterances for protocol {proto.name!r}"
                        + (f" ({len(native)} loaded; left out by the protocol: {left})" if native else "")
                        + (f"\n{detail}" if detail else ""))
    return utts, excluded, proto


def load_corpus(name: str, root: Optional[Path] = None, seed: int = 0, report=None,
                protocol: Optional[str] = None, labels: Sequence[str] = ()) -> List[Utterance]:
    """Utterances of corpus `name` (see known_corpora()), labelled by `protocol` (default: the corpus's
    default protocol). Raises DataError for an unknown name, an unusable root, or when nothing is left."""
    return load_protocol(name, root, seed, report, protocol, labels)[0]


def _synthetic(root: Optional[Path], seed: int) -> List[Utterance]:
    from emodarts.data.manifest import read_manifest
    from emodarts.data.synthetic import MANIFEST_NAME, ensure_synthetic_corpus

    if root is not None and root.exists() and not root.is_dir():
        raise DataError(f"synthetic corpus root is not a folder: {root}")
    folder = ensure_synthetic_corpus(root, seed=seed)
    return read_manifest(folder / MANIFEST_NAME)


def _csv(root: Optional[Path], seed: int, report=None) -> List[Utterance]:
    from dataclasses import replace

    from emodarts.data.labels import canonical_label
    from emodarts.data.manifest import read_manifest

    if root is None:
        raise DataError("corpus 'csv' needs a root: a manifest .csv file or a folder holding manifest.csv")
    if root.is_dir():
        path = root / "manifest.csv"
        if not path.is_file():
            raise DataError(f"no manifest.csv in the corpus folder {root}")
    elif not root.exists():
        raise DataError(f"corpus root not found: {root}")
    else:
        path = root
    return [replace(u, label=canonical_label(u.label)) for u in read_manifest(path, labels=None, report=report)]


def _iemocap(root, seed, report=None):
    from emodarts.data.iemocap import load_iemocap

    return load_iemocap(root, seed, report)


def _msp_improv(root, seed, report=None, labels="auto"):
    from emodarts.data.msp_improv import load_msp_improv

    return load_msp_improv(root, seed, report, labels=labels)


def _msp_podcast(root, seed, report=None):
    from emodarts.data.msp_podcast import load_msp_podcast

    return load_msp_podcast(root, seed, report)


register_corpus("synthetic", _synthetic)
register_corpus("csv", _csv)
register_corpus("iemocap", _iemocap)
register_corpus("msp-improv", _msp_improv)
register_corpus("msp-podcast", _msp_podcast)
