"""The run folder of a command (search, train, run, cv): opened new or resumed, made only once the checks
passed, and removed again when a new run fails before its first checkpoint (so the same --out can be
retried). Shared by commands.py and corpus.py."""
import contextlib
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Set, Tuple

from emodarts.cli.options import (
    CONFIG_NAME,
    RESUME_MAY_CHANGE,
    apply_threads,
    backend_of,
    check_backend,
    check_corpus_names,
    refuse_resume_conflicts,
)
from emodarts.engine.config import (
    CLASSES_KEY,
    RunConfig,
    load_config,
    recorded_classes,
    with_changes,
    with_overrides,
)
from emodarts.runtime.distributed import info
from emodarts.runtime.errors import EmodartsError
from emodarts.runtime.files import atomic_write_json
from emodarts.runtime.progress import log_only, run_log, say

RUN_LOG = "run.log"  # every line the run said, with times, and its warnings (runtime/progress.py)

# Files that show a run got further than its configuration: with none of them, a failed new run's folder
# is removed again (so the same --out can be retried).
STARTED_MARKERS = ("checkpoint.pt", "train_checkpoint.pt", "model.pt", "metrics.json")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C inside a run folder: says which folder, and whether it was kept (it has a checkpoint)."""

    def __init__(self, run_dir: Path, kept: bool):
        super().__init__(str(run_dir))
        self.run_dir, self.kept = run_dir, kept


def start_run(command: str, build: Callable[[], RunConfig], out: Optional[Path], resume: Optional[Path], device: str,
              fused: bool, threads: Optional[int], changes: dict,
              may_change: Iterable[str] = RESUME_MAY_CHANGE,
              refuse: Optional[Callable[[], None]] = None) -> Tuple[RunConfig, Path, bool]:
    """The start every run command (search, train, run, cv) shares, all before any data is read: threads set,
    options that --resume does not take refused (then `refuse`, the command's own refusals), and for a new run
    the configuration built (`build`) and its corpus and protocol names checked; then the run opened (its
    folder is made by run_folder) and the backend checked. Returns (config, run_dir, resuming)."""
    apply_threads(threads)
    refuse_resume_conflicts(resume, may_change)
    if refuse is not None:
        refuse()
    cfg = None
    if resume is None:
        cfg = build()  # the corpus, protocol and device may come from a config file
        check_corpus_names(cfg.corpus, cfg.protocol or None)
        device = cfg.device
    cfg, run_dir, resuming = open_run(command, cfg, out, resume, device, fused, changes, create=False)
    check_backend(cfg)
    return cfg, run_dir, resuming


def open_run(command: str, cfg: Optional[RunConfig], out: Optional[Path], resume: Optional[Path], device: str,
             fused: bool, changes: Optional[dict] = None, create: bool = True) -> Tuple[RunConfig, Path, bool]:
    """Return (config, run_dir, resuming). A new run never overwrites an existing one; with create=False
    its folder is not made yet (run_folder makes it once the checks passed). A resumed run's config.json
    takes `changes` (see resume_changes). Under torchrun the process joins its group here (and takes its
    own GPU); only rank 0 writes the run folder."""
    from emodarts.ops.backend import check_device
    from emodarts.runtime.distributed import init_from_env

    check_device(device)
    _, device = init_from_env(device)
    if resume is not None:
        return _resumed_config(Path(resume), device, fused, changes or {}), Path(resume), True
    cfg = with_overrides(cfg, device=device)
    run_dir = Path(out) if out else Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / CONFIG_NAME).exists():
        raise EmodartsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose "
                            "another --out")
    if create:
        _create_run_dir(cfg, run_dir)
    return cfg, run_dir, False


def _resumed_config(run_dir: Path, device: str, fused: bool, changes: dict) -> RunConfig:
    """RUN_DIR/config.json with the honoured command-line changes written back (so a second resume keeps
    them), then this process's device and backend."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise EmodartsError(f"{path}: no run to resume (config.json is missing)")
    stored = load_config(path)
    cfg = with_changes(stored, changes)
    if cfg != stored and info().is_main:
        classes = recorded_classes(run_dir)
        atomic_write_json(path, {**cfg.to_dict(), **({CLASSES_KEY: classes} if classes is not None else {})})
    return with_overrides(cfg, device=device, backend=backend_of(True) if fused else cfg.backend)


def _create_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    from emodarts.runtime.distributed import barrier

    barrier()
    if info().is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_NAME, cfg.to_dict())
    barrier()


def _started(run_dir: Path) -> bool:
    """Whether the run got further than its configuration (a checkpoint, a model, metrics; in any fold)."""
    return any(next(run_dir.rglob(name), None) is not None for name in STARTED_MARKERS)


def _discard_unstarted(run_dir: Path, before: Optional[Set[str]]) -> bool:
    """Remove what a new run put in `run_dir` when it never got to a checkpoint; entries that were there
    before (a folder given with --out) stay, and so does a skipped-files report (it says why the data did
    not do; without config.json the folder no longer blocks a retry). Returns whether the run was removed."""
    from emodarts.data.report import REPORT_NAME

    if not info().is_main or not run_dir.is_dir() or _started(run_dir):
        return False
    for entry in run_dir.iterdir():
        if entry.name.startswith(REPORT_NAME + "."):
            continue
        if before is None or entry.name not in before:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if before is None and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return True


@contextlib.contextmanager
def run_folder(cfg: RunConfig, run_dir: Path, resuming: bool) -> Iterator[Path]:
    """The run folder for the command's work. A new run's folder is made here, after every check that
    needs no data; if the work then fails (an error, Ctrl-C) before the run's first checkpoint, the folder
    is removed again, so that the same --out can be retried. A resumed folder is never removed."""
    before = None if resuming or not run_dir.exists() else {p.name for p in run_dir.iterdir()}
    if not resuming:
        _create_run_dir(cfg, run_dir)
    with run_log(run_dir / RUN_LOG):
        say(f"run folder: {run_dir}" + (" (resumed)" if resuming else ""))
        try:
            yield run_dir
        except KeyboardInterrupt:
            log_only("interrupted")
            removed = not resuming and _discard_unstarted(run_dir, before)
            raise RunInterrupted(run_dir, kept=not removed) from None
        except Exception as exc:
            log_only(f"error: {exc}")
            if not resuming:
                _discard_unstarted(run_dir, before)
            raise


def with_device(cfg: RunConfig, device: str) -> RunConfig:
    """`cfg` on `device` (checked; under torchrun this process's own GPU)."""
    from emodarts.ops.backend import check_device
    from emodarts.runtime.distributed import init_from_env

    check_device(device)
    return with_overrides(cfg, device=init_from_env(device)[1])
