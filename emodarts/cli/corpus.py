"""Corpus tooling commands (`features`, `cv`); cli.py adds them to the `emodarts` group."""
import sys
from pathlib import Path
from typing import Any, Optional

import click

from emodarts.cli.genotype_input import fit_genotype, genotype_shape, read_genotype
from emodarts.cli.options import (
    FEATURES,
    RESUME_MAY_CHANGE,
    SEARCH_ONLY,
    aux_option,
    build_config,
    common_options,
    friendly_errors,
    model_options,
    parsed_options,
    refuse_given,
    resume_changes,
)
from emodarts.cli.runs import run_folder, start_run
from emodarts.engine.config import RunConfig
from emodarts.features import EXTRACTOR_CHOICES, FEATURE_PRESETS
from emodarts.runtime.progress import say

_CORPUS_HELP = ("Corpus: synthetic (built in), iemocap, msp-improv, msp-podcast, or csv (a manifest with "
                "path,label,speaker[,utt_id,session,split]).")
_PROTOCOL_HELP = ("Evaluation protocol (default: the corpus's). iemocap: standard, paper-code; msp-improv: "
                  "sessions, paper-code; msp-podcast: official, speakers, official-8class, speakers-8class; "
                  "synthetic/csv: speakers, sessions; csv: split.")


# `cv --resume` may also take other folds and another number of extraction processes.
CV_RESUME_MAY_CHANGE = (*RESUME_MAY_CHANGE, "folds", "workers")


def _cv_epochs(resume: Optional[Path], epochs: Optional[int], train_epochs: Optional[int]) -> dict:
    """Epoch counts a resumed cv takes: --epochs are search epochs, or training epochs for a cv of a given
    genotype (cv.json's mode), as when the run began; --train-epochs are training epochs."""
    import json

    genotype_mode = False
    if resume is not None and epochs is not None:
        state = Path(resume) / "cv.json"
        try:
            genotype_mode = json.loads(state.read_text()).get("mode") == "genotype"
        except (OSError, ValueError, AttributeError):
            genotype_mode = False
    if genotype_mode:
        return {"train": train_epochs or epochs}
    return {"search": epochs, "train": train_epochs}


@click.command()
@click.option("--corpus", default="synthetic", show_default=True, help=_CORPUS_HELP)
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Corpus folder (IEMOCAP_full_release, MSP-IMPROV, MSP-Podcast) or manifest file (csv).")
@click.option("--preset", type=click.Choice(sorted(FEATURE_PRESETS)), default="tiny", show_default=True,
              help="Feature preset: tiny (20x47) or paper (128x128, the published preparation).")
@click.option("--protocol", default=None, help=_PROTOCOL_HELP)
@click.option("--workers", type=int, default=1, show_default=True,
              help="Extraction processes (librosa); reader threads (torchaudio).")
@click.option("--backend", "extractor", type=click.Choice(EXTRACTOR_CHOICES), default="auto", show_default=True,
              help="librosa (reference) or torchaudio (batched, on the GPU when present; same features "
                   "within the tolerance stated in docs/corpora.md); auto: librosa when installed, else "
                   "torchaudio.")
@click.option("--device", default="auto", show_default=True,
              help="For --backend torchaudio: auto (cuda when present), cpu, cuda or cuda:N.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache folder (default $EMODARTS_HOME/features or ~/.cache/emodarts/features).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the folds whose counts are printed (the dev speakers; speaker folds).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
@click.option("--min-duration", type=click.FloatRange(min=0), default=None,
              help="Shortest usable clip in seconds; shorter ones are skipped as too short (default 0.25). "
                   "Part of the cache key: give later runs the same value.")
@FEATURES
@click.option("--labels", default=None, metavar="CLASSES",
              help="The classes whose counts are printed, as search/run/cv take them (e.g. neutral,happy=happy+"
                   "excited,sad,angry).")
@friendly_errors
def features(corpus: str, root: Optional[Path], preset: str, protocol: Optional[str], workers: int, extractor: str,
             device: str, cache_dir: Optional[Path], seed: int, progress: bool, min_duration: Optional[float],
             features: Optional[str], labels: Optional[str]) -> None:
    """Extract (or reuse) the feature cache of a corpus under a protocol; print the fold counts.

    Resumable: an interrupted extraction continues where it stopped when the same command runs again.
    Later `search`, `run` and `cv` runs with the same corpus, protocol and preset reuse the cache."""
    from emodarts.data.counts import format_counts, save_counts
    from emodarts.data.labels import split_labels
    from emodarts.data.report import SkipReport
    from emodarts.engine.cv import load_protocol_data
    from emodarts.features import default_cache_dir

    report = SkipReport()
    cache_dir = cache_dir or default_cache_dir()
    try:
        data = load_protocol_data(corpus, root, preset, protocol, seed, cache_dir=cache_dir, progress=progress,
                                  report=report, workers=workers, extractor=extractor, device=device,
                                  min_duration=min_duration, features=features or "mfcc",
                                  labels=split_labels(labels) or ())
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished chunks are kept in {cache_dir}; run the same command again to "
                   f"continue", err=True)
        sys.exit(130)
    except Exception:
        if report.entries:
            where = Path(cache_dir)
            report.write(where)
            click.echo(report.summary(where), err=True)
        raise
    entry = data.features.path
    name = f"fold_counts-{data.protocol.name}"
    save_counts(data.counts, entry, name)
    click.echo(format_counts(data.counts))
    if report.entries:
        report.write(entry)
        click.echo(report.summary(entry))
    click.echo(f"features: {len(data.features)} utterances x {data.features.shape[1]}x"
               f"{data.features.shape[2]} in {entry} (backend {data.features.extractor}); "
               f"counts in {entry / (name + '.md')}")


@click.command()
@common_options
@model_options
@aux_option
@click.option("--genotype", "genotype_path", type=click.Path(path_type=Path), default=None,
              help="Train and evaluate this genotype on every fold instead of searching one per fold.")
@click.option("--folds", "folds", default=None, help="Only these folds, e.g. 0,2 (default: all).")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Feature extraction processes when the cache is not there yet.")
@friendly_errors
def cv(protocol: Optional[str], out: Optional[Path], resume: Optional[Path], epochs: Optional[int],
       train_epochs: Optional[int], device: str, fused: bool, progress: bool, threads: Optional[int],
       genotype_path: Optional[Path], folds: Optional[str], workers: int, seq_candidates: Optional[str],
       tensorboard: bool, **_: Any) -> None:
    """Cross-validate over the folds of a protocol: per fold search + train + evaluate (or train +
    evaluate --genotype) in RUN_DIR/fold_<k>/, then UA, WA and macro-F1 per fold with mean and std in
    RUN_DIR/cv_results.json and .md. --epochs: search epochs (with --genotype: training epochs);
    --train-epochs: final-training epochs. --resume RUN_DIR skips finished folds (--folds and --workers
    may be given with it). With --genotype, the CNN and sequential node counts and the sequential space
    come from the genotype."""
    from emodarts.engine.cv import format_results, run_cv

    def refuse_search_settings() -> None:
        if genotype_path is not None:
            refuse_given(SEARCH_ONLY, "search settings, but `cv --genotype` trains the given genotype on every "
                                      "fold without a search (drop them, or drop --genotype)")

    def build() -> RunConfig:
        nonlocal genotype
        if genotype_path is None:
            return build_config("run", parsed_options())
        genotype = read_genotype(genotype_path)
        options = parsed_options()  # no search: all epochs train
        options.update(epochs=train_epochs or epochs, _explicit=options["_explicit"] | {"epochs"})
        return fit_genotype(build_config("train", genotype_shape(genotype, options)), genotype, genotype_path,
                            seq_candidates)

    genotype = None
    cfg, run_dir, resuming = start_run("cv", build, out, resume, device, fused, threads,
                                       resume_changes(_cv_epochs(resume, epochs, train_epochs)),
                                       CV_RESUME_MAY_CHANGE, refuse_search_settings)
    with run_folder(cfg, run_dir, resuming):
        results = run_cv(cfg, run_dir, protocol=protocol, genotype=genotype, folds=folds, resume=resuming,
                         progress=progress, workers=workers, tensorboard=tensorboard)
        say(format_results(results))
        say(f"results: {run_dir / 'cv_results.md'} and {run_dir / 'cv_results.json'}")
