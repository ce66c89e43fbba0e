"""Cross-validation over the folds of a protocol (`emodarts cv`).

For every fold: search a genotype, train its network (the epoch chosen on the fold's dev speakers) and
evaluate it once on the fold's test speakers - or, with a given genotype, train and evaluate it - in
RUN_DIR/fold_<k>/. Then a table of UA, WA and macro-F1 per fold with their mean and standard deviation,
saved as RUN_DIR/cv_results.json and cv_results.md. A fold whose metrics.json exists is finished; with
--resume, finished folds are skipped and an unfinished one continues from its last checkpoint.

RUN_DIR also holds config.json, cv.json (protocol, folds, mode), fold_counts.json/.md (utterances per class,
fold and part) and, when files were left out, skipped_files.csv/.json. Each fold_<k>/ holds the config.json of
that fold (the run's, with the protocol's name and `fold: k`), so that `emodarts evaluate RUN_DIR/fold_<k>`,
`predict` and `report` work on it as on any run folder (a fold folder of an older version, without its own
config.json, is read through engine/legacy.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from emodarts.data import Utterance
from emodarts.engine.config import CLASSES_KEY, RunConfig, with_overrides
from emodarts.engine.pipeline import settle_classes
from emodarts.engine.resume import open_for_resume
from emodarts.engine.run_data import RunData, build_run_data
from emodarts.runtime.errors import DataError, EmodartsError
from emodarts.runtime.files import atomic_write_json, atomic_write_text
from emodarts.runtime.progress import run_log, say

CV_STATE = "cv.json"
RESULTS = "cv_results"


@dataclass
class ProtocolData:
    """A corpus under a protocol: the usable utterances, their features, classes, folds and counts."""

    protocol: object  # data.protocols.Protocol
    utts: List[Utterance]
    features: object  # features.FeatureSet
    classes: List[str]
    folds: list  # data.protocols.Fold
    counts: dict
    report: object  # data.report.SkipReport
    excluded: Dict[str, int]


def load_protocol_data(corpus: str, root: Optional[Path], preset: str, protocol: Optional[str], seed: int,
                       cache_dir: Optional[Path] = None, progress: bool = True, report=None, workers: int = 1,
                       extractor: str = "auto", device: Optional[str] = None,
                       min_duration: Optional[float] = None, features: str = "mfcc",
                       labels: Sequence[str] = ()) -> ProtocolData:
    """Load the corpus, apply the protocol (or `labels`, data/labels.py), extract (or reuse) the features,
    build the folds and count. Unusable files (clips under `min_duration` seconds included; with `labels`,
    those of no class) go to `report` (a new SkipReport when None); DataError only when nothing is left."""
    from emodarts.data.counts import class_list, fold_counts
    from emodarts.data.labels import parse_labels
    from emodarts.data.report import SkipReport
    from emodarts.engine.pipeline import corpus_features
    from emodarts.features import feature_config

    report = report if report is not None else SkipReport()
    usable, excluded, proto, feature_set = corpus_features(corpus, root, protocol,
                                                           feature_config(preset, min_duration, features), cache_dir,
                                                           progress, report, workers, extractor, device, labels)
    report.raise_if_empty(len(usable), f"corpus {corpus!r}")
    classes = class_list(usable, parse_labels(labels))
    folds = proto.make_folds(usable, seed)
    counts = fold_counts(folds, classes, usable, excluded, proto, skipped=len(report.skipped))
    return ProtocolData(proto, usable, feature_set, classes, folds, counts, report, excluded)


def prepare_fold_data(cfg: RunConfig, fold, features, classes: Sequence[str], with_search: bool = True) -> RunData:
    """Tensors of one fold: the search halves (from the fold's training speakers), train, dev and test.
    With with_search=False the search halves are left empty (training a given genotype needs none)."""
    return build_run_data(features, fold.split, classes, cfg.seed, cfg.search.alpha_split, with_search=with_search,
                          where=f" of fold {fold.index} ({fold.name})")


def fold_config(cfg: RunConfig, protocol: str, k: int) -> RunConfig:
    """The configuration of fold k of a cv run: the run's, with the protocol named and the fold recorded."""
    return with_overrides(cfg, protocol=protocol, fold=k)


def parse_folds(text: Optional[str], n_folds: int) -> List[int]:
    """'0,2' -> [0, 2] (None or '' -> every fold). Raises DataError for indices out of range."""
    if not text:
        return list(range(n_folds))
    out = []
    for tok in str(text).replace(" ", "").split(","):
        if not tok:
            continue
        try:
            k = int(tok)
        except ValueError:
            raise DataError(f"--folds: {tok!r} is not a fold number (use e.g. --folds 0,2)") from None
        if not 0 <= k < n_folds:
            raise DataError(f"--folds: fold {k} does not exist; this protocol has folds 0..{n_folds - 1}")
        if k not in out:
            out.append(k)
    return sorted(out)


def summarize(rows: List[dict]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one fold) of UA, WA and macro-F1 over folds."""
    out = {"mean": {}, "std": {}}
    for key in ("ua", "wa", "macro_f1"):
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        out["mean"][key] = float(vals.mean()) if len(vals) else float("nan")
        out["std"][key] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


def format_results(results: dict) -> str:
    """The Markdown table of cv_results.json (values in %)."""
    lines = [f"# Cross-validation: {results['corpus']} / {results['protocol']}", "",
             f"{results.get('description', '')}", "",
             f"mode: {results['mode']}; classes: {', '.join(results['classes'])}; seed {results['seed']}; "
             f"preset {results['preset']}", "",
             "| fold | test speakers | test utterances | UA % | WA % | macro-F1 % |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in results["folds"]:
        spk = r["test_speakers"]
        shown = ", ".join(spk) if len(spk) <= 6 else f"{len(spk)} speakers"
        lines.append(f"| {r['fold']} | {shown} | {r['n_test']} | {100 * r['ua']:.2f} | {100 * r['wa']:.2f} | "
                     f"{100 * r['macro_f1']:.2f} |")
    m, s = results["mean"], results["std"]
    lines.append(f"| mean | | | {100 * m['ua']:.2f} | {100 * m['wa']:.2f} | {100 * m['macro_f1']:.2f} |")
    lines.append(f"| std | | | {100 * s['ua']:.2f} | {100 * s['wa']:.2f} | {100 * s['macro_f1']:.2f} |")
    lines.append("")
    lines.append(f"std: sample standard deviation over the {len(results['folds'])} fold(s) (n - 1). UA: mean "
                 f"per-class recall; WA: accuracy; each over the fold's whole test set, evaluated once with "
                 f"the epoch chosen on the fold's dev speakers.")
    return "\n".join(lines)


def _load_state(run_dir: Path) -> Optional[dict]:
    path = run_dir / CV_STATE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise EmodartsError(f"{path}: not readable ({exc})") from exc


def run_cv(cfg: RunConfig, run_dir: Path, protocol: Optional[str] = None, genotype=None,
           folds: Optional[str] = None, resume: bool = False, progress: bool = True,
           cache_dir: Optional[Path] = None, workers: int = 1, tensorboard: bool = True) -> dict:
    """Cross-validate in `run_dir` (see the module doc). `genotype`: a space.Genotype to train on every fold
    instead of searching one. `folds`: '0,2' for a subset. With `resume`, the protocol, the fold list and the
    genotype come from run_dir/cv.json unless given again. Returns the results dict (cv_results.json)."""
    from emodarts.data.counts import format_counts, save_counts
    from emodarts.engine.evaluation import run_evaluate
    from emodarts.engine.search import run_search
    from emodarts.engine.training import run_train
    from emodarts.model.space import genotype_from_dict, save_genotype

    run_dir = Path(run_dir)
    protocol = protocol or getattr(cfg, "protocol", None) or None
    if resume:  # the top folder's temporary files of interrupted writes (each fold's go when it resumes)
        open_for_resume(run_dir)
    state = _load_state(run_dir) if resume else None
    if state is not None:
        if protocol and protocol != state["protocol"]:
            raise EmodartsError(f"{run_dir} was run with --protocol {state['protocol']}; resume it without "
                                f"--protocol or with the same one")
        protocol = state["protocol"]
        if genotype is None and state.get("genotype"):
            genotype = genotype_from_dict(state["genotype"], where=str(run_dir / CV_STATE))
        folds = folds or ",".join(str(k) for k in state.get("folds", []))

    data = load_protocol_data(cfg.corpus, Path(cfg.root) if cfg.root else None, cfg.preset, protocol, cfg.seed,
                              cache_dir=cache_dir, progress=progress, workers=workers, min_duration=cfg.min_duration,
                              features=cfg.features, labels=cfg.labels)
    data.classes = settle_classes(data.classes, bool(cfg.labels), run_dir, resume)
    proto = data.protocol
    selected = parse_folds(folds, len(data.folds))
    mode = "genotype" if genotype is not None else "search"
    atomic_write_json(run_dir / CV_STATE, {"corpus": cfg.corpus, "protocol": proto.name, "folds": selected,
                                           "mode": mode, "genotype": genotype.to_dict() if genotype else None})
    if genotype is not None:
        save_genotype(genotype, run_dir / "genotype.json")
    save_counts(data.counts, run_dir)
    say(format_counts(data.counts))
    if data.report.entries:
        data.report.write(run_dir)
        say(data.report.summary(run_dir))

    rows = []
    for k in selected:
        fold = data.folds[k]
        fold_dir = run_dir / f"fold_{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        fold_cfg = fold_config(cfg, proto.name, k)
        metrics_path = fold_dir / "metrics.json"
        with run_log(fold_dir / "run.log"):  # the fold's own log; the whole run's takes these lines too
            if resume and metrics_path.is_file():
                metrics = json.loads(metrics_path.read_text())
                say(f"fold {k} ({fold.name}): finished before, UA {metrics['ua']:.4f} (skipped)")
            else:
                say(f"fold {k} ({fold.name}): {len(fold.split.train)} train / {len(fold.split.dev)} dev / "
                    f"{len(fold.split.test)} test utterances")
                sp = fold.speakers()
                atomic_write_json(fold_dir / "fold.json", {"fold": k, "name": fold.name, "speakers": sp,
                                                           "counts": data.counts["folds"][k]["counts"]})
                atomic_write_json(fold_dir / "config.json", {**fold_cfg.to_dict(), CLASSES_KEY: data.classes})
                run_data = prepare_fold_data(fold_cfg, fold, data.features, data.classes, with_search=genotype is None)
                if genotype is None:
                    fold_genotype = run_search(fold_cfg, run_data, fold_dir, resume=resume, progress=progress,
                                               tensorboard=tensorboard)
                else:
                    fold_genotype = genotype
                save_genotype(fold_genotype, fold_dir / "genotype.json")
                run_train(fold_cfg, fold_genotype, run_data, fold_dir, resume=resume, progress=progress,
                          tensorboard=tensorboard)
                metrics = run_evaluate(fold_cfg, run_data, fold_dir)
                del run_data
        row = {"fold": k, "name": fold.name, "test_speakers": fold.test_speakers, "n_test": int(metrics["n"]),
               "ua": float(metrics["ua"]), "wa": float(metrics["wa"]), "macro_f1": float(metrics["macro_f1"]),
               "confusion": metrics["confusion"], "dir": f"fold_{k}"}
        rows.append(row)
        say(f"fold {k}: test UA {row['ua']:.4f}  WA {row['wa']:.4f}  macro-F1 {row['macro_f1']:.4f}")

    results = {"corpus": cfg.corpus, "protocol": proto.name, "description": proto.description,
               "classes": data.classes, "mode": mode, "seed": cfg.seed, "preset": cfg.preset,
               "folds": rows, **summarize(rows), "std_kind": "sample (n-1)"}
    atomic_write_json(run_dir / f"{RESULTS}.json", results)
    atomic_write_text(run_dir / f"{RESULTS}.md", format_results(results) + "\n")
    return results
