// Grouped recurrent layer, CUDA implementation: the CUDA kernels of emodarts::grouped_rnn_forward and
// emodarts::grouped_rnn_backward (schemas, layouts and the CPU twin: csrc/grouped_rnn.cpp).
//
// Built with the other CUDA kernels into emodarts._C_cuda by setup.py, or JIT-compiled with them by
// emodarts/ops/compiled/cuda.py (ensure_cuda), as a library that only registers CUDA kernels. It
// includes no ATen/cuda/CUDAContext.h (no cuBLAS headers needed): GEMMs go through ATen (at::mm_out,
// at::bmm_out on strided views: cuBLAS reads the strides), the stream comes from c10. The op takes each
// unit's weights and inputs as lists (csrc/grouped_rnn.cpp); the batched GEMMs read them as one strided stack,
// so each call concatenates the weights and stacks the inputs on the device first (per-unit gradients come
// back as views of the stacked results).
//
// Forward: one GEMM for all input projections (shared x; per-unit x: one strided batched GEMM per cell
// kind), then per time step one batched GEMM per cell kind for the recurrent products of all units
// (h_{t-1} of every unit sits in a step buffer, so the batch has one stride whatever the directions) and
// one epilogue kernel for every unit (bias, gates, cell update, new h). Backward per step: one epilogue
// kernel (d gates of every unit, the cell-state carry), one batched GEMM per kind for dh through W_hh;
// after the loop the weight gradients as batched GEMMs over all steps (dW_hh per kind and direction,
// dW_ih per kind or one GEMM for a shared input), dx as one GEMM (shared) or one batched GEMM per kind.
//
// No host synchronisation: the per-unit directions go to the kernels by value (RevBits), every buffer is
// allocated on x's device under a CUDAGuard, nothing is copied between host and device.
//
// Workspace `gates` (T*B*G,) on CUDA: time-major (T, B, G), unit k's columns at goff_k (the CPU kernel
// uses a unit-major layout; the workspace is opaque and only ever returns to the same device's backward).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <vector>

#include "cuda_common.cuh"

namespace emodarts {
namespace grouped_rnn_cuda {
namespace {

using at::Tensor;
using cuda_common::blocks_for;
using cuda_common::kThreads;
using cuda_common::sigm;

#include "../grouped_rnn_plan.h"

// ---------------------------------------------------------------------------------------------------
// epilogue kernels: one thread per (unit, batch row, hidden index)

// Per-unit direction flags travel with the launch (a bit set passed by value in the kernel's parameter
// space), not as a device tensor: no host-to-device copy, no synchronisation, capturable in a CUDA graph.
constexpr int64_t kMaxUnits = 4096;
struct RevBits {
  uint64_t w[kMaxUnits / 64];
};

struct StepArgs {
  int64_t K, KL, T, B, H, G, s;
  RevBits rev;  // bit k: unit k runs backwards in time
};

__device__ __forceinline__ bool reversed(const StepArgs& a, int64_t k) {
  return (a.rev.w[k >> 6] >> (k & 63)) & 1ull;
}

__device__ __forceinline__ void unit_cols(const StepArgs& a, int64_t k, int64_t& goff, int64_t& gh) {
  if (k < a.KL) {
    goff = 4 * a.H * k;
    gh = 4 * a.H;
  } else {
    goff = 4 * a.H * a.KL + a.H * (k - a.KL);
    gh = a.H;
  }
}

// gates (T, B, G): x W_ih^T of every step; rec (B*G): this step's h_{t-1} W_hh^T, unit k's (B, gh) block at
// B*goff_k (unused at s = 0); writes activated gates back (LSTM), c, h and the step buffer hbuf (K, B, H).
template <typename T>
__global__ void fwd_step_kernel(StepArgs a, T* __restrict__ gates, const T* __restrict__ rec,
                                const T* __restrict__ bias, T* __restrict__ cs, T* __restrict__ hs,
                                T* __restrict__ hbuf) {
  const int64_t n = a.K * a.B * a.H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx % a.H;
    const int64_t b = (idx / a.H) % a.B;
    const int64_t k = idx / (a.H * a.B);
    const bool rv = reversed(a, k);
    const int64_t t = rv ? a.T - 1 - a.s : a.s;
    const int64_t tp = rv ? t + 1 : t - 1;
    int64_t goff, gh;
    unit_cols(a, k, goff, gh);
    T* g = gates + (t * a.B + b) * a.G + goff + j;
    const T* r = rec + a.B * goff + b * gh + j;
    const T* bi = bias + goff + j;
    const int64_t hidx = ((k * a.T + t) * a.B + b) * a.H + j;
    T h;
    if (k < a.KL) {
      T pre[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) pre[q] = g[q * a.H] + bi[q * a.H] + (a.s > 0 ? r[q * a.H] : T(0));
      const T i = sigm(pre[0]), f = sigm(pre[1]), gg = tanh(pre[2]), o = sigm(pre[3]);
      T c = i * gg;
      if (a.s > 0) c += f * cs[((k * a.T + tp) * a.B + b) * a.H + j];
      g[0] = i;
      g[a.H] = f;
      g[2 * a.H] = gg;
      g[3 * a.H] = o;
      cs[hidx] = c;
      h = o * tanh(c);
    } else {
      h = tanh(g[0] + bi[0] + (a.s > 0 ? r[0] : T(0)));
    }
    hs[hidx] = h;
    hbuf[(k * a.B + b) * a.H + j] = h;
  }
}

// grad_hs (K, T, B, H); dhr (K, B, H): dL/dh through the recurrence (unused on the last step); dc (KL, B, H)
// the cell-state carry. Writes d gates (pre-activation) into dgates (T, B, G) and into the step buffer
// dgs (B*G, unit-major like rec) that the next step's batched GEMM reads.
template <typename T>
__global__ void bwd_step_kernel(StepArgs a, const T* __restrict__ grad_hs, const T* __restrict__ dhr,
                                const T* __restrict__ gates, const T* __restrict__ cs, const T* __restrict__ hs,
                                T* __restrict__ dc, T* __restrict__ dgates, T* __restrict__ dgs) {
  const int64_t n = a.K * a.B * a.H;
  const bool last = a.s == a.T - 1;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx % a.H;
    const int64_t b = (idx / a.H) % a.B;
    const int64_t k = idx / (a.H * a.B);
    const bool rv = reversed(a, k);
    const int64_t t = rv ? a.T - 1 - a.s : a.s;
    const int64_t tp = rv ? t + 1 : t - 1;
    int64_t goff, gh;
    unit_cols(a, k, goff, gh);
    const int64_t hidx = ((k * a.T + t) * a.B + b) * a.H + j;
    const int64_t sidx = (k * a.B + b) * a.H + j;
    const T dh = grad_hs[hidx] + (last ? T(0) : dhr[sidx]);
    T* dg = dgates + (t * a.B + b) * a.G + goff + j;
    T* ds = dgs + a.B * goff + b * gh + j;
    if (k < a.KL) {
      const T* g = gates + (t * a.B + b) * a.G + goff + j;
      const T i = g[0], f = g[a.H], gg = g[2 * a.H], o = g[3 * a.H];
      const T c = cs[hidx];
      const T cprev = a.s > 0 ? cs[((k * a.T + tp) * a.B + b) * a.H + j] : T(0);
      const T tc = tanh(c);
      T dct = dh * o * (T(1) - tc * tc);
      if (!last) dct += dc[sidx];
      const T d[4] = {dct * gg * i * (T(1) - i), dct * cprev * f * (T(1) - f), dct * i * (T(1) - gg * gg),
                      dh * tc * o * (T(1) - o)};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        dg[q * a.H] = d[q];
        ds[q * a.H] = d[q];
      }
      dc[sidx] = dct * f;
    } else {
      const T h = hs[hidx];
      const T d = dh * (T(1) - h * h);
      dg[0] = d;
      ds[0] = d;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// strided views (no copies: cuBLAS takes the strides)

// the (n, rows, cols) stack of row-major matrices at `offset` of t, strides (batch, row, col)
Tensor strided(const Tensor& t, int64_t n, int64_t rows, int64_t cols, int64_t sb, int64_t sr, int64_t sc,
               int64_t offset) {
  return t.as_strided({n, rows, cols}, {sb, sr, sc}, t.storage_offset() + offset);
}

struct Run {
  int64_t k0, n;
  bool lstm, rev;
};

// maximal runs of consecutive units with the same kind (and direction, when by_dir)
std::vector<Run> runs(const Plan& p, bool by_dir) {
  std::vector<Run> out;
  for (int64_t k = 0; k < p.K; ++k) {
    const bool lstm = k < p.KL, rev = by_dir && p.rev[k];
    if (!out.empty() && out.back().lstm == lstm && out.back().rev == rev) {
      ++out.back().n;
    } else {
      out.push_back({k, 1, lstm, rev});
    }
  }
  return out;
}

RevBits rev_bits(const Plan& p) {
  TORCH_CHECK(p.K <= kMaxUnits, "grouped_rnn (CUDA): at most ", kMaxUnits, " units per call, got ", p.K);
  RevBits r{};
  for (int64_t k = 0; k < p.K; ++k)
    if (p.rev[k]) r.w[k >> 6] |= 1ull << (k & 63);
  return r;
}

// ---------------------------------------------------------------------------------------------------
// forward

std::tuple<Tensor, Tensor, Tensor> grouped_rnn_forward_cuda(at::TensorList xs_, at::TensorList w_ih_,
                                                            at::TensorList w_hh_, at::TensorList b_ih_,
                                                            at::TensorList b_hh_, int64_t n_lstm,
                                                            at::IntArrayRef reverse) {
  const Plan p = make_plan(xs_, w_ih_, w_hh_, n_lstm, reverse);
  const Tensor& x_ = xs_[0];
  TORCH_CHECK(x_.is_cuda(), "grouped_rnn (CUDA kernel) got a tensor on ", x_.device());
  const c10::cuda::CUDAGuard guard(x_.device());  // allocations, GEMMs, launches on x's GPU, not the current one
  TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
              "grouped_rnn (CUDA): float32 or float64 only, got ", x_.scalar_type());
  check_list(xs_, x_, "x", false);
  check_list(w_ih_, x_, "w_ih", true);
  check_list(w_hh_, x_, "w_hh", true);
  check_biases(p, b_ih_, b_hh_, x_);
  // the batched GEMMs read every unit's weights as one strided stack: one device-side concatenation per call
  // the batched GEMMs read the inputs as one (Kx, T, B, I) stack
  const Tensor x = at::stack(xs_), w_ih = at::cat(w_ih_), w_hh = at::cat(w_hh_),
               bias = at::cat(b_ih_) + at::cat(b_hh_);
  const int64_t T_ = p.T, B = p.B, H = p.H, G = p.G, I = p.I, TB = T_ * B;
  auto opts = x.options();
  Tensor hs = at::empty({p.K, T_, B, H}, opts);
  Tensor cs = at::empty({p.KL, T_, B, H}, opts);
  Tensor gates = at::empty({TB * G}, opts);
  Tensor gates2d = gates.view({TB, G});
  // input projections of every step
  if (p.Kx == 1) {
    at::mm_out(gates2d, x.view({TB, I}), w_ih.t());
  } else {
    for (const Run& r : runs(p, false)) {
      const int64_t gh = p.gh[r.k0], go = p.goff[r.k0];
      Tensor out = strided(gates2d, r.n, TB, gh, gh, G, 1, go);
      Tensor xr = x.narrow(0, r.k0, r.n).view({r.n, TB, I});
      Tensor wr = w_ih.narrow(0, go, r.n * gh).view({r.n, gh, I});
      at::bmm_out(out, xr, wr.transpose(1, 2));
    }
  }
  Tensor rec = at::empty({B * G}, opts);     // this step's recurrent products, unit-major blocks (B, gh)
  Tensor hbuf = at::empty({p.K, B, H}, opts);  // h_{t-1} of every unit in step order
  const RevBits flags = rev_bits(p);
  const auto kind_runs = runs(p, false);
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < T_; ++s) {
    if (s > 0) {
      for (const Run& r : kind_runs) {  // one batched GEMM per cell kind
        const int64_t gh = p.gh[r.k0], go = p.goff[r.k0];
        Tensor out = rec.narrow(0, B * go, r.n * B * gh).view({r.n, B, gh});
        Tensor wr = w_hh.narrow(0, go, r.n * gh).view({r.n, gh, H});
        at::bmm_out(out, hbuf.narrow(0, r.k0, r.n), wr.transpose(1, 2));
      }
    }
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grouped_rnn_forward_cuda", [&] {
      StepArgs a{p.K, p.KL, T_, B, H, G, s, flags};
      fwd_step_kernel<scalar_t><<<blocks_for(p.K * B * H), kThreads, 0, stream>>>(
          a, gates.data_ptr<scalar_t>(), rec.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
          p.KL > 0 ? cs.data_ptr<scalar_t>() : nullptr, hs.data_ptr<scalar_t>(), hbuf.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {hs, cs, gates};
}

// ---------------------------------------------------------------------------------------------------
// backward

// (G, n) -> one (g_k, n) view per unit; an undefined tensor (not wanted) -> an empty list
std::vector<Tensor> per_unit(const Tensor& t, const Plan& p) {
  std::vector<Tensor> out;
  if (t.defined())
    for (int64_t k = 0; k < p.K; ++k) out.push_back(t.narrow(0, p.goff[k], p.gh[k]));
  return out;
}

using TensorLists = std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>;

TensorLists grouped_rnn_backward_cuda(
    const Tensor& grad_hs_, at::TensorList xs_, at::TensorList w_ih_, at::TensorList w_hh_, const Tensor& hs_,
    const Tensor& cs_, const Tensor& gates_, int64_t n_lstm, at::IntArrayRef reverse,
    std::array<bool, 4> output_mask) {
  const Plan p = make_plan(xs_, w_ih_, w_hh_, n_lstm, reverse);
  TORCH_CHECK(xs_[0].is_cuda(), "grouped_rnn (CUDA kernel) got a tensor on ", xs_[0].device());
  const c10::cuda::CUDAGuard guard(xs_[0].device());
  TORCH_CHECK(xs_[0].scalar_type() == at::kFloat || xs_[0].scalar_type() == at::kDouble,
              "grouped_rnn (CUDA): float32 or float64 only, got ", xs_[0].scalar_type());
  check_saved(p, xs_, grad_hs_, w_ih_, w_hh_, hs_, cs_, gates_);
  const Tensor gh = grad_hs_.contiguous(), x = at::stack(xs_), w_ih = at::cat(w_ih_), w_hh = at::cat(w_hh_),
               hs = hs_.contiguous(), cs = cs_.contiguous(), gates = gates_.contiguous();
  const int64_t T_ = p.T, B = p.B, H = p.H, G = p.G, I = p.I, TB = T_ * B;
  auto opts = x.options();
  Tensor dgates = at::empty({TB * G}, opts);
  Tensor dgates2d = dgates.view({TB, G});
  Tensor dgs = at::empty({B * G}, opts);          // this step's d gates, unit-major blocks (B, gh)
  Tensor dhr = at::empty({p.K, B, H}, opts);      // dL/dh through the recurrence
  Tensor dc = at::empty({std::max<int64_t>(p.KL, 1), B, H}, opts);
  const RevBits flags = rev_bits(p);
  const auto kind_runs = runs(p, false);
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t s = T_ - 1; s >= 0; --s) {
    if (s < T_ - 1) {
      for (const Run& r : kind_runs) {  // dh_rec = dgates_{t_next} W_hh, one batched GEMM per kind
        const int64_t g_ = p.gh[r.k0], go = p.goff[r.k0];
        Tensor a = dgs.narrow(0, B * go, r.n * B * g_).view({r.n, B, g_});
        Tensor wr = w_hh.narrow(0, go, r.n * g_).view({r.n, g_, H});
        Tensor out = dhr.narrow(0, r.k0, r.n);
        at::bmm_out(out, a, wr);
      }
    }
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grouped_rnn_backward_cuda", [&] {
      StepArgs a{p.K, p.KL, T_, B, H, G, s, flags};
      bwd_step_kernel<scalar_t><<<blocks_for(p.K * B * H), kThreads, 0, stream>>>(
          a, gh.data_ptr<scalar_t>(), dhr.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
          p.KL > 0 ? cs.data_ptr<scalar_t>() : nullptr, hs.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
          dgates.data_ptr<scalar_t>(), dgs.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // weight gradients over all steps, each only when asked for (output_mask; undefined = None otherwise)
  Tensor dx, dw_ih, dw_hh, db;
  if (output_mask[3]) db = dgates2d.sum(0);
  if (output_mask[2]) {
    dw_hh = at::empty_like(w_hh);
    if (T_ == 1) dw_hh.zero_();
  }
  if (output_mask[2] && T_ > 1) {
    const int64_t rows = (T_ - 1) * B;
    for (const Run& r : runs(p, true)) {  // per kind and direction: sum_t dgates_t^T h_{t_prev}
      const int64_t g_ = p.gh[r.k0], go = p.goff[r.k0];
      Tensor a = strided(dgates, r.n, g_, rows, g_, 1, G, (r.rev ? 0 : B * G) + go);  // (n, gh, rows)
      Tensor hb = strided(hs, r.n, rows, H, T_ * B * H, H, 1, r.k0 * T_ * B * H + (r.rev ? B * H : 0));
      Tensor out = dw_hh.narrow(0, go, r.n * g_).view({r.n, g_, H});
      at::bmm_out(out, a, hb);
    }
  }
  if (output_mask[1]) dw_ih = at::empty_like(w_ih);
  if (output_mask[0]) dx = at::empty_like(x);
  if (p.Kx == 1) {
    if (dw_ih.defined()) at::mm_out(dw_ih, dgates2d.t(), x.view({TB, I}));
    if (dx.defined()) {
      Tensor dx2d = dx.view({TB, I});
      at::mm_out(dx2d, dgates2d, w_ih);
    }
  } else {
    for (const Run& r : kind_runs) {
      const int64_t g_ = p.gh[r.k0], go = p.goff[r.k0];
      Tensor dgt = strided(dgates, r.n, g_, TB, g_, 1, G, go);  // (n, gh, TB)
      if (dw_ih.defined()) {
        Tensor xr = x.narrow(0, r.k0, r.n).view({r.n, TB, I});
        Tensor dwr = dw_ih.narrow(0, go, r.n * g_).view({r.n, g_, I});
        at::bmm_out(dwr, dgt, xr);
      }
      if (dx.defined()) {
        Tensor wr = w_ih.narrow(0, go, r.n * g_).view({r.n, g_, I});
        Tensor dxr = dx.narrow(0, r.k0, r.n).view({r.n, TB, I});
        at::bmm_out(dxr, dgt.transpose(1, 2), wr);
      }
    }
  }
  std::vector<Tensor> dxs;  // one per input, views of the (Kx, T, B, I) result
  if (dx.defined()) dxs = dx.unbind(0);
  return {dxs, per_unit(dw_ih, p), per_unit(dw_hh, p), per_unit(db, p)};
}

}  // namespace
}  // namespace grouped_rnn_cuda
}  // namespace emodarts

TORCH_LIBRARY_IMPL(emodarts, CUDA, m) {
  m.impl("grouped_rnn_forward", &emodarts::grouped_rnn_cuda::grouped_rnn_forward_cuda);
  m.impl("grouped_rnn_backward", &emodarts::grouped_rnn_cuda::grouped_rnn_backward_cuda);
}
