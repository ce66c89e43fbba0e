"""Corpus -> speaker-independent split -> cached features -> tensors for the search and final training."""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from .config import RunConfig
from .data import EMOTIONS, Utterance
from .errors import DataError
from .progress import say
from .train import RunData, TensorSplit

CORPUS_SEED = 0  # the built-in corpus is one fixed data set; the run seed rules split, weights and search


def class_list(utts: Sequence[Utterance]) -> List[str]:
    """The four emotions in their usual order, then any other label, sorted."""
    present = {u.label for u in utts}
    return [e for e in EMOTIONS if e in present] + sorted(present - set(EMOTIONS))


def _tensors(features, utts: Sequence[Utterance], classes: List[str]) -> TensorSplit:
    index = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(features.take(utts)).unsqueeze(1)
    y = torch.tensor([index[u.label] for u in utts], dtype=torch.int64)
    return TensorSplit(x, y)


def prepare_data(cfg: RunConfig, progress: bool = True, cache_dir: Optional[Path] = None,
                 protocol: Optional[str] = None, report_dir: Optional[Path] = None) -> RunData:
    """Corpus -> features -> one split -> tensors.

    Without a protocol (and no `cfg.protocol`), the split is speaker_split(seed) over the corpus's default
    protocol's utterances; with one, it is fold `cfg.fold` (0 unless the run is a fold of `cv`) of that
    protocol (data/protocols.py). The search data (the training speakers' utterances) is cut into the weight
    and alpha parts by `cfg.search.alpha_split` (data/splits.py: search_halves). Files that cannot
    be used are left out, summarised on the console and listed in skipped_files.csv/json in `report_dir`
    (default: the feature cache entry)."""
    from .data.registry import load_protocol
    from .data.report import SkipReport
    from .data.splits import search_halves, speaker_split
    from .features import FEATURE_PRESETS, build_features, default_cache_dir, feature_config

    if cfg.preset not in FEATURE_PRESETS:
        raise DataError(f"unknown feature preset {cfg.preset!r}; choose one of {', '.join(FEATURE_PRESETS)}")
    protocol = protocol or getattr(cfg, "protocol", None) or None
    report = SkipReport()
    utts, _, proto = load_protocol(cfg.corpus, Path(cfg.root) if cfg.root else None, seed=CORPUS_SEED,
                                   report=report, protocol=protocol)
    features = build_features(utts, feature_config(cfg.preset, cfg.min_duration), cache_dir or default_cache_dir(),
                              progress=progress, report=report)
    utts = list(features.utterances)
    if report.entries:
        where = Path(report_dir) if report_dir is not None else features.path
        report.write(where)
        say(report.summary(where))
    if not utts:
        raise DataError(f"corpus {cfg.corpus!r} has no usable utterances")
    classes = class_list(utts)
    fold = getattr(cfg, "fold", 0)
    if protocol:
        folds = proto.make_folds(utts, cfg.seed)
        if not 0 <= fold < len(folds):
            raise DataError(f"protocol {proto.name} has folds 0..{len(folds) - 1}; the run asks for fold {fold}")
        split = folds[fold].split
    elif fold:
        raise DataError(f"fold {fold} needs a protocol; the run has none (`cv` records the protocol of its folds)")
    else:
        split = speaker_split(utts, cfg.seed)
    w_part, a_part = search_halves(split.train, cfg.seed, alpha_split=cfg.search.alpha_split)
    counts = {name: len(part) for name, part in (("train", split.train), ("dev", split.dev), ("test", split.test))}
    say(f"corpus {cfg.corpus}: {len(utts)} utterances, classes {', '.join(classes)}; "
                  f"speakers train/dev/test {len(set(u.speaker for u in split.train))}/"
                  f"{len(set(u.speaker for u in split.dev))}/{len(set(u.speaker for u in split.test))}; "
                  f"utterances {counts}; features {features.shape[1]}x{features.shape[2]}"
                  + (f"; protocol {proto.name} fold {fold}" if protocol else ""))
    return RunData(
        classes=classes,
        search_w=_tensors(features, w_part, classes),
        search_a=_tensors(features, a_part, classes),
        train=_tensors(features, split.train, classes),
        dev=_tensors(features, split.dev, classes),
        test=_tensors(features, split.test, classes),
    )


def split_summary(data: RunData) -> dict:
    return {name: np.bincount(getattr(data, name).y.numpy(), minlength=len(data.classes)).tolist()
            for name in ("search_w", "search_a", "train", "dev", "test")}
