"""Every Triton kernel launch the ops make, compiled for Hopper (sm_90) on a machine without a GPU.

Run as a script (without TRITON_INTERPRET): the kernel modules are loaded as the ops load them, their kernels
are replaced by recorders, and the ops' entry points are driven over the cases below (every dtype, candidate
count, chunking, stride, layout, shared/per-candidate input and 64-bit indexing they handle). Each distinct
launch (kernel, argument types, constexpr values, num_warps) is then compiled by triton.compile for
GPUTarget("cuda", 90, 32). The interpreter does not type-check as the compiler does; this does.
Prints one JSON line: {"kernels": {name: launches compiled}, "failed": [...]}. The suite drives every
combination in float32 and the other dtypes at the largest candidate count; `--full` drives all of them in
every dtype (176 launches, about 4 minutes on 2 cores).
"""
import itertools
import json
import multiprocessing
import os
import re
import sys

import torch

DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32"}


def arg_type(value):
    """Triton's signature string of a runtime argument (tuples nest)."""
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    if isinstance(value, tuple):
        return tuple(arg_type(v) for v in value)
    raise TypeError(f"no Triton type for {type(value)}")


class Recorder:
    """Stands in for a JITFunction: `kernel[grid](*args, **kwargs)` records the launch instead of running it."""

    def __init__(self, fn, launches):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.fn, args, kwargs))
        return launch


def key_of(fn, args, kwargs):
    """(signature, constexprs, options) of one launch, hashable."""
    names = fn.arg_names
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in names))
    sig, consts = [], []
    for i, (name, param) in enumerate(zip(names, fn.params)):
        value = values[name]
        if param.is_constexpr:
            if isinstance(value, tuple):
                sig.append((name, ("constexpr",) * len(value)))
                consts += [((i, j), v) for j, v in enumerate(value)]
            else:
                sig.append((name, "constexpr"))
                consts.append(((i,), value))
        else:
            sig.append((name, arg_type(value)))
    return tuple(sig), tuple(consts), options


def drive_mixed_sum(km, full: bool):
    """The mixed sum's forward and backward over its layouts, dtypes and chunkings."""
    cases = [(torch.float32, k) for k in (1, 3, 8, 11)]
    cases += [(dt, k) for dt in (torch.bfloat16, torch.float16) for k in ((1, 3, 8, 11) if full else (3, 11))]
    for dtype, k in cases:
        ys = [torch.randn(2, 3, 4, 5, dtype=dtype) for _ in range(k)]
        ys[0] = torch.randn(2, 3, 5, 4, dtype=dtype).transpose(2, 3)  # one strided input
        w = torch.rand(k)
        km.forward(ys, w)
        km.backward(torch.randn(2, 3, 5, 4, dtype=dtype).transpose(2, 3), ys, w)  # strided grad_out
        flat = [torch.randn(2, 3, 4, 5, dtype=dtype) for _ in range(k)]
        km.forward(flat, w)
        km.backward(torch.randn(2, 3, 4, 5, dtype=dtype), flat, w)
    limit, km.IDX64_LIMIT = km.IDX64_LIMIT, 64  # the 64-bit index path on a small tensor
    try:
        ys = [torch.randn(2, 3, 4, 5) for _ in range(3)]
        km.forward(ys, torch.rand(3))
        km.backward(torch.randn(2, 3, 4, 5), ys, torch.rand(3))
    finally:
        km.IDX64_LIMIT = limit


def drive_multi_depthwise(kd, full: bool):
    """The multi-depthwise op's three directions over its dtypes, candidate mixes, strides and inputs."""
    ks_ds = [(3, 1), (5, 1), (3, 2), (5, 2)]
    cases = list(itertools.product((torch.float32,), (1, 2), (1, 4, 10), (True, False)))
    others = (torch.bfloat16, torch.float16, torch.float64)
    cases += list(itertools.product(others, (1, 2), (1, 4, 10), (True, False)) if full
                  else itertools.product(others, (2,), (10,), (True, False)))
    for dtype, stride, n, shared in cases:
        ks = [ks_ds[i % 4][0] for i in range(n)]
        ds = [ks_ds[i % 4][1] for i in range(n)]
        xs = [torch.randn(2, 3, 7, 9, dtype=dtype) for _ in range(1 if shared else n)]
        ws = [torch.randn(3, 1, k, k, dtype=dtype) for k in ks]
        outs = kd.forward(xs, ws, ks, ds, stride, dtype)
        grads = [torch.randn_like(o) for o in outs]
        kd.backward_input(grads, ws, ks, ds, stride, xs[0].shape, [x.dtype for x in xs], shared)
        kd.backward_weight(grads, xs, ks, ds, stride, [w.dtype for w in ws])
    limit, kd.IDX64_LIMIT = kd.IDX64_LIMIT, 64
    try:
        xs, ws = [torch.randn(2, 3, 7, 9)], [torch.randn(3, 1, 3, 3)]
        outs = kd.forward(xs, ws, [3], [1], 1, torch.float32)
        kd.backward_input(outs, ws, [3], [1], 1, xs[0].shape, [torch.float32], True)
        kd.backward_weight(outs, xs, [3], [1], 1, [torch.float32])
    finally:
        kd.IDX64_LIMIT = limit


def main() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    full = "--full" in sys.argv
    from emodarts.ops.compiled.triton import triton_kernels

    launches = []
    modules = {"mixed_sum": drive_mixed_sum, "multi_depthwise": drive_multi_depthwise}
    for name, drive in modules.items():
        module = triton_kernels(name, "the sm_90 compile check")
        module.INTERPRET = True  # the entry points' CPU-tensor guard; nothing runs: the kernels only record
        for attr in dir(module):
            obj = getattr(module, attr)
            if type(obj).__name__ == "JITFunction" and attr.endswith("_kernel"):
                _KERNELS[obj.__name__] = obj
                setattr(module, attr, Recorder(obj, launches))
        drive(module, full)
    unique = {}
    for fn, args, kwargs in launches:
        unique.setdefault((fn.__name__, key_of(fn, args, kwargs)), fn)
    jobs = [(fn, key) for (_, key), fn in unique.items()]
    done, failed = {}, []
    # compiles are CPU-bound and independent: one worker per core (fork keeps the loaded kernels)
    with multiprocessing.get_context("fork").Pool(max(1, min(4, os.cpu_count() or 1))) as pool:
        for name, error in pool.imap_unordered(_compile, [(fn.__name__, key) for fn, key in jobs]):
            if error:
                failed.append(error)
            else:
                done[name] = done.get(name, 0) + 1
    print(json.dumps({"kernels": done, "failed": failed, "launches": len(launches)}))


_KERNELS = {}  # kernel name -> JITFunction, filled before the pool forks


def _compile(job):
    """(kernel name, None) when the launch compiles for sm_90, else (name, what failed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    name, (sig, consts, options) = job
    fn = _KERNELS[name]
    try:
        kernel = compile(ASTSource(fn, dict(sig), dict(consts)), target=GPUTarget("cuda", 90, 32),
                         options=dict(options))
    except Exception as exc:  # reported, with the launch, for the test to show
        return name, f"{name} {dict(sig)} {dict(consts)}: {str(exc)[-600:]}"
    idx64 = dict(consts).get((fn.arg_names.index("IDX64"),)) if "IDX64" in fn.arg_names else None
    narrow = narrow_program_id_uses(kernel.asm["ttir"]) if idx64 else []
    if narrow:
        return name, f"{name} {dict(consts)}: the 64-bit path computes with the 32-bit program id: {narrow[:3]}"
    return name, None


def narrow_program_id_uses(ttir: str) -> list:
    """The TTIR lines that use axis 0's program id other than by widening it to 64 bits (arith.extsi): on the
    64-bit index path (IDX64) every product of it must be computed in 64 bits."""
    bad = []
    for pid in re.findall(r"(%[\w.]+) = tt.get_program_id x : i32", ttir):
        use = re.compile(re.escape(pid) + r"(?![\w.])")
        bad += [line.strip() for line in ttir.splitlines()
                if use.search(line) and "tt.get_program_id" not in line and "arith.extsi" not in line]
    return bad


if __name__ == "__main__":
    sys.exit(main())
