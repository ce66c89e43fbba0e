"""The two 3x3 pools of the CNN search space: `pool3x3_pair_reference` (two ATen calls) and `pool3x3_pair_fused`
(one read of the input).

The two 3x3 pools of the CNN search space on one input, in plain PyTorch: the reference twin of
emodarts.ops.pools.pool3x3_pair_fused.

The two 3x3 pools of the CNN search space from one read of the input: the `--fused` twin of
emodarts.ops.pool3x3_pair_reference.

    max_out, avg_out = pool3x3_pair(x, stride)
    # max_out == F.max_pool2d(x, 3, stride, 1)
    # avg_out == F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)

CPU tensors run the C++ ops of csrc/pool3x3.cpp:
- `emodarts::pool3x3_fwd(Tensor x, int stride) -> (Tensor, Tensor)`: both pools in one pass over x;
- `emodarts::pool3x3_bwd(Tensor? grad_max, Tensor? grad_avg, Tensor x, int stride) -> Tensor`: grad_x from
  either or both gradients (an output that got no gradient contributes nothing). The max part recomputes
  each window's argmax from x (nothing but x is saved) and routes the gradient where ATen's
  max_pool2d_with_indices would: the first maximum in row-major window order, a NaN over any number.
float32 and float64 give ATen's CPU results bit for bit, forward and backward (ties and NaN included);
bfloat16 is computed in float32 (outputs and grad_x in bf16, each rounded once). Strides 1 and 2, any
spatial size >= 1 (odd sizes, 1x1), any input strides: a non-contiguous input (channels_last included) is
made contiguous once, here, and the outputs are contiguous.

Other tensors take the reference explicitly: CUDA tensors (ATen's cuDNN pooling), and CPU dtypes the kernels
do not cover (float16). The ops are registered with fake kernels and an autograd formula
(torch.library.register_autograd) through emodarts.ops.compiled.cpp.load_ops, so torch.compile traces them; in
eager mode a torch.autograd.Function calls the same two ops with less per-call overhead.
Double backward is not supported.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------------------------------
# the reference twin

def pool3x3_pair_reference(x: Tensor, stride: int) -> Tuple[Tensor, Tensor]:
    """(max pool, average pool) with a 3x3 window, padding 1 and `stride`; the average counts only the
    in-bounds elements (count_include_pad=False), as the search space's avg_pool_3x3."""
    return F.max_pool2d(x, 3, stride, 1), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)


# --------------------------------------------------------------------------------------------------
# the fused op

OP_FWD = "emodarts::pool3x3_fwd"
OP_BWD = "emodarts::pool3x3_bwd"
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_loaded = False


def ops():
    """torch.ops.emodarts with the pool ops loaded (JIT-building the extension if needed), their fake kernels
    and autograd registered."""
    global _loaded
    from emodarts.ops.compiled.cpp import load_ops

    o = load_ops(OP_FWD, OP_BWD, "csrc/pool3x3.cpp", _fwd_fake, _bwd_fake, _op_backward, _op_setup_context)
    _loaded = True
    return o


def out_size(n, stride: int):
    """Output length of a 3x3 window with padding 1: floor((n + 2 - 3) / stride) + 1."""
    return (n - 1) // stride + 1


def _fwd_fake(x: Tensor, stride: int):
    torch._check(x.dim() == 4, lambda: f"pool3x3_fwd: x must be (B, C, H, W), got {tuple(x.shape)}")
    torch._check(stride in (1, 2), lambda: f"pool3x3_fwd: stride must be 1 or 2, got {stride}")
    b, c, h, w = x.shape
    shape = (b, c, out_size(h, stride), out_size(w, stride))
    return x.new_empty(shape), x.new_empty(shape)


def _bwd_fake(grad_max: Optional[Tensor], grad_avg: Optional[Tensor], x: Tensor, stride: int):
    return x.new_empty(x.shape)


def _op_setup_context(ctx, inputs, output):
    x, stride = inputs
    ctx.save_for_backward(x)
    ctx.stride = stride
    ctx.set_materialize_grads(False)


def _op_backward(ctx, grad_max, grad_avg):
    if grad_max is None and grad_avg is None:
        return None, None
    (x,) = ctx.saved_tensors
    return torch.ops.emodarts.pool3x3_bwd(grad_max, grad_avg, x, ctx.stride), None


class _Pool3x3Pair(torch.autograd.Function):
    """The eager path: the two ops without the custom-op autograd layer."""

    @staticmethod
    def forward(ctx, x: Tensor, stride: int):
        max_out, avg_out = torch.ops.emodarts.pool3x3_fwd(x, stride)
        ctx.save_for_backward(x)
        ctx.stride = stride
        ctx.set_materialize_grads(False)
        return max_out, avg_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_max, grad_avg):
        if grad_max is None and grad_avg is None:
            return None, None
        (x,) = ctx.saved_tensors
        return torch.ops.emodarts.pool3x3_bwd(grad_max, grad_avg, x, ctx.stride), None


def pool3x3_pair_fused(x: Tensor, stride: int) -> Tuple[Tensor, Tensor]:
    """(max pool, average pool) with a 3x3 window, padding 1 and `stride` (1 or 2); the average counts only
    the in-bounds elements. Same contract as pool3x3_pair_reference; x is (B, C, H, W) or (C, H, W)."""
    stride = int(stride)
    if stride not in (1, 2):
        raise ValueError(f"pool3x3_pair: stride must be 1 or 2, got {stride}")
    if x.device.type != "cpu" or x.dtype not in SUPPORTED_DTYPES:
        # CUDA: ATen's (cuDNN) pooling, on purpose; CPU float16: ATen's kernels
        return pool3x3_pair_reference(x, stride)
    if x.dim() == 3:  # unbatched (C, H, W), as F.max_pool2d accepts
        max_out, avg_out = pool3x3_pair_fused(x.unsqueeze(0), stride)
        return max_out.squeeze(0), avg_out.squeeze(0)
    if x.dim() != 4:
        raise ValueError(f"pool3x3_pair: x must be (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        return pool3x3_pair_reference(x, stride)  # ATen's error for an empty spatial size
    if not _loaded:
        ops()
    x = x.contiguous()  # once: both ops read it, and backward reads the saved copy
    if torch.compiler.is_compiling():
        return torch.ops.emodarts.pool3x3_fwd(x, stride)
    return _Pool3x3Pair.apply(x, stride)


def cpu_info() -> str:
    """What a CPU call runs here: the kernel copy (isa=avx2 / baseline) and the threading."""
    return ops().pool3x3_cpu_info()
