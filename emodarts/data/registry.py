"""Corpus names -> loaders that return utterance lists.

Each loader is `loader(root: Path | None, seed: int) -> list[Utterance]`. Add one with
`register_corpus(name, loader)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..errors import DataError
from . import Utterance

Loader = Callable[[Optional[Path], int], List[Utterance]]
_CORPORA: Dict[str, Loader] = {}


def register_corpus(name: str, loader: Loader) -> None:
    _CORPORA[name] = loader


def known_corpora() -> List[str]:
    return sorted(_CORPORA)


def load_corpus(name: str, root: Optional[Path] = None, seed: int = 0) -> List[Utterance]:
    """Utterances of corpus `name` (see known_corpora()). Raises DataError for an unknown name or an
    unusable root."""
    try:
        loader = _CORPORA[name]
    except KeyError:
        raise DataError(f"unknown corpus {name!r}; known corpora: {', '.join(known_corpora())}") from None
    return loader(Path(root).expanduser() if root is not None else None, seed)


def _synthetic(root: Optional[Path], seed: int) -> List[Utterance]:
    from .manifest import read_manifest
    from .synthetic import MANIFEST_NAME, ensure_synthetic_corpus

    if root is not None and root.exists() and not root.is_dir():
        raise DataError(f"synthetic corpus root is not a folder: {root}")
    folder = ensure_synthetic_corpus(root, seed=seed)
    return read_manifest(folder / MANIFEST_NAME)


def _csv(root: Optional[Path], seed: int) -> List[Utterance]:
    from .manifest import read_manifest

    if root is None:
        raise DataError("corpus 'csv' needs a root: a manifest .csv file or a folder holding manifest.csv")
    if root.is_dir():
        path = root / "manifest.csv"
        if not path.is_file():
            raise DataError(f"no manifest.csv in the corpus folder {root}")
        return read_manifest(path)
    if not root.exists():
        raise DataError(f"corpus root not found: {root}")
    return read_manifest(root)


register_corpus("synthetic", _synthetic)
register_corpus("csv", _csv)
