"""Corpus -> speaker-independent split -> cached features -> tensors for the search and final training."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from emodarts.data import Utterance
from emodarts.data.counts import class_list
from emodarts.data.protocols import Protocol
from emodarts.data.registry import CORPUS_SEED
from emodarts.data.splits import Split, speaker_split
from emodarts.engine.config import RunConfig
from emodarts.engine.run_data import RunData, build_run_data, split_summary
from emodarts.runtime.errors import DataError
from emodarts.runtime.progress import say

# class_list (data/protocols.py) and split_summary (run_data.py) are also offered here, their former home
__all__ = ["CORPUS_SEED", "prepare_data", "class_list", "split_summary"]


def corpus_features(corpus: str, root: Optional[Path], protocol: Optional[str], feature_cfg, cache_dir: Optional[Path],
                    progress: bool, report, workers: int = 1, extractor: str = "auto",
                    device: Optional[str] = None,
                    labels: Sequence[str] = ()) -> Tuple[List[Utterance], Dict[str, int], Protocol, object]:
    """Corpus -> the protocol's utterances -> their features (extracted, or reused from the cache): the first
    steps of every command that reads data (prepare_data here, cv.load_protocol_data). Returns the usable
    utterances (those with features), the protocol's exclusions per reason, the protocol and the FeatureSet.
    Unusable files (and, with `labels`, those of no class) go to `report`."""
    from emodarts.data.registry import load_protocol
    from emodarts.features import build_features, default_cache_dir

    utts, excluded, proto = load_protocol(corpus, root, seed=CORPUS_SEED, report=report, protocol=protocol,
                                          labels=labels)
    features = build_features(utts, feature_cfg, cache_dir or default_cache_dir(), progress=progress, report=report,
                              workers=workers, extractor=extractor, device=device)
    return list(features.utterances), excluded, proto, features


def prepare_data(cfg: RunConfig, progress: bool = True, cache_dir: Optional[Path] = None,
                 protocol: Optional[str] = None, report_dir: Optional[Path] = None,
                 run_dir: Optional[Path] = None, resuming: bool = False) -> RunData:
    """Corpus -> features -> one split -> tensors.

    Without a protocol (and no `cfg.protocol`), the split is speaker_split(seed) over the corpus's default
    protocol's utterances; with one, it is fold `cfg.fold` (0 unless the run is a fold of `cv`) of that
    protocol (data/protocols.py). The search data (the training speakers' utterances) is cut into the weight
    and alpha parts by `cfg.search.alpha_split` (data/splits.py: search_halves). The classes are those of
    `cfg.labels`, else the protocol's (settle_classes: recorded in `run_dir`'s config.json by a new run,
    checked against it by a resumed one). Files that cannot be used are left out, summarised on the console
    and listed in skipped_files.csv/json in `report_dir` (default `run_dir`, else the feature cache entry)."""
    from emodarts.data.report import SkipReport
    from emodarts.features import run_feature_config

    protocol = protocol or getattr(cfg, "protocol", None) or None
    report = SkipReport()
    utts, _, proto, features = corpus_features(cfg.corpus, Path(cfg.root) if cfg.root else None, protocol,
                                               run_feature_config(cfg), cache_dir, progress, report,
                                               labels=cfg.labels)
    report_dir = report_dir if report_dir is not None else run_dir
    if report.entries:
        where = Path(report_dir) if report_dir is not None else features.path
        report.write(where)
        say(report.summary(where))
    if not utts:
        raise DataError(f"corpus {cfg.corpus!r} has no usable utterances")
    from emodarts.data.labels import parse_labels

    classes = settle_classes(class_list(utts, parse_labels(cfg.labels)), bool(cfg.labels), run_dir, resuming)
    fold = getattr(cfg, "fold", 0)
    split = _run_split(utts, cfg.seed, proto if protocol else None, fold)
    data = build_run_data(features, split, classes, cfg.seed, cfg.search.alpha_split,
                          where=f" of fold {fold} of protocol {proto.name}" if protocol else "")
    counts = {name: len(part) for name, part in (("train", split.train), ("dev", split.dev), ("test", split.test))}
    say(f"corpus {cfg.corpus}: {len(utts)} utterances, classes {', '.join(classes)}; "
                  f"speakers train/dev/test {len(set(u.speaker for u in split.train))}/"
                  f"{len(set(u.speaker for u in split.dev))}/{len(set(u.speaker for u in split.test))}; "
                  f"utterances {counts}; features {features.shape[1]}x{features.shape[2]}"
                  + (f"; protocol {proto.name} fold {fold}" if protocol else ""))
    return data


def settle_classes(classes: List[str], labelled: bool, run_dir: Optional[Path], resuming: bool) -> List[str]:
    """The run's classes, given those its data yields (data/counts.py: class_list; `labelled`: chosen by
    --labels). A new run records them in RUN_DIR/config.json; a resumed (or evaluated) one must find those it
    recorded (a DataError when the corpus now gives others), and a run of a version that recorded none keeps
    that version's order (engine/legacy.py)."""
    from emodarts.engine.config import record_classes, recorded_classes
    from emodarts.engine.legacy import legacy_class_order
    from emodarts.runtime.distributed import info

    if run_dir is None:
        return classes
    if not resuming:
        if info().is_main:
            record_classes(run_dir, classes)
        return classes
    recorded = recorded_classes(run_dir)
    if recorded is None:
        return classes if labelled else legacy_class_order(classes)
    if recorded != classes:
        raise DataError(f"{Path(run_dir) / 'config.json'} records the classes {', '.join(recorded)}; the corpus "
                        f"now gives {', '.join(classes)} (was the corpus changed?)")
    return recorded


def _run_split(utts: List[Utterance], seed: int, proto: Optional[Protocol], fold: int) -> Split:
    """Fold `fold` of the named protocol `proto`, or, when the run names none, speaker_split(seed) (a fold
    other than 0 needs a protocol: only `cv` runs have one)."""
    if proto is not None:
        folds = proto.make_folds(utts, seed)
        if not 0 <= fold < len(folds):
            raise DataError(f"protocol {proto.name} has folds 0..{len(folds) - 1}; the run asks for fold {fold}")
        return folds[fold].split
    if fold:
        raise DataError(f"fold {fold} needs a protocol; the run has none (`cv` records the protocol of its folds)")
    return speaker_split(utts, seed)
