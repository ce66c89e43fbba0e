"""Intra-op CPU threads of a command (`--threads N`).

The default is one thread, measured (bench/bench_threads.py, bench/results/threads_tiny_cpu.json): on a
2-core machine a tiny-preset search step with 2 threads is 1.2-1.3x faster than with 1 when nothing else
runs, but 2.5-3.5x slower than 1 thread as soon as another process keeps one core busy (a parallel region
waits for the worker the OS descheduled, and idle OpenMP workers spin on the core the other job needs).
Neither OMP_WAIT_POLICY=PASSIVE nor a shorter GOMP_SPINCOUNT removes that collapse (both measured), and a
default that followed the machine's load would make the thread count, and so the float rounding, depend
on what else ran. So: one thread unless the user says the cores are theirs.
"""
from typing import Optional

import torch

DEFAULT_THREADS = 1


def apply_threads(n: Optional[int]) -> int:
    """Set torch's intra-op threads to `n` (None: DEFAULT_THREADS); returns the count used."""
    count = n if n else DEFAULT_THREADS
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    torch.set_num_threads(count)
    return count
