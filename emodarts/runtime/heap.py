"""The process heap of a CPU run (EMODARTS_HEAP=steady|default, read by the CLI): glibc hands large freed
blocks back to the system and serves the next large allocation with fresh pages, so an eager step that frees and re-allocates the same
activations every iteration pays a page fault per 4 KB each time (the mixed-sum benchmark measured up to
14,000 faults per call). `keep_freed_memory()` tells glibc to keep freed memory for reuse instead."""
import ctypes
import os
import sys

HEAP_MODES = ("steady", "default")
DEFAULT_HEAP = "steady"  # measured on whole search steps (README, "Threads and heap")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # blocks up to 32 MB come from the reusable heap, larger ones are mapped


def keep_freed_memory() -> bool:
    """Keep freed memory in the process (no trimming; blocks <= 32 MB from the heap, not fresh mmaps), so
    that a freed activation's pages are reused instead of faulted in again. Process-wide; the resident size
    then stays at its high-water mark. False where there is no glibc mallopt (other platforms)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)) == 1
        return ok and libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD_BYTES)) == 1
    except (OSError, AttributeError):
        return False


def apply_heap(mode: str) -> bool:
    """Apply a `--heap` mode; returns whether the heap is steady."""
    if mode not in HEAP_MODES:
        raise ValueError(f"unknown heap mode {mode!r}; choose one of {', '.join(HEAP_MODES)}")
    return keep_freed_memory() if mode == "steady" else False


def heap_mode() -> str:
    """The CLI's heap mode: EMODARTS_HEAP (steady or default), else DEFAULT_HEAP."""
    mode = os.environ.get("EMODARTS_HEAP", DEFAULT_HEAP)
    if mode not in HEAP_MODES:
        raise ValueError(f"EMODARTS_HEAP={mode!r}: choose one of {', '.join(HEAP_MODES)}")
    return mode
