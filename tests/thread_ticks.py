"""Which threads of this process did work: CPU clock ticks per thread from /proc (Linux), for the tests that
check a kernel call is spread over the intra-op threads."""
import os
from typing import Callable, Dict, List, Tuple

import torch


def thread_cpu_ticks() -> Dict[str, int]:
    """{thread id: user + system clock ticks} of this process."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks


def busy_threads(before: Dict[str, int], after: Dict[str, int], min_ticks: int = 2) -> List[str]:
    """The threads that accrued at least `min_ticks` ticks between two snapshots."""
    return [tid for tid, t in after.items() if t - before.get(tid, 0) >= min_ticks]


def threads_busy_during(warm_up: Callable[[], object], work: Callable[[], object]) -> Tuple[List[str], List[int]]:
    """(busy threads, ticks per thread) while `work` runs on two intra-op threads, after one `warm_up` call (the
    team's threads exist from there on); the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        warm_up()
        before = thread_cpu_ticks()
        work()
        after = thread_cpu_ticks()
    finally:
        torch.set_num_threads(threads)
    return busy_threads(before, after), [t - before.get(tid, 0) for tid, t in after.items()]
