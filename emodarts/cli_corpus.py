"""Corpus tooling commands (`features`, `cv`), registered on the `emodarts` group by cli.py."""


def register(cli, **shared) -> None:
    """Add this module's commands to `cli`; `shared` holds cli.py's option decorators and helpers."""
