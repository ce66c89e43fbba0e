"""The multi-depthwise op: the depthwise convolutions of every convolution candidate leaving one state of a CNN
cell. Its home: `multi_depthwise_reference` (one ATen call per candidate), the C++ binding and
`multi_depthwise_fused` (C++ on the CPU), and `multi_depthwise_triton` (Triton on CUDA).

Depthwise convolutions of several candidates, one ATen call each: the reference twin of
emodarts.ops.multi_depthwise.multi_depthwise_fused.

Multi-depthwise convolution: the depthwise convolutions of every convolution candidate leaving one state
of a CNN cell in one call (C++ on the CPU: csrc/multi_depthwise.cpp; Triton on CUDA:
kernels/multi_depthwise.py ), the `--fused` twin of
emodarts.ops.multi_depthwise_reference.

The op reads the state's (shared) input once per channel for all candidates, or takes one input per candidate
(the second halves of the separable convolutions). float32/float64 run as they are; bf16/fp16 run in float32
and come back in their dtype, or in float32 under CPU autocast (emodarts/ops/cpu_amp.py); non-contiguous
inputs are made contiguous once. On CUDA the Triton kernels run in the inputs' dtype (the autocast dtype under
autocast, as cuDNN would) with float32 accumulation; EMODARTS_DW_CUDNN=1 runs the reference's cuDNN calls
instead (to tell a kernel fault from anything else on a GPU).

Multi-depthwise convolution in Triton (kernels/multi_depthwise.py): the CUDA twin of
emodarts.ops.multi_depthwise_reference, with its signature and semantics.

`multi_depthwise_triton(xs, weights, dilations, stride)` is the entry point (multi_depthwise_fused calls it for CUDA
tensors). xs is one input shared by every candidate or one input per candidate, (B, C, H, W); weightsis
(C, 1, k, k) with k in {3, 5}; dilationsin {1, 2}; padding dilation * (k - 1) // 2; one stride (1 or 2).

One launch per direction for up to 8 candidates (more run in chunks of 8): forward, input gradient(s) and
weight gradients (two launches in backward, each skipped when its gradients are not needed). float32, bf16 and
fp16 accumulate in float32 and come back in their dtype; float64 accumulates in float64. Inputs and output
gradients are read through their strides (no copy for non-contiguous tensors); weights are made contiguous
(a no-op for parameters). There are no atomics: the weight gradients are per-tile partial sums reduced by
torch in a fixed order, so every result is bitwise reproducible on a given GPU and shape.

Device: allocations and launches run under the inputs' device (torch.cuda.device_of), so cuda:1 inputs work
whatever the current device is; nothing is copied between host and device, so a call never synchronises.
On the CPU the kernels run only under the Triton interpreter (TRITON_INTERPRET=1 set before the kernel module
is imported), which is how the tests run them. Double backward is not supported.
"""
import contextlib
import os
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from emodarts.ops.cpu_amp import result_dtype
from emodarts.ops.compiled.triton import triton_kernels
from emodarts.ops.grad_need import only_wanted, spread, wanted
from emodarts.runtime.errors import BackendError

# --------------------------------------------------------------------------------------------------
# the reference twin

def multi_depthwise_reference(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int],
                              stride: int, relu: bool = False) -> List[Tensor]:
    """[depthwise conv of xs[i] (or of xs[0], shared) with weights[i] (C, 1, k, k), dilation dilations[i],
    padding dilation * (k - 1) / 2, `stride`] for every candidate i; with `relu`, of F.relu(xs[i]) (the ReLU
    that opens every sep_conv / dil_conv half)."""
    if relu:
        xs = [F.relu(x) for x in xs]
    shared = len(xs) == 1
    return [F.conv2d(xs[0 if shared else i], w, None, stride, d * (w.shape[-1] - 1) // 2, d, w.shape[0])
            for i, (w, d) in enumerate(zip(weights, dilations))]


# --------------------------------------------------------------------------------------------------
# the C++ op (CPU) and the fused dispatch

def ops():
    """torch.ops.emodarts with the multi-depthwise ops loaded (JIT-building the extension if needed)."""
    from emodarts.ops.compiled.cpp import load_ops

    return load_ops("emodarts::multi_dw_fwd", "emodarts::multi_dw_bwd", "csrc/multi_depthwise.cpp",
                    lambda xs, ws, dilations, stride, relu=False: _empty_outs(xs, ws, stride),
                    lambda grads, xs, ws, dilations, stride, need_x, need_w, relu=False: (
                        only_wanted([torch.empty_like(x) for x in xs], need_x),
                        only_wanted([torch.empty_like(w) for w in ws], need_w)))


def _empty_outs(xs, ws, stride):
    b, c, h, w = xs[0].shape
    return [xs[0].new_empty(b, c, (h - 1) // stride + 1, (w - 1) // stride + 1) for _ in ws]


class _MultiDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n_x: int, dilations: List[int], stride: int, relu: bool, *tensors: Tensor):
        xs, ws = list(tensors[:n_x]), list(tensors[n_x:])
        ctx.save_for_backward(*tensors)
        ctx.n_x, ctx.dilations, ctx.stride, ctx.relu = n_x, dilations, stride, relu
        return tuple(ops().multi_dw_fwd(xs, ws, dilations, stride, relu=relu))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        tensors = ctx.saved_tensors
        need = wanted(ctx)  # xs then ws: an alpha step wants no weight's gradient
        if not any(need):
            return (None, None, None, None) + (None,) * len(tensors)
        xs, ws = list(tensors[: ctx.n_x]), list(tensors[ctx.n_x:])
        if any(g is None for g in grads):
            grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, _empty_outs(xs, ws, ctx.stride))]
        grads = [g.contiguous() for g in grads]
        gxs, gws = ops().multi_dw_bwd(grads, xs, ws, ctx.dilations, ctx.stride, need[: ctx.n_x], need[ctx.n_x:],
                                      relu=ctx.relu)
        return (None, None, None, None, *spread(gxs, need[: ctx.n_x]), *spread(gws, need[ctx.n_x:]))


def multi_depthwise_fused(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int],
                          stride: int, relu: bool = False) -> List[Tensor]:
    """Same contract as multi_depthwise_reference. On the CPU the ReLU is applied as the op reads each plane
    (no ReLU'd map written, its backward masked in the op); on CUDA it is F.relu before the Triton op."""
    if xs and xs[0].device.type == "cuda" and os.environ.get("EMODARTS_DW_CUDNN") != "1":
        return _multi_depthwise_cuda([F.relu(x) for x in xs] if relu else xs, weights, dilations, stride)
    if not xs or xs[0].device.type != "cpu":
        return multi_depthwise_reference(xs, weights, dilations, stride, relu)
    dtype = xs[0].dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast("cpu", enabled=False):
        xs_c = [x.to(work).contiguous() for x in xs]
        ws_c = [w.to(work).contiguous() for w in weights]
        outs = _MultiDepthwise.apply(len(xs_c), [int(d) for d in dilations], int(stride), bool(relu), *xs_c, *ws_c)
    out = result_dtype(dtype)  # float32 under autocast (emodarts/ops/cpu_amp.py)
    return [o.to(out) for o in outs]


def _multi_depthwise_cuda(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int],
                          stride: int) -> List[Tensor]:
    """The Triton op, inputs and weights in one dtype: the autocast dtype when autocast is on (what
    F.conv2d would compute in), else the inputs'."""
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else xs[0].dtype
    with torch.autocast("cuda", enabled=False):
        return multi_depthwise_triton([x.to(dtype) for x in xs], [w.to(dtype) for w in weights], dilations, stride)


# --------------------------------------------------------------------------------------------------
# the Triton op (CUDA)

def kernels_module():
    """kernels/multi_depthwise.py (Triton)."""
    return triton_kernels("multi_depthwise", "the Triton multi-depthwise op")


def _on_device(t: Tensor):
    """Launch on `t`'s GPU (Triton launches on the current device and stream); nothing for CPU tensors."""
    return torch.cuda.device_of(t) if t.device.type == "cuda" else contextlib.nullcontext()


def _check(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int], stride: int, km) -> None:
    """Refuse what the kernels do not implement, with the reason (the reference would run it or fail)."""
    if not xs or not weights:
        raise ValueError("multi_depthwise needs at least one input and one weight")
    if len(xs) not in (1, len(weights)):
        raise ValueError(f"multi_depthwise: {len(xs)} inputs for {len(weights)} candidates (1 or one each)")
    if len(dilations) != len(weights):
        raise ValueError(f"multi_depthwise: {len(dilations)} dilations for {len(weights)} weights")
    if stride not in (1, 2):
        raise ValueError(f"multi_depthwise (Triton): stride {stride} (1 or 2)")
    x0 = xs[0]
    if x0.dim() != 4:
        raise ValueError(f"multi_depthwise: input of shape {tuple(x0.shape)} is not (B, C, H, W)")
    c = x0.shape[1]
    for i, x in enumerate(xs):
        if x.shape != x0.shape or x.device != x0.device or x.dtype != x0.dtype:
            raise ValueError(f"multi_depthwise: input {i} differs from input 0 in shape, device or dtype")
    for i, (w, d) in enumerate(zip(weights, dilations)):
        k = w.shape[-1]
        if w.dim() != 4 or tuple(w.shape) != (c, 1, k, k) or k not in (3, 5):
            raise ValueError(f"multi_depthwise (Triton): weight {i} of shape {tuple(w.shape)} (C, 1, 3|5, 3|5)")
        if int(d) not in (1, 2):
            raise ValueError(f"multi_depthwise (Triton): dilation {d} (1 or 2)")
        if w.device != x0.device:
            raise ValueError(f"multi_depthwise: weight {i} is on {w.device}, the input on {x0.device}")
        if w.dtype not in km.SUPPORTED:
            raise ValueError(f"multi_depthwise (Triton): weight dtype {w.dtype}")
    if x0.dtype not in km.SUPPORTED:
        raise ValueError(f"multi_depthwise (Triton): unsupported dtype {x0.dtype} (fp32, bf16, fp16, fp64)")
    if x0.device.type == "cpu" and not km.INTERPRET:
        raise BackendError("the Triton multi-depthwise kernels got CPU tensors but the Triton interpreter is off: "
                           "set TRITON_INTERPRET=1 before the kernels are imported, or use multi_depthwise_fused on "
                           "the CPU")
    if x0.device.type not in ("cpu", "cuda"):
        raise BackendError(f"the Triton multi-depthwise kernels do not run on {x0.device.type} tensors")


class _MultiDepthwiseTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n_x: int, dilations: List[int], stride: int, *tensors: Tensor):
        km = kernels_module()
        xs, ws = list(tensors[:n_x]), [w.contiguous() for w in tensors[n_x:]]
        ks = [w.shape[-1] for w in ws]
        ctx.save_for_backward(*xs, *ws)
        ctx.n_x, ctx.ks, ctx.dilations, ctx.stride = n_x, ks, dilations, stride
        with _on_device(xs[0]):
            return tuple(km.forward(xs, ws, ks, dilations, stride, xs[0].dtype))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        km = kernels_module()
        saved = ctx.saved_tensors
        xs, ws = list(saved[: ctx.n_x]), list(saved[ctx.n_x:])
        need = wanted(ctx)  # xs then ws
        need_x, need_w = any(need[: ctx.n_x]), any(need[ctx.n_x:])
        b, c, h, w = xs[0].shape
        s = ctx.stride
        with _on_device(xs[0]):
            # an unused output's gradient is None: zeros of the output's shape (broadcast, no memory written)
            grads = [g if g is not None else xs[0].new_zeros(()).expand(b, c, km.out_size(h, s), km.out_size(w, s))
                     for g in grads]
            gxs = (km.backward_input(grads, ws, ctx.ks, ctx.dilations, s, xs[0].shape, [x.dtype for x in xs],
                                     ctx.n_x == 1) if need_x else [None] * ctx.n_x)
            gws = km.backward_weight(grads, xs, ctx.ks, ctx.dilations, s, [w.dtype for w in ws]) if need_w \
                else [None] * len(ws)
        return (None, None, None, *gxs, *gws)


def multi_depthwise_triton(xs: Sequence[Tensor], weights: Sequence[Tensor], dilations: Sequence[int],
                           stride: int) -> List[Tensor]:
    """[depthwise conv of xs[i] (or xs[0], shared) with weights[i], dilation dilations[i], padding
    dilation * (k - 1) // 2, `stride`] for every candidate i: multi_depthwise_reference's contract, in
    Triton. Outputs are contiguous, in the inputs' dtype; differentiable in every input and weight."""
    km = kernels_module()
    stride = int(stride)
    dilations = [int(d) for d in dilations]
    _check(xs, weights, dilations, stride, km)
    return list(_MultiDepthwiseTriton.apply(len(xs), dilations, stride, *xs, *weights))


multi_depthwise = multi_depthwise_triton
