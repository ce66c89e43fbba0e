"""Progress bars (tqdm) for epochs and batches, the lines a run says, and its run.log.

Every line goes to the console through tqdm (so the bars stay intact) and to the `emodarts` logger of the
standard `logging` module, which writes nothing until `run_log` gives it a file: RUN_DIR/run.log, with a
time on each line, also taking every Python warning while the run works. Bar redraws never reach it."""
import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator

LOGGER = logging.getLogger("emodarts")
LOGGER.addHandler(logging.NullHandler())  # no file yet: nothing (not logging's last-resort stderr printer)
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def progress_bar(items: Iterable, enabled: bool, **kwargs) -> Iterable:
    """A tqdm bar over `items` (only on rank 0 of a data-parallel run)."""
    from emodarts.runtime.distributed import info

    if not enabled or not info().is_main:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, dynamic_ncols=True, **kwargs)


def say(line: str) -> None:
    """Print one summary line without breaking the progress bars, and log it (only on rank 0)."""
    _emit(line, logging.INFO, sys.stdout)


def warn(line: str) -> None:
    """A warning line: on stderr without breaking the progress bars, and in run.log (only on rank 0)."""
    _emit(line, logging.WARNING, sys.stderr)


def log_only(line: str, level: int = logging.ERROR) -> None:
    """A line for run.log alone (the console shows it otherwise, e.g. the CLI's error line)."""
    LOGGER.log(level, line)


def _emit(line: str, level: int, stream) -> None:
    from emodarts.runtime.distributed import info

    if not info().is_main:
        return
    from tqdm.auto import tqdm

    tqdm.write(line, file=stream)
    LOGGER.log(level, line)


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """While the block runs, append every line said, and every warning, to `path` (one per line, with its
    time). Nested: a cv fold's run.log beside the whole run's. Only rank 0 writes."""
    from emodarts.runtime.distributed import info

    if not info().is_main:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    warnings_logger = logging.getLogger("py.warnings")
    LOGGER.addHandler(handler)
    warnings_logger.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        warnings_logger.removeHandler(handler)
        if not any(isinstance(h, logging.FileHandler) for h in warnings_logger.handlers):
            logging.captureWarnings(False)
        handler.close()


__all__ = ["LOGGER", "progress_bar", "say", "warn", "log_only", "run_log"]
