"""Triton mixed-sum kernels: out = sum_i w_i * y_i and its one-pass backward.

Contract (docs/architecture.md, "Mixed sum"): the weights w (fp32, one per input, softmax(alpha) gathered by the
caller) are folded into the sum; the forward reads each y once and writes out once, accumulating in fp32;
the backward reads grad_out once per launch and writes every grad_y_i = w_i * g plus per-block partials of
<g, y_i> (reduced here to the dot products, from which the caller builds grad_alpha).

Up to MAX_INPUTS pointers go into one launch; more inputs run in chunks, in place: the fp32 output (or an
fp32 scratch buffer for bf16/fp16 outputs) carries the running sum between chunks. Inputs may have
different dtypes (the output takes the promoted one). Non-contiguous inputs are read through their
strides (see layout.py); a copy happens only when the strides do not collapse to MAX_DIMS dims, and each
copy is counted in COPIES. The strides of the strided inputs (and of grad_out) go to the kernels as scalar
arguments: no stride table is built on the host and copied to the device, so a call never synchronises with
the GPU and can be captured in a CUDA graph.

Device: every allocation and launch runs under the inputs' device (torch.cuda.device_of), not the current
one, so inputs on cuda:1 work whatever the current device is.

On the CPU these kernels run only under the Triton interpreter (TRITON_INTERPRET=1 set before this module
is imported). Loops use tl.static_range over constexpr bounds and there is no autotuning, so the same
code runs under the interpreter of triton 3.6 (the GPU machine) and 3.8.
"""
import contextlib
import os
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from emodarts.runtime.errors import BackendError

from emodarts.ops.layout import is_flat, max_offset, out_strides, plan_strided, result_dtype

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_INPUTS = 8  # pointers per launch
MAX_DIMS = 4  # collapsed dims a strided input may have without being copied
# Offsets at or beyond this use 64-bit index arithmetic (IDX64). A module-level name so that tests can lower it
# and run the int64 path on a small tensor (under the interpreter on the CPU, too).
IDX64_LIMIT = 2**31 - 1
SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)

# Copies of inputs made because their layout could not be read in place (module-level, tests read it).
COPIES = 0


def copy_count() -> int:
    return COPIES


def reset_copy_count() -> None:
    global COPIES
    COPIES = 0


# --------------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _coords(offs, D1, D2, D3):
    c3 = offs % D3
    t = offs // D3
    c2 = t % D2
    t = t // D2
    c1 = t % D1
    c0 = t // D1
    return c0, c1, c2, c3


@triton.jit
def _load_f32(ptr, offs, mask, t0, t1, t2, t3, STRIDED: tl.constexpr, c0, c1, c2, c3):
    """Element j of a flat input (at the output's offset j) or of a strided one (t0..t3: its strides on the
    collapsed dims, passed by value), as fp32."""
    if STRIDED:
        off = c0 * t0 + c1 * t1 + c2 * t2 + c3 * t3
        v = tl.load(ptr + off, mask=mask, other=0.0)
    else:
        v = tl.load(ptr + offs, mask=mask, other=0.0)
    return v.to(tl.float32)


@triton.jit
def _fwd_term(acc, y_ptr, w_ptr, K: tl.constexpr, offs, mask, t0, t1, t2, t3, STRIDED: tl.constexpr,
              c0, c1, c2, c3):
    w = tl.load(w_ptr + K)
    return acc + w * _load_f32(y_ptr, offs, mask, t0, t1, t2, t3, STRIDED, c0, c1, c2, c3)


# The inputs, their strides and whether each is strided go to the kernels as tuples (triton 3.6 and 3.8 take
# tuples of pointers, scalars and constexprs as kernel arguments), so an input slot is written once and
# tl.static_range(NUM) unrolls the slots. The stride tuples are not specialised on their values (Triton would
# otherwise compile one variant per pattern of strides equal to 1 or divisible by 16): one compiled kernel per
# layout kind, not per shape.


@triton.jit
def _offsets(N, D1, D2, D3, HAS_STRIDED: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """This program's flat offsets, their mask and, when some input is strided, their coordinates on the
    collapsed dims."""
    pid = tl.program_id(0)
    if IDX64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    c0 = offs
    c1 = offs
    c2 = offs
    c3 = offs
    if HAS_STRIDED:
        c0, c1, c2, c3 = _coords(offs, D1, D2, D3)
    return offs, offs < N, c0, c1, c2, c3


@triton.jit(do_not_specialize=["strides"])
def _mixed_sum_fwd_kernel(ys, w_ptr, out_ptr, acc_ptr, strides, N, D1, D2, D3, NUM: tl.constexpr,
                          STRIDED: tl.constexpr, HAS_STRIDED: tl.constexpr, READ_ACC: tl.constexpr,
                          WRITE_ACC: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, c0, c1, c2, c3 = _offsets(N, D1, D2, D3, HAS_STRIDED, IDX64, BLOCK)
    if READ_ACC:
        acc = tl.load(acc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in tl.static_range(NUM):
        st = strides[k]
        acc = _fwd_term(acc, ys[k], w_ptr, k, offs, mask, st[0], st[1], st[2], st[3], STRIDED[k], c0, c1, c2, c3)
    if WRITE_ACC:
        tl.store(acc_ptr + offs, acc, mask=mask)
    else:
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_term(g, y_ptr, gy_ptr, w_ptr, part_ptr, K: tl.constexpr, offs, mask, t0, t1, t2, t3,
              STRIDED: tl.constexpr, c0, c1, c2, c3, GRADS: tl.constexpr, DOTS: tl.constexpr):
    if GRADS:  # the input's gradient w_k * g (a weight step's; an alpha step's where no alpha lies upstream)
        w = tl.load(w_ptr + K)
        tl.store(gy_ptr + offs, (w * g).to(gy_ptr.dtype.element_ty), mask=mask)
    if DOTS:  # <g, y_k> for alpha's gradient: only then is y read
        y = _load_f32(y_ptr, offs, mask, t0, t1, t2, t3, STRIDED, c0, c1, c2, c3)
        tl.store(part_ptr + K, tl.sum(g * y, axis=0))


@triton.jit(do_not_specialize=["strides", "g_strides"])
def _mixed_sum_bwd_kernel(g_ptr, ys, gys, w_ptr, part_ptr, strides, g_strides, N, D1, D2, D3, NUM: tl.constexpr,
                          STRIDED: tl.constexpr, G_STRIDED: tl.constexpr, HAS_STRIDED: tl.constexpr,
                          IDX64: tl.constexpr, BLOCK: tl.constexpr, GRADS: tl.constexpr, DOTS: tl.constexpr):
    offs, mask, c0, c1, c2, c3 = _offsets(N, D1, D2, D3, HAS_STRIDED, IDX64, BLOCK)
    g = _load_f32(g_ptr, offs, mask, g_strides[0], g_strides[1], g_strides[2], g_strides[3], G_STRIDED,
                  c0, c1, c2, c3)
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    part = part_ptr + pid * 8
    for k in tl.static_range(NUM):
        st = strides[k]
        _bwd_term(g, ys[k], gys[k], w_ptr, part, k, offs, mask, st[0], st[1], st[2], st[3], STRIDED[k],
                  c0, c1, c2, c3, GRADS, DOTS)


# --------------------------------------------------------------------------------------------------
# launch planning


def _launch_config(n: int) -> Tuple[int, int]:
    """(BLOCK, num_warps). The interpreter runs one program at a time: big blocks are fastest there.
    On a GPU: 1024 elements per program (8 per thread, 128-bit loads), smaller blocks for small tensors
    so that every SM gets work."""
    if INTERPRET:
        return 4096, 4
    block = 1024
    while block > 256 and triton.cdiv(n, block) < 512:
        block //= 2
    return block, 4 if block >= 1024 else 2


def _check(ys: Sequence[Tensor], w: Tensor) -> None:
    if len(ys) == 0:
        raise ValueError("mixed_sum needs at least one input")
    shape = ys[0].shape
    dev = ys[0].device
    for i, y in enumerate(ys):
        if y.shape != shape:
            raise ValueError(f"mixed_sum: input {i} has shape {tuple(y.shape)}, input 0 has {tuple(shape)}")
        if y.device != dev:
            raise ValueError(f"mixed_sum: input {i} is on {y.device}, input 0 on {dev}")
        if y.dtype not in SUPPORTED:
            raise ValueError(f"mixed_sum (Triton): unsupported dtype {y.dtype} (fp32, bf16, fp16)")
    if w.dim() != 1 or w.numel() != len(ys):
        raise ValueError(f"mixed_sum: {len(ys)} inputs but {w.numel()} weights")
    if dev.type == "cpu" and not INTERPRET:
        raise BackendError(
            "the Triton mixed-sum kernel got CPU tensors but the Triton interpreter is off: set "
            "TRITON_INTERPRET=1 before emodarts.kernels.mixed_sum is imported, or use the C++ twin on the CPU"
        )
    if dev.type not in ("cpu", "cuda"):
        raise BackendError(f"the Triton mixed-sum kernel does not run on {dev.type} tensors")


class _Plan:
    """Layout decisions shared by forward and backward: which inputs are strided, their strides on the
    collapsed dims (kernel arguments, see stride_args), 32- or 64-bit indexing."""

    def __init__(self, ys: List[Tensor], ostrides: List[int], g: Tensor = None):
        global COPIES
        sizes = list(ys[0].shape)
        self.ys = list(ys)
        out_contig = all(y.is_contiguous() for y in self.ys)  # then the output is contiguous too
        self.strided = [False if out_contig else not is_flat(y, ostrides) for y in self.ys]
        self.g = g
        self.g_strided = g is not None and not (
            (out_contig and g.is_contiguous()) or is_flat(g, ostrides)
        )
        tensors = [y for y, s in zip(self.ys, self.strided) if s] + ([g] if self.g_strided else [])
        self.dims = [1, 1, 1, 1]
        self.rows = {}
        if tensors:
            dsz, dst = plan_strided(sizes, ostrides, [list(t.stride()) for t in tensors])
            if len(dsz) > MAX_DIMS:
                # cannot walk these strides in 4 dims: copy into the output layout (counted)
                for i, s in enumerate(self.strided):
                    if s:
                        self.ys[i] = _copy_to(self.ys[i], ostrides)
                        COPIES += 1
                        self.strided[i] = False
                if self.g_strided:
                    self.g = _copy_to(g, ostrides)
                    COPIES += 1
                    self.g_strided = False
                tensors = []
            else:
                pad = MAX_DIMS - len(dsz)
                self.dims = [1] * pad + dsz
                j = 0
                for i, s in enumerate(self.strided):
                    if s:
                        self.rows[("y", i)] = [0] * pad + dst[j]
                        j += 1
                if self.g_strided:
                    self.rows[("g", 0)] = [0] * pad + dst[j]
        n = ys[0].numel()
        reach = max([n] + [max_offset(sizes, list(t.stride())) + 1 for t in tensors])
        block, _ = _launch_config(n)
        self.idx64 = reach + block >= IDX64_LIMIT or n + block >= IDX64_LIMIT
        self.has_strided = bool(tensors)

    def stride_args(self, idx: List[int]) -> tuple:
        """The strides of one chunk's inputs on the collapsed dims, a 4-tuple per input (zeros for flat ones).
        Plain Python ints: they travel with the launch, nothing is copied to the device."""
        return tuple(tuple(self.rows[("y", i)]) if self.strided[i] else (0, 0, 0, 0) for i in idx)

    def g_stride_args(self) -> tuple:
        """grad_out's 4 strides (zeros when it is read flat)."""
        return tuple(self.rows[("g", 0)]) if self.g_strided else (0, 0, 0, 0)

    def strided_flags(self, idx: List[int]) -> tuple:
        """Per input of the chunk, whether it is read through its strides (a tuple of constexprs)."""
        return tuple(bool(self.strided[i]) for i in idx)


def _on_device(t: Tensor):
    """Run allocations and launches on `t`'s GPU (Triton launches on the *current* device and its current
    stream): torch.cuda.device_of for CUDA tensors, nothing for CPU tensors (the interpreter)."""
    return torch.cuda.device_of(t) if t.device.type == "cuda" else contextlib.nullcontext()


def _copy_to(t: Tensor, ostrides: List[int]) -> Tensor:
    out = torch.empty_strided(t.shape, ostrides, dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def _chunks(k: int) -> List[List[int]]:
    return [list(range(s, min(s + MAX_INPUTS, k))) for s in range(0, k, MAX_INPUTS)]


# --------------------------------------------------------------------------------------------------
# entry points


def forward(ys: Sequence[Tensor], w: Tensor) -> Tensor:
    """out = sum_i w[i] * ys[i] (fp32 accumulation), out in the layout given by layout.out_strides."""
    _check(ys, w)
    with _on_device(ys[0]):
        return _forward(list(ys), w)


def _forward(ys: List[Tensor], w: Tensor) -> Tensor:
    dev = ys[0].device
    sizes = list(ys[0].shape)
    ostrides = out_strides(ys)
    out = torch.empty_strided(sizes, ostrides, dtype=result_dtype(ys), device=dev)
    n = out.numel()
    if n == 0:
        return out
    w = w.to(device=dev, dtype=torch.float32).contiguous()
    plan = _Plan(ys, ostrides)
    chunks = _chunks(len(ys))
    block, warps = _launch_config(n)
    grid = (triton.cdiv(n, block),)
    multi = len(chunks) > 1
    acc = None
    if multi:
        acc = out if out.dtype == torch.float32 else torch.empty(n, dtype=torch.float32, device=dev)
    for c, idx in enumerate(chunks):
        first, last = c == 0, c == len(chunks) - 1
        read_acc = not first
        write_acc = multi and not last and acc is not out
        _mixed_sum_fwd_kernel[grid](
            tuple(plan.ys[i] for i in idx),
            w[idx[0]:],
            out,
            acc if acc is not None else out,
            plan.stride_args(idx),
            n,
            plan.dims[1],
            plan.dims[2],
            plan.dims[3],
            NUM=len(idx),
            STRIDED=plan.strided_flags(idx),
            HAS_STRIDED=plan.has_strided,
            READ_ACC=read_acc,
            WRITE_ACC=write_acc,
            IDX64=plan.idx64,
            BLOCK=block,
            num_warps=warps,
        )
    return out


def backward(grad_out: Tensor, ys: Sequence[Tensor], w: Tensor, need_grads: bool = True,
             need_dots: bool = True) -> Tuple[Optional[List[Tensor]], Optional[Tensor]]:
    """grad_ys[i] = w[i] * grad_out (in ys[i]'s dtype, the output layout) and dots[i] = <grad_out, ys[i]>
    (fp32), reading grad_out once per chunk of MAX_INPUTS inputs. Only what is needed is computed: without
    need_grads no input gradient is written (None comes back), without need_dots no input is read (None)."""
    _check(ys, w)
    ys = list(ys)
    if grad_out.shape != ys[0].shape or grad_out.device != ys[0].device:
        raise ValueError("mixed_sum backward: grad_out does not match the inputs")
    with _on_device(ys[0]):
        return _backward(grad_out, ys, w, need_grads, need_dots)


def _backward(grad_out: Tensor, ys: List[Tensor], w: Tensor, need_grads: bool,
              need_dots: bool) -> Tuple[Optional[List[Tensor]], Optional[Tensor]]:
    dev = ys[0].device
    sizes = list(ys[0].shape)
    if grad_out.dtype not in SUPPORTED:
        grad_out = grad_out.float()
    ostrides = out_strides(ys)
    grads = [torch.empty_strided(sizes, ostrides, dtype=y.dtype, device=dev) for y in ys] if need_grads else None
    n = grad_out.numel()
    k = len(ys)
    if n == 0 or not (need_grads or need_dots):
        return grads, torch.zeros(k, dtype=torch.float32, device=dev) if need_dots else None
    w = w.to(device=dev, dtype=torch.float32).contiguous()
    plan = _Plan(ys, ostrides, grad_out)
    chunks = _chunks(k)
    block, warps = _launch_config(n)
    nblocks = triton.cdiv(n, block)
    # without dots the partial sums are never written: one placeholder pointer stands in for them
    part = torch.empty((len(chunks), nblocks, MAX_INPUTS) if need_dots else (len(chunks), 1, MAX_INPUTS),
                       dtype=torch.float32, device=dev)
    for c, idx in enumerate(chunks):
        _mixed_sum_bwd_kernel[(nblocks,)](
            plan.g,
            tuple(plan.ys[i] for i in idx),
            tuple((grads if need_grads else plan.ys)[i] for i in idx),  # not written without need_grads
            w[idx[0]:],
            part[c],
            plan.stride_args(idx),
            plan.g_stride_args(),
            n,
            plan.dims[1],
            plan.dims[2],
            plan.dims[3],
            NUM=len(idx),
            STRIDED=plan.strided_flags(idx),
            G_STRIDED=plan.g_strided,
            HAS_STRIDED=plan.has_strided,
            IDX64=plan.idx64,
            BLOCK=block,
            GRADS=need_grads,
            DOTS=need_dots,
            num_warps=warps,
        )
    dots = part.sum(dim=1).reshape(-1)[:k] if need_dots else None
    return grads, dots


# COPIES is read as an attribute of this module (mixed_sum.COPIES or copy_count()), not imported by name.
__all__ = ["forward", "backward", "copy_count", "reset_copy_count", "MAX_INPUTS", "MAX_DIMS", "INTERPRET",
           "IDX64_LIMIT"]
