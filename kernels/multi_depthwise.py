"""Triton multi-depthwise kernels: the depthwise convolutions of up to MAX_SLOTS candidates in one launch per
direction (forward, input gradient, weight gradient).

Contract (the same as emodarts.ops.multi_depthwise.multi_depthwise_reference): candidate i convolves xs[i] (or
one shared x) of shape (B, C, H, W) with weights[i] (C, 1, k, k), k in {3, 5}, dilation d in {1, 2}, padding
d * (k - 1) // 2 and one stride s in {1, 2} for all, giving (B, C, ceil(H / s), ceil(W / s)).

Launch structure: a program per (batch * channel plane, pixel tile) on axis 0 and per candidate slot on
axis 1. Each slot has its own pointers, strides (tuples of scalar arguments: nothing is built on the host and
copied to the device, so a call never synchronises and can be captured in a CUDA graph) and its kernel size and
dilation (tuples of tl.constexpr); the program branches on its slot, whose body is written once. Taps are
unrolled with tl.static_range over constexpr bounds (runtime loop bounds break the triton 3.6 interpreter) and there is no autotuning, so the
same code runs on CUDA and under TRITON_INTERPRET=1 on the CPU (set before this module is imported).

- forward: each program writes one tile of one candidate's output (fp32 accumulation, fp64 for fp64 inputs).
- input gradient: a gather over the taps that reach each input pixel (no atomics). With a shared input every
  candidate's contribution is summed in the same program (axis 1 has size 1); with per-candidate inputs each
  slot writes its own gradient.
- weight gradient: each program writes k*k partial sums over its tile (fp32/fp64) into a scratch buffer;
  the caller reduces them with one torch sum per candidate. No atomics: the result is bitwise reproducible
  for a given launch configuration (tile size), which depends only on the shapes.
Inputs are read through their strides (non-contiguous inputs are not copied); weights must be contiguous.
"""
import os
from typing import List, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_SLOTS = 8  # candidates per launch; more run in chunks
# Offsets at or beyond this use 64-bit index arithmetic. Module-level so that tests can lower it.
IDX64_LIMIT = 2**31 - 1
SUPPORTED = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# --------------------------------------------------------------------------------------------------
# per-slot bodies


@triton.jit
def _acc_t(v, F64: tl.constexpr):
    """v in the accumulation type: fp64 for fp64 inputs, fp32 otherwise (bf16/fp16 included)."""
    if F64:
        r = v.to(tl.float64)
    else:
        r = v.to(tl.float32)
    return r


@triton.jit
def _fwd_slot(x_ptr, w_ptr, o_ptr, sxb, sxc, sxh, sxw, C, H, W, Ho, Wo, N, offs,
              STRIDE: tl.constexpr, K: tl.constexpr, D: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    """Output elements offs (flat index over (B, C, Ho, Wo)) of one candidate."""
    mask = offs < N
    ow = offs % Wo
    q = offs // Wo
    oh = q % Ho
    q = q // Ho
    ch = q % C
    b = q // C
    pad = D * (K - 1) // 2
    xb = x_ptr + b * sxb + ch * sxc
    wb = w_ptr + ch * (K * K)
    acc = _acc_t(tl.zeros([BLOCK], dtype=tl.float32), F64)
    for i in tl.static_range(K):
        ih = oh * STRIDE - pad + i * D
        mh = mask & (ih >= 0) & (ih < H)
        for j in tl.static_range(K):
            iw = ow * STRIDE - pad + j * D
            m = mh & (iw >= 0) & (iw < W)
            xv = tl.load(xb + ih * sxh + iw * sxw, mask=m, other=0.0)
            wv = tl.load(wb + (i * K + j))
            acc += xv.to(acc.dtype) * wv.to(acc.dtype)
    tl.store(o_ptr + offs, acc.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gx_slot(acc, g_ptr, w_ptr, sgb, sgc, sgh, sgw, b, ch, Ho, Wo, ih, iw, mask,
             STRIDE: tl.constexpr, K: tl.constexpr, D: tl.constexpr, F64: tl.constexpr):
    """acc + sum over the taps (i, j) that reach input pixel (ih, iw) of grad_out[oh, ow] * w[i, j], where
    oh * STRIDE = ih + pad - i * D (the forward read in reverse)."""
    pad = D * (K - 1) // 2
    gb = g_ptr + b * sgb + ch * sgc
    wb = w_ptr + ch * (K * K)
    for i in tl.static_range(K):
        th = ih + pad - i * D
        oh = th // STRIDE
        mh = mask & (th >= 0) & (oh < Ho)
        if STRIDE > 1:
            mh = mh & (th % STRIDE == 0)
        for j in tl.static_range(K):
            tw = iw + pad - j * D
            ow = tw // STRIDE
            m = mh & (tw >= 0) & (ow < Wo)
            if STRIDE > 1:
                m = m & (tw % STRIDE == 0)
            gv = tl.load(gb + oh * sgh + ow * sgw, mask=m, other=0.0)
            wv = tl.load(wb + (i * K + j))
            acc += gv.to(acc.dtype) * wv.to(acc.dtype)
    return acc


@triton.jit
def _gw_slot(x_ptr, g_ptr, part_ptr, sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw, ch, H, W, Ho, Wo, N, offs,
             tile_row, STRIDE: tl.constexpr, K: tl.constexpr, D: tl.constexpr, F64: tl.constexpr):
    """part[tile_row * K * K + i * K + j] = sum over this tile (flat index offs over (B, Ho, Wo) of channel
    ch) of grad_out[b, ch, oh, ow] * x[b, ch, ih, iw]."""
    mask = offs < N
    ow = offs % Wo
    q = offs // Wo
    oh = q % Ho
    b = q // Ho
    pad = D * (K - 1) // 2
    xb = x_ptr + b * sxb + ch * sxc
    g = _acc_t(tl.load(g_ptr + b * sgb + ch * sgc + oh * sgh + ow * sgw, mask=mask, other=0.0), F64)
    pb = part_ptr + tile_row * (K * K)
    for i in tl.static_range(K):
        ih = oh * STRIDE - pad + i * D
        mh = mask & (ih >= 0) & (ih < H)
        for j in tl.static_range(K):
            iw = ow * STRIDE - pad + j * D
            m = mh & (iw >= 0) & (iw < W)
            xv = tl.load(xb + ih * sxh + iw * sxw, mask=m, other=0.0).to(g.dtype)
            tl.store(pb + (i * K + j), tl.sum(g * xv, axis=0))


@triton.jit
def _offs(BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """This program's tile of a flat index (int64 for large tensors)."""
    pid = tl.program_id(0)
    if IDX64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


# --------------------------------------------------------------------------------------------------
# kernels: one slot written once, the candidates' tensors, strides and kernel sizes passed as tuples (triton 3.6
# and 3.8 take tuples of pointers, of scalars and of constexprs as kernel arguments, under the interpreter and
# compiled for sm_90: tests/test_triton_compile.py); tl.static_range(NUM) unrolls the slots at compile time


@triton.jit(do_not_specialize=["sxs", "C", "H", "W", "Ho", "Wo", "N"])
def _multi_dw_fwd_kernel(xs, ws, outs, sxs, C, H, W, Ho, Wo, N, NUM: tl.constexpr, STRIDE: tl.constexpr,
                         KS: tl.constexpr, DS: tl.constexpr, F64: tl.constexpr, IDX64: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Tiles of the flat (B, C, Ho, Wo) output; axis 1: the candidate slot."""
    offs = _offs(BLOCK, IDX64)
    slot = tl.program_id(1)
    for s in tl.static_range(NUM):
        if slot == s:
            sx = sxs[s]
            _fwd_slot(xs[s], ws[s], outs[s], sx[0], sx[1], sx[2], sx[3], C, H, W, Ho, Wo, N, offs, STRIDE, KS[s],
                      DS[s], F64, BLOCK)


@triton.jit
def _gx_store(gx_ptr, acc, offs, mask, READ_ACC: tl.constexpr):
    ptr = gx_ptr + offs
    if READ_ACC:
        acc += tl.load(ptr, mask=mask, other=0.0).to(acc.dtype)
    tl.store(ptr, acc.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["sgs", "C", "H", "W", "Ho", "Wo", "N"])
def _multi_dw_bwd_x_kernel(gs, ws, gxs, sgs, C, H, W, Ho, Wo, N, NUM: tl.constexpr, STRIDE: tl.constexpr,
                           KS: tl.constexpr, DS: tl.constexpr, SHARED: tl.constexpr, READ_ACC: tl.constexpr,
                           F64: tl.constexpr, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """Tiles of the flat (B, C, H, W) input gradient. SHARED: one program sums all slots into gxs[0] (READ_ACC
    adds its previous contents: the running sum of an earlier chunk). Otherwise slot k writes gxs[k]."""
    offs = _offs(BLOCK, IDX64)
    mask = offs < N
    iw = offs % W
    q = offs // W
    ih = q % H
    q = q // H
    ch = q % C
    b = q // C
    zero = _acc_t(tl.zeros([BLOCK], dtype=tl.float32), F64)
    if SHARED:
        acc = zero
        for s in tl.static_range(NUM):
            sg = sgs[s]
            acc = _gx_slot(acc, gs[s], ws[s], sg[0], sg[1], sg[2], sg[3], b, ch, Ho, Wo, ih, iw, mask, STRIDE, KS[s],
                           DS[s], F64)
        _gx_store(gxs[0], acc, offs, mask, READ_ACC)
    else:
        slot = tl.program_id(1)
        for s in tl.static_range(NUM):
            if slot == s:
                sg = sgs[s]
                acc = _gx_slot(zero, gs[s], ws[s], sg[0], sg[1], sg[2], sg[3], b, ch, Ho, Wo, ih, iw, mask, STRIDE,
                               KS[s], DS[s], F64)
                _gx_store(gxs[s], acc, offs, mask, False)


@triton.jit(do_not_specialize=["sxs", "sgs", "H", "W", "Ho", "Wo", "N", "NTILES", "ps"])
def _multi_dw_bwd_w_kernel(xs, gs, part_ptr, ps, sxs, sgs, H, W, Ho, Wo, N, NTILES, NUM: tl.constexpr,
                           STRIDE: tl.constexpr, KS: tl.constexpr, DS: tl.constexpr, F64: tl.constexpr,
                           IDX64: tl.constexpr, BLOCK: tl.constexpr):
    """Axis 0: (channel, tile of the flat (B, Ho, Wo) positions of that channel); slot k writes its k*k
    partial sums at part_ptr + ps[k], row channel * NTILES + tile."""
    row = tl.program_id(0)
    if IDX64:  # every product below (channel, tile, partial-sum row) in 64 bits
        row = row.to(tl.int64)
    ch = row // NTILES
    t = row % NTILES
    offs = t * BLOCK + tl.arange(0, BLOCK)
    slot = tl.program_id(1)
    for s in tl.static_range(NUM):
        if slot == s:
            sx = sxs[s]
            sg = sgs[s]
            _gw_slot(xs[s], gs[s], part_ptr + ps[s], sx[0], sx[1], sx[2], sx[3], sg[0], sg[1], sg[2], sg[3], ch,
                     H, W, Ho, Wo, N, offs, row, STRIDE, KS[s], DS[s], F64)


# --------------------------------------------------------------------------------------------------
# launch planning and entry points (plain tensors in, tensors out; autograd lives in emodarts/ops/multi_depthwise.py)


def _block(n: int) -> Tuple[int, int]:
    """(BLOCK, num_warps) for n elements. The interpreter runs one program at a time and pays per op, not
    per element: one big tile is fastest there. On a GPU: up to 1024 elements per program (8 per thread)."""
    cap = 16384 if INTERPRET else 1024
    block = min(cap, max(64, triton.next_power_of_2(n)))
    return block, 4 if block >= 512 else 2


def _chunks(n: int) -> List[List[int]]:
    return [list(range(s, min(s + MAX_SLOTS, n))) for s in range(0, n, MAX_SLOTS)]


def _pick(items: Sequence, idx: List[int]) -> tuple:
    """The chunk's items, a tuple (one kernel argument)."""
    return tuple(items[i] for i in idx)


def _strides(ts: Sequence[Tensor], idx: List[int]) -> tuple:
    return tuple(tuple(ts[i].stride()) for i in idx)


def _reach(t: Tensor) -> int:
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1


def _idx64(ts: Sequence[Tensor], block: int) -> bool:
    return max(max(_reach(t), t.numel()) for t in ts) + block >= IDX64_LIMIT


def out_size(h: int, stride: int) -> int:
    return (h - 1) // stride + 1


def forward(xs: Sequence[Tensor], ws: Sequence[Tensor], ks: Sequence[int], ds: Sequence[int], stride: int,
            out_dtype: torch.dtype) -> List[Tensor]:
    """Outputs of every candidate, contiguous, in out_dtype. xs: one shared input or one per candidate; ws
    contiguous (C, 1, k, k). The caller runs this under the inputs' device."""
    n = len(ws)
    shared = len(xs) == 1
    b, c, h, w = xs[0].shape
    ho, wo = out_size(h, stride), out_size(w, stride)
    outs = [torch.empty(b, c, ho, wo, dtype=out_dtype, device=xs[0].device) for _ in range(n)]
    if b * c * ho * wo == 0:
        return outs
    xsel = [xs[0]] * n if shared else list(xs)
    total = b * c * ho * wo
    block, warps = _block(total)
    f64 = out_dtype == torch.float64
    idx64 = _idx64(list(xs) + outs, block)
    for idx in _chunks(n):
        _multi_dw_fwd_kernel[(triton.cdiv(total, block), len(idx))](
            _pick(xsel, idx), _pick(ws, idx), _pick(outs, idx), _strides(xsel, idx), c, h, w, ho, wo, total,
            NUM=len(idx), STRIDE=stride, KS=_pick(ks, idx), DS=_pick(ds, idx), F64=f64, IDX64=idx64, BLOCK=block,
            num_warps=warps,
        )
    return outs


def backward_input(grads: Sequence[Tensor], ws: Sequence[Tensor], ks: Sequence[int], ds: Sequence[int],
                   stride: int, x_shape: Sequence[int], x_dtypes: Sequence[torch.dtype],
                   shared: bool) -> List[Tensor]:
    """grad of the shared input (one tensor, every candidate's contribution summed in registers) or of each
    candidate's input. grads: one per candidate, any strides. No atomics: deterministic."""
    n = len(ws)
    b, c, h, w = x_shape
    ho, wo = out_size(h, stride), out_size(w, stride)
    dev = grads[0].device
    f64 = x_dtypes[0] == torch.float64
    chunks = _chunks(n)
    if shared:
        # several chunks carry the running sum in fp32 (fp64) when the input's dtype is narrower
        work = x_dtypes[0] if len(chunks) == 1 or x_dtypes[0] in (torch.float32, torch.float64) else torch.float32
        gxs = [torch.empty(b, c, h, w, dtype=work, device=dev)]
    else:
        gxs = [torch.empty(b, c, h, w, dtype=dt, device=dev) for dt in x_dtypes]
    if b * c * h * w == 0:
        return [g.to(x_dtypes[0]) for g in gxs] if shared else gxs
    total = b * c * h * w
    block, warps = _block(total)
    idx64 = _idx64(list(grads) + gxs, block)
    gsel = gxs if not shared else [gxs[0]] * n
    for ci, idx in enumerate(chunks):
        _multi_dw_bwd_x_kernel[(triton.cdiv(total, block), 1 if shared else len(idx))](
            _pick(grads, idx), _pick(ws, idx), _pick(gsel, idx), _strides(grads, idx), c, h, w, ho, wo, total,
            NUM=len(idx), STRIDE=stride, KS=_pick(ks, idx), DS=_pick(ds, idx), SHARED=shared,
            READ_ACC=shared and ci > 0, F64=f64, IDX64=idx64, BLOCK=block, num_warps=warps,
        )
    if shared and gxs[0].dtype != x_dtypes[0]:
        gxs = [gxs[0].to(x_dtypes[0])]
    return gxs


def backward_weight(grads: Sequence[Tensor], xs: Sequence[Tensor], ks: Sequence[int], ds: Sequence[int],
                    stride: int, w_dtypes: Sequence[torch.dtype]) -> List[Tensor]:
    """grad of every weight (C, 1, k, k): per-tile partial sums (fp32, fp64 for fp64 inputs) written by one
    launch per chunk of MAX_SLOTS candidates (a program per channel and tile of its (B, Ho, Wo) positions),
    then summed over the tiles by torch (a fixed order: the
    result is bitwise reproducible for given shapes)."""
    n = len(ks)
    shared = len(xs) == 1
    xsel = [xs[0]] * n if shared else list(xs)
    b, c, h, w = xs[0].shape
    ho, wo = out_size(h, stride), out_size(w, stride)
    dev = xs[0].device
    f64 = xs[0].dtype == torch.float64
    acc_t = torch.float64 if f64 else torch.float32
    if b * c * ho * wo == 0:
        return [torch.zeros(c, 1, k, k, dtype=dt, device=dev) for k, dt in zip(ks, w_dtypes)]
    per_channel = b * ho * wo
    block, warps = _block(per_channel)
    ntiles = triton.cdiv(per_channel, block)
    rows = c * ntiles
    offsets = [0]
    for k in ks:
        offsets.append(offsets[-1] + rows * k * k)
    part = torch.empty(offsets[-1], dtype=acc_t, device=dev)
    idx64 = _idx64(list(xs) + list(grads), block) or offsets[-1] >= IDX64_LIMIT
    for idx in _chunks(n):
        _multi_dw_bwd_w_kernel[(rows, len(idx))](
            _pick(xsel, idx), _pick(grads, idx), part, _pick(offsets, idx), _strides(xsel, idx),
            _strides(grads, idx), h, w, ho, wo, per_channel, ntiles,
            NUM=len(idx), STRIDE=stride, KS=_pick(ks, idx), DS=_pick(ds, idx), F64=f64, IDX64=idx64, BLOCK=block,
            num_warps=warps,
        )
    out = []
    for i, (k, dt) in enumerate(zip(ks, w_dtypes)):
        p = part[offsets[i]:offsets[i + 1]].view(c, ntiles, k * k)
        out.append(p.sum(dim=1).view(c, 1, k, k).to(dt))
    return out


__all__ = ["forward", "backward_input", "backward_weight", "out_size", "MAX_SLOTS", "INTERPRET", "IDX64_LIMIT",
           "SUPPORTED"]
