"""Progress bars (tqdm) for epochs and batches, and one summary line per epoch."""
from typing import Iterable


def progress_bar(items: Iterable, enabled: bool, **kwargs) -> Iterable:
    """A tqdm bar over `items` (only on rank 0 of a data-parallel run)."""
    from emodarts.runtime.distributed import info

    if not enabled or not info().is_main:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, dynamic_ncols=True, **kwargs)


def say(line: str) -> None:
    """Print one summary line without breaking the progress bars (only on rank 0)."""
    from emodarts.runtime.distributed import info

    if not info().is_main:
        return
    from tqdm.auto import tqdm

    tqdm.write(line)
