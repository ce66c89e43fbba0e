"""Progress bars (tqdm) for epochs and batches, and one summary line per epoch."""
from typing import Iterable


def progress_bar(items: Iterable, enabled: bool, **kwargs) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, dynamic_ncols=True, **kwargs)


def say(line: str) -> None:
    """Print one summary line without breaking the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(line)
