"""Where the sources of the compiled parts lie, by one rule for the C++, CUDA and Triton loaders: inside the
package in an installed wheel (setup.py ships csrc/ and kernels/ as emodarts/csrc and emodarts/kernels), else
beside the package folder in a source checkout or an editable install (csrc/ and kernels/ at the root)."""
from pathlib import Path

from emodarts.runtime.errors import BackendError

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # the emodarts/ folder
SOURCE_FOLDERS = ("csrc", "kernels")


def source_dir(name: str) -> Path:
    """The folder of `name` (csrc or kernels): the installed copy first, then the checkout's."""
    if name not in SOURCE_FOLDERS:
        raise ValueError(f"unknown source folder {name!r}; one of {', '.join(SOURCE_FOLDERS)}")
    for root in (PACKAGE_DIR, PACKAGE_DIR.parent):
        if (root / name).is_dir():
            return root / name
    raise BackendError(f"the sources of emodarts' compiled parts ({name}/) are neither in the installed package "
                       f"({PACKAGE_DIR / name}) nor beside it ({PACKAGE_DIR.parent / name}); reinstall emodarts")

