"""The extension's one rule for spreading a call over the intra-op threads (csrc/cpu_common.h,
parallel_grain_bytes): a tiny-preset call (maps of 32 x 4 x 20 x 47, under 1 MB each) is split over two threads
by every CNN kernel, which measured a tiny search step 1.1x faster than the older 1-4 MB grains; and
EMODARTS_CPU_GRAIN_BYTES overrides the default."""
import os
import subprocess
import sys
import time

import pytest
import torch
from thread_ticks import threads_busy_during

from emodarts.ops import batch_norms, mixed_sum, multi_depthwise, offset_grids, pointwise, pools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GRAIN = 1 << 18


@pytest.fixture(scope="module")
def ops():
    for module in (batch_norms, multi_depthwise, offset_grids, pointwise, pools):
        module.ops()
    mixed_sum.cpp_ops()
    return torch.ops.emodarts


def _tiny_calls(o):
    """One call of each CPU kernel at the tiny preset's sizes (the first cell's maps, four candidates)."""
    torch.manual_seed(0)
    shape = (32, 4, 20, 47)
    xs = [torch.randn(shape) for _ in range(4)]
    ws = [torch.randn(4, 4) for _ in range(4)]
    dws = [torch.randn(4, 1, 3, 3) for _ in range(4)]
    stats = ([torch.zeros(4) for _ in xs], [torch.ones(4) for _ in xs], [torch.zeros((), dtype=torch.long) for _ in xs])
    alpha = torch.randn(1, 5)
    wide = torch.cat(xs, 1)
    return {
        "pointwise_fwd": lambda: o.pointwise_fwd(xs, ws),
        "multi_bn_fwd": lambda: o.multi_bn_fwd(xs, *stats, [0.1] * 4, [1] * 4, 1e-5),
        "multi_dw_fwd": lambda: o.multi_dw_fwd(xs, dws, [1] * 4, 1),
        "pool3x3_fwd": lambda: o.pool3x3_fwd(xs[0], 1),
        "mixed_sum_fwd": lambda: o.mixed_sum_fwd(xs, alpha, [1, 2, 3, 4]),
        "offset_grids_fwd": lambda: o.offset_grids_fwd(wide),
    }


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux /proc and two CPUs")
@pytest.mark.parametrize("name", ["pointwise_fwd", "multi_bn_fwd", "multi_dw_fwd", "pool3x3_fwd", "mixed_sum_fwd",
                                  "offset_grids_fwd"])
def test_tiny_preset_calls_use_two_threads(ops, name):
    """With two intra-op threads, a call as small as the tiny preset's does work on both (parallel_for hands
    each thread a fixed share, so both accrue CPU time even on a loaded machine)."""
    info = ops.pool3x3_cpu_info()
    if "threads=openmp" not in info and "threads=aten-native" not in info:
        pytest.skip(f"this torch build has no intra-op thread pool the extension can use: {info}")
    if os.environ.get("EMODARTS_CPU_GRAIN_BYTES"):
        pytest.skip("EMODARTS_CPU_GRAIN_BYTES is set in this environment: the default grain is not in force")
    call = _tiny_calls(ops)[name]
    def work():
        start = time.perf_counter()
        while time.perf_counter() - start < 0.2:
            call()

    busy, ticks = threads_busy_during(call, work)
    assert len(busy) >= 2, f"{name}, {info}: CPU ticks per thread {ticks}"


def test_grain_default_and_override(ops):
    """The info string reports the grain in force: the default here, the environment's in a fresh process."""
    if not os.environ.get("EMODARTS_CPU_GRAIN_BYTES"):
        assert f"grain_bytes={DEFAULT_GRAIN}" in ops.pool3x3_cpu_info()
    script = "import torch; from emodarts.ops import pools; print(pools.ops().pool3x3_cpu_info())"
    env = dict(os.environ, EMODARTS_CPU_GRAIN_BYTES="12345",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "grain_bytes=12345" in out.stdout
