"""Every Triton kernel launch the ops make, compiled for Hopper (sm_90) without a GPU (tests/triton_launches.py):
the interpreter that runs the kernels in the other tests does not type-check as the compiler does."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"_mixed_sum_fwd_kernel", "_mixed_sum_bwd_kernel", "_multi_dw_fwd_kernel", "_multi_dw_bwd_x_kernel",
           "_multi_dw_bwd_w_kernel"}


def test_every_launch_compiles_for_sm90():
    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"this triton has no ASTSource/GPUTarget API to compile without a GPU: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_launches.py")], env=env, capture_output=True,
                         text=True, timeout=900, cwd=ROOT)
    if run.returncode != 0 and "ptxas" in run.stderr and "not found" in run.stderr:
        pytest.skip("this triton has no ptxas for an offline compile")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["failed"] == [], "\n".join(got["failed"])
    assert set(got["kernels"]) == KERNELS, got["kernels"]
    assert sum(got["kernels"].values()) >= 60, got  # the dtypes x counts x layouts the driver covers


def test_recorder_signature_of_a_launch():
    """The launch key: tensors as pointer types, ints by width, tuples nested, constexpr tuples by path."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from triton_launches import arg_type

    assert arg_type(torch.zeros(1, dtype=torch.bfloat16)) == "*bf16"
    assert arg_type((torch.zeros(1), (3, 2**40))) == ("*fp32", ("i32", "i64"))


def test_the_64_bit_check_reads_program_id_uses():
    """On the 64-bit index path the axis-0 program id may only be widened (arith.extsi) before any product:
    a 32-bit product of it overflows past 2**31 elements (the compile test applies this to every IDX64 launch)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from triton_launches import narrow_program_id_uses

    wide = ("%pid = tt.get_program_id x : i32 loc(#loc1)\n"
            "%0 = arith.extsi %pid : i32 to i64 loc(#loc2)\n"
            "%1 = arith.muli %0, %c8_i64 : i64 loc(#loc3)\n"
            "%pid_0 = tt.get_program_id y : i32 loc(#loc4)\n"
            "%2 = arith.cmpi eq, %pid_0, %c0_i32 : i32 loc(#loc5)\n")
    assert narrow_program_id_uses(wide) == []
    narrow = wide + "%3 = arith.muli %pid, %c8_i32 : i32 loc(#loc6)\n"
    assert narrow_program_id_uses(narrow) == ["%3 = arith.muli %pid, %c8_i32 : i32 loc(#loc6)"]
