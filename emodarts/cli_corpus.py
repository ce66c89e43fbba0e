"""Corpus tooling commands (`features`, `cv`), registered on the `emodarts` group by cli.py."""
import sys
from pathlib import Path

import click

_CORPUS_HELP = ("Corpus: synthetic (built in), iemocap, msp-improv, msp-podcast, or csv (a manifest with "
                "path,label,speaker[,utt_id,session,split]).")
_PROTOCOL_HELP = ("Evaluation protocol (default: the corpus's). iemocap: standard, paper-code; msp-improv: "
                  "sessions, paper-code; msp-podcast: official, speakers, official-8class, speakers-8class; "
                  "synthetic/csv: speakers, sessions; csv: split.")


def _check_backend(cfg) -> None:
    from .ops import backend

    if hasattr(backend, "check_backend"):
        backend.check_backend(cfg.backend, cfg.device)
    else:  # pragma: no cover
        backend.get_backend(cfg.backend)


def _cv_epochs(resume, epochs, train_epochs) -> dict:
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


def register(cli, **shared) -> None:
    """Add this module's commands to `cli`; `shared` holds cli.py's option decorators and helpers."""
    common = shared["common"]
    model_options = shared["model_options"]
    friendly_errors = shared["friendly_errors"]
    build_config = shared["build_config"]
    open_run = shared["open_run"]
    run_folder = shared["run_folder"]
    refuse_resume_conflicts = shared["refuse_resume_conflicts"]
    resume_changes = shared["resume_changes"]
    read_genotype = shared["read_genotype"]
    genotype_shape = shared["genotype_shape"]
    fit_genotype = shared["fit_genotype"]
    apply_threads = shared["apply_threads"]
    aux_option = shared["aux_option"]
    refuse_given = shared["refuse_given"]
    search_only = shared["search_only"]
    resume_may_change = (*shared["resume_may_change"], "folds", "workers")

    from .features import BACKENDS, FEATURE_PRESETS

    @cli.command()
    @click.option("--corpus", default="synthetic", show_default=True, help=_CORPUS_HELP)
    @click.option("--root", type=click.Path(path_type=Path), default=None,
                  help="Corpus folder (IEMOCAP_full_release, MSP-IMPROV, MSP-Podcast) or manifest file (csv).")
    @click.option("--preset", type=click.Choice(sorted(FEATURE_PRESETS)), default="tiny", show_default=True,
                  help="Feature preset: tiny (20x47) or paper (128x128, the published preparation).")
    @click.option("--protocol", default=None, help=_PROTOCOL_HELP)
    @click.option("--workers", type=int, default=1, show_default=True,
                  help="Extraction processes (librosa); reader threads (torchaudio).")
    @click.option("--backend", type=click.Choice(BACKENDS), default="librosa", show_default=True,
                  help="librosa (reference) or torchaudio (batched, on the GPU when present; same features "
                       "within the tolerance stated in docs/corpora.md).")
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
    @friendly_errors
    def features(corpus, root, preset, protocol, workers, backend, device, cache_dir, seed, progress, min_duration):
        """Extract (or reuse) the feature cache of a corpus under a protocol; print the fold counts.

        Resumable: an interrupted extraction continues where it stopped when the same command runs again.
        Later `search`, `run` and `cv` runs with the same corpus, protocol and preset reuse the cache."""
        from .cv import load_protocol_data
        from .data.protocols import format_counts, save_counts
        from .data.report import SkipReport
        from .features import default_cache_dir

        report = SkipReport()
        cache_dir = cache_dir or default_cache_dir()
        try:
            data = load_protocol_data(corpus, root, preset, protocol, seed, cache_dir=cache_dir, progress=progress,
                                      report=report, workers=workers, backend=backend, device=device,
                                      min_duration=min_duration)
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
                   f"{data.features.shape[2]} in {entry} (backend {data.features.backend}); "
                   f"counts in {entry / (name + '.md')}")

    @cli.command()
    @common
    @model_options
    @aux_option
    @click.option("--genotype", "genotype_path", type=click.Path(path_type=Path), default=None,
                  help="Train and evaluate this genotype on every fold instead of searching one per fold.")
    @click.option("--folds", "folds", default=None, help="Only these folds, e.g. 0,2 (default: all).")
    @click.option("--workers", type=int, default=1, show_default=True,
                  help="Feature extraction processes when the cache is not there yet.")
    @friendly_errors
    def cv(corpus, root, preset, seed, out, resume, epochs, batch_size, device, fused, progress, threads, protocol,
           genotype_path, folds, workers, **model):
        """Cross-validate over the folds of a protocol: per fold search + train + evaluate (or train +
        evaluate --genotype) in RUN_DIR/fold_<k>/, then UA, WA and macro-F1 per fold with mean and std in
        RUN_DIR/cv_results.json and .md. --epochs: search epochs (with --genotype: training epochs);
        --train-epochs: final-training epochs. --resume RUN_DIR skips finished folds (--folds and --workers
        may be given with it). With --genotype, the CNN and sequential node counts and the sequential space
        come from the genotype."""
        from .cv import format_results, run_cv
        from .data.protocols import get_protocol
        from .data.registry import known_corpora
        from .errors import DataError

        apply_threads(threads)
        refuse_resume_conflicts(resume, resume_may_change)
        genotype, cfg = None, None
        if genotype_path is not None:
            refuse_given(search_only, "search settings, but `cv --genotype` trains the given genotype on every fold "
                                      "without a search (drop them, or drop --genotype)")
        if resume is None:  # check the names and the genotype before a run folder is made
            if corpus not in known_corpora():
                raise DataError(f"unknown corpus {corpus!r}; known corpora: {', '.join(known_corpora())}")
            get_protocol(corpus, protocol)
            if genotype_path is not None:
                genotype = read_genotype(genotype_path)
                train_epochs = model.pop("train_epochs")
                cfg = build_config("train", corpus, root, preset, seed, train_epochs or epochs, batch_size, device,
                                   fused, protocol=protocol, **genotype_shape(genotype, model))
                cfg = fit_genotype(cfg, genotype, genotype_path, model.get("seq_candidates"))
            else:
                cfg = build_config("run", corpus, root, preset, seed, epochs, batch_size, device, fused,
                                   protocol=protocol, **model)
        changes = resume_changes(_cv_epochs(resume, epochs, model.get("train_epochs")))
        cfg, run_dir, resuming = open_run("cv", cfg, out, resume, device, fused, changes, create=False)
        _check_backend(cfg)
        with run_folder(cfg, run_dir, resuming):
            results = run_cv(cfg, run_dir, protocol=protocol, genotype=genotype, folds=folds, resume=resuming,
                             progress=progress, workers=workers)
        click.echo(format_results(results))
        click.echo(f"results: {run_dir / 'cv_results.md'} and {run_dir / 'cv_results.json'}")

    cli.add_command(features)
    cli.add_command(cv)
