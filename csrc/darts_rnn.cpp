// The DARTS recurrent cell over a whole sequence, C++ CPU implementation (the CUDA one is
// csrc/cuda/darts_rnn_cuda.cu; the plain-PyTorch oracle and the exact contract:
// emodarts/ops/darts_rnn.py, darts_rnn_reference).
//
//   emodarts::darts_rnn_forward(Tensor x_proj, Tensor h0, Tensor w0h, Tensor ws, Tensor probs)
//       -> (Tensor hs, Tensor states, Tensor pre0, Tensor pre)
//   emodarts::darts_rnn_backward(Tensor grad_hs, Tensor h0, Tensor w0h, Tensor ws, Tensor probs, Tensor hs,
//                                Tensor states, Tensor pre0, Tensor pre,
//                                bool[5] output_mask)
//       -> (Tensor grad_x_proj, Tensor grad_h0, Tensor grad_w0h, Tensor grad_ws, Tensor grad_probs)
//   output_mask: which of the five gradients to return (undefined, None, for the others); the weight
//   gradients' GEMMs run only when asked for (an alpha step wants grad_x_proj and grad_probs only).
//
// Shapes: x_proj (T, B, 2H) = x W0x (the caller's GEMM), h0 (B, H), w0h (H, 2H), ws (S, H, 2H),
// probs (E, 4) with E = S (S + 1) / 2, the mixing weights of tanh, relu, sigmoid, identity on every edge
// (row e = i (i + 1) / 2 + j: node i reading state j; `none` is never computed, its softmax mass only makes
// the rows sum to less than 1). No biases (DARTS has none). Inputs may be strided (copied contiguous here).
// Outputs and saved state (contiguous, the same layout on CPU and CUDA):
//   hs     (T, B, H)             h_t = mean(s_1 .. s_S), the layer output (and h_{t-1} of the next step)
//   states (T, S + 1, B, H)      s_0 .. s_S of every step
//   pre0   (T, B, 2H)            [sigmoid(c0) | z0] of every step ([c0 | z0] = x_proj[t] + h_{t-1} W0h)
//   pre    (T, E, B, 2H)         per step, per edge e of node i, source j: [sigmoid(C) | Z] of s_j W_i
//
// Forward, per step: one GEMM h_{t-1} W0h (added onto x_proj[t]), the s0 epilogue, then per node i one
// GEMM of the stacked states s_0 .. s_i ((i + 1) B x H) by W_i (H x 2H) and one fused epilogue (gate,
// the four activations, the blend with probs, the sum over predecessors) writing s_{i+1}; then the mean.
// Backward through time, per step (last to first): dL/ds_k = dL/dh_t / S for k >= 1 (dL/dh_t: grad_hs[t]
// plus what step t + 1 carried back); nodes in reverse order: the epilogue backward (dC, dZ into a saved
// block, the direct term into dL/ds_j, the probs gradient accumulated per batch row), then one GEMM
// dL/ds_{0..i} += [dC | dZ] W_i^T; then s0's backward gives dL/dx_proj[t] = [dc0 | dz0] and
// dL/dh_{t-1} = dL/ds0 (1 - c0) + [dc0 | dz0] W0h^T, carried to the previous step. dW_i = sum_t S_{i,t}^T
// dPre_{i,t} is accumulated inside the loop (one GEMM per step and node, accumulated by the GEMM's beta), so
// [dC | dZ] is kept for one step only ((E, B, 2H), not (T, E, B, 2H)); after the loop dW0h =
// sum_t h_{t-1}^T [dc0 | dz0]_t (two GEMMs: h0 and hs[0 .. T-2]). The probs gradient: per batch row partial
// sums (double) over steps and hidden units, then a sum over rows in row order, so it is deterministic for
// any thread count.
//
// CPU mapping: GEMMs through the BLAS PyTorch links (csrc/cpu_common.h; EMODARTS_GROUPED_GEMM=aten
// switches to ATen GEMMs). Epilogues: float32 8 lanes (csrc/darts_rnn_kernels.h, baseline and AVX2+FMA
// copies, EMODARTS_GROUPED_NO_AVX2=1 forces the baseline), float64 1 lane with std::exp / std::tanh; batch
// rows spread over threads with at::parallel_for when a call has enough work (kGrainElems).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_common.h"

#pragma GCC diagnostic ignored "-Wpsabi"

namespace emodarts {
namespace darts_rnn_cpu {
namespace {

using at::Tensor;
using cpu_common::avx2_enabled;
using cpu_common::gemm_rm;
using cpu_common::ptr_or_null;
using cpu_common::use_blas;

#define EMO_INLINE inline __attribute__((always_inline))

// ---------------------------------------------------------------------------------------------------
// kernels: csrc/darts_rnn_kernels.h, compiled for the baseline and (x86-64) for AVX2+FMA

#define EMODARTS_DARTS_NS baseline
#include "darts_rnn_kernels.h"
#undef EMODARTS_DARTS_NS

#ifdef EMODARTS_CPU_HAVE_AVX2
EMODARTS_BEGIN_AVX2_FMA
#define EMODARTS_DARTS_NS avx2
#include "darts_rnn_kernels.h"
#undef EMODARTS_DARTS_NS
EMODARTS_END_AVX2_FMA
#endif

// float32 kernels of one instruction set, picked once at run time
struct Epi {
  decltype(&baseline::s0_fwd) s0_fwd;
  decltype(&baseline::node_fwd) node_fwd;
  decltype(&baseline::mean) mean;
  decltype(&baseline::node_bwd) node_bwd;
  decltype(&baseline::s0_bwd) s0_bwd;
};

#define EMODARTS_DARTS_EPI(NS)                                                                         \
  Epi {                                                                                                \
    NS::s0_fwd, NS::node_fwd, NS::mean, NS::node_bwd, NS::s0_bwd                                       \
  }

const Epi& float_epi() {
  static const Epi epi = [] {
#ifdef EMODARTS_CPU_HAVE_AVX2
    if (avx2_enabled()) return EMODARTS_DARTS_EPI(avx2);
#endif
    return EMODARTS_DARTS_EPI(baseline);
  }();
  return epi;
}

// typed front ends (float: the table above; double: the baseline templates, std::exp / std::tanh)
void s0_fwd(int64_t b0, int64_t b1, int64_t H, float* pre0, const float* h, float* s0) {
  float_epi().s0_fwd(b0, b1, H, pre0, h, s0);
}
void s0_fwd(int64_t b0, int64_t b1, int64_t H, double* pre0, const double* h, double* s0) {
  baseline::s0_fwd_rows<double, double>(b0, b1, H, pre0, h, s0);
}
void node_fwd(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const float* p, float* pre, float* st) {
  float_epi().node_fwd(b0, b1, B, H, nj, p, pre, st);
}
void node_fwd(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const double* p, double* pre, double* st) {
  baseline::node_fwd_rows<double, double>(b0, b1, B, H, nj, p, pre, st);
}
void mean(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t S, const float* st, float* out) {
  float_epi().mean(b0, b1, B, H, S, st, out);
}
void mean(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t S, const double* st, double* out) {
  baseline::mean_rows<double, double>(b0, b1, B, H, S, st, out);
}
void node_bwd(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const float* p, const float* pre,
              const float* st, float* dpre, float* dst, double* part, int64_t part_ld) {
  float_epi().node_bwd(b0, b1, B, H, nj, p, pre, st, dpre, dst, part, part_ld);
}
void node_bwd(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const double* p, const double* pre,
              const double* st, double* dpre, double* dst, double* part, int64_t part_ld) {
  baseline::node_bwd_rows<double, double>(b0, b1, B, H, nj, p, pre, st, dpre, dst, part, part_ld);
}
void s0_bwd(int64_t b0, int64_t b1, int64_t H, const float* pre0, const float* h, const float* ds0, float* gx,
            float* dh) {
  float_epi().s0_bwd(b0, b1, H, pre0, h, ds0, gx, dh);
}
void s0_bwd(int64_t b0, int64_t b1, int64_t H, const double* pre0, const double* h, const double* ds0, double* gx,
            double* dh) {
  baseline::s0_bwd_rows<double, double>(b0, b1, H, pre0, h, ds0, gx, dh);
}

// Batch rows [0, B) over threads when one call has at least ~kGrainElems (source, hidden unit) elements per
// thread (a few tens of microseconds of epilogue); smaller calls run on the calling thread.
constexpr int64_t kGrainElems = 16384;

template <typename F>
void for_rows(int64_t B, int64_t elems_per_row, const F& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, elems_per_row));
  if (B <= grain || at::in_parallel_region() || at::get_num_threads() <= 1) {
    fn(int64_t(0), B);
    return;
  }
  at::parallel_for(0, B, grain, fn);
}

// ---------------------------------------------------------------------------------------------------
// shapes and checks

#include "darts_rnn_shape.h"

// shapes as check_dims, on the CPU
Dims make_dims(const Tensor& seq, bool half, const Tensor& h0, const Tensor& w0h, const Tensor& ws,
               const Tensor& probs) {
  Dims d = check_dims(seq, half, h0, w0h, ws, probs);
  TORCH_CHECK(seq.scalar_type() == at::kFloat || seq.scalar_type() == at::kDouble,
              "darts_rnn: float32 or float64 only, got ", seq.scalar_type());
  return d;
}

// ---------------------------------------------------------------------------------------------------
// forward

template <typename T>
void forward_impl(const Dims& d, const T* h0, const T* w0h, const T* ws, const T* probs, T* hs, T* states, T* pre0,
                  T* pre) {
  const bool blas = use_blas();
  const int64_t B = d.B, H = d.H, S = d.S, E = d.E, BH = B * H, H2 = 2 * H;
  for (int64_t t = 0; t < d.T; ++t) {
    const T* h = t == 0 ? h0 : hs + (t - 1) * BH;
    T* p0 = pre0 + t * B * H2;  // holds x_proj[t]
    T* st = states + t * (S + 1) * BH;
    gemm_rm<T>(blas, false, false, B, H2, H, T(1), h, H, w0h, H2, T(1), p0, H2);
    for_rows(B, H, [&](int64_t b0, int64_t b1) { s0_fwd(b0, b1, H, p0, h, st); });
    for (int64_t i = 0; i < S; ++i) {
      const int64_t nj = i + 1, e0 = i * (i + 1) / 2;
      T* pn = pre + (t * E + e0) * B * H2;
      gemm_rm<T>(blas, false, false, nj * B, H2, H, T(1), st, H, ws + i * H * H2, H2, T(0), pn, H2);
      for_rows(B, nj * H, [&](int64_t b0, int64_t b1) { node_fwd(b0, b1, B, H, nj, probs + 4 * e0, pn, st); });
    }
    for_rows(B, S * H, [&](int64_t b0, int64_t b1) { mean(b0, b1, B, H, S, st, hs + t * BH); });
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> darts_rnn_forward(const Tensor& x_proj, const Tensor& h0_,
                                                             const Tensor& w0h_, const Tensor& ws_,
                                                             const Tensor& probs_) {
  const Dims d = make_dims(x_proj, false, h0_, w0h_, ws_, probs_);
  TORCH_CHECK(x_proj.device().is_cpu(), "darts_rnn (CPU kernel) got a tensor on ", x_proj.device());
  const Tensor h0 = h0_.contiguous(), w0h = w0h_.contiguous(), ws = ws_.contiguous(), probs = probs_.contiguous();
  auto opts = x_proj.options();
  Tensor hs = at::empty({d.T, d.B, d.H}, opts);
  Tensor states = at::empty({d.T, d.S + 1, d.B, d.H}, opts);
  Tensor pre0 = at::empty({d.T, d.B, 2 * d.H}, opts);
  pre0.copy_(x_proj);  // strided x_proj: copied here, once
  Tensor pre = at::empty({d.T, d.E, d.B, 2 * d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(x_proj.scalar_type(), "darts_rnn_forward", [&] {
    forward_impl<scalar_t>(d, h0.const_data_ptr<scalar_t>(), w0h.const_data_ptr<scalar_t>(),
                           ws.const_data_ptr<scalar_t>(), probs.const_data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(),
                           states.data_ptr<scalar_t>(), pre0.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>());
  });
  return {hs, states, pre0, pre};
}

// ---------------------------------------------------------------------------------------------------
// backward

template <typename T>
void backward_impl(const Dims& d, const T* gh, const T* h0, const T* w0h, const T* ws, const T* probs, const T* hs,
                   const T* states, const T* pre0, const T* pre, T* gx, T* gh0, T* gw0h, T* gws, T* gprobs, T* dpre,
                   T* dst, T* dh, double* part) {
  const bool blas = use_blas();
  const int64_t B = d.B, H = d.H, S = d.S, E = d.E, BH = B * H, H2 = 2 * H, T_ = d.T;
  std::fill(part, part + B * E * 4, 0.0);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    // dL/ds_k = dL/dh_t / S (k = 1 .. S), dL/ds_0 = 0 (nodes add to it)
    const T* ght = gh + t * BH;
    const bool carry = t < T_ - 1;
    for (int64_t r = 0; r < BH; ++r) dst[BH + r] = (ght[r] + (carry ? dh[r] : T(0))) / T(S);
    for (int64_t k = 2; k <= S; ++k) std::memcpy(dst + k * BH, dst + BH, sizeof(T) * BH);
    std::fill(dst, dst + BH, T(0));
    const T* st = states + t * (S + 1) * BH;
    for (int64_t i = S - 1; i >= 0; --i) {
      const int64_t nj = i + 1, e0 = i * (i + 1) / 2;
      const T* pn = pre + (t * E + e0) * B * H2;
      T* dpn = dpre + e0 * B * H2;  // this step's buffer (E, B, 2H)
      for_rows(B, nj * H, [&](int64_t b0, int64_t b1) {
        node_bwd(b0, b1, B, H, nj, probs + 4 * e0, pn, st, dpn, dst, part + 4 * e0, E * 4);
      });
      // dL/ds_j += [dC_j | dZ_j] W_i^T for j = 0 .. i: one GEMM over the stacked rows
      gemm_rm<T>(blas, false, true, nj * B, H, H2, T(1), dpn, H2, ws + i * H * H2, H2, T(1), dst, H);
      // dW_i += S_{i,t}^T [dC | dZ]_{i,t}, accumulated step by step (the GEMM's beta), so [dC | dZ] is kept
      // for one step only (gws == nullptr: not wanted)
      if (gws)
        gemm_rm<T>(blas, true, false, H, H2, nj * B, T(1), st, H, dpn, H2, t == T_ - 1 ? T(0) : T(1),
                   gws + i * H * H2, H2);
    }
    const T* h = t == 0 ? h0 : hs + (t - 1) * BH;
    T* gxt = gx + t * B * H2;
    for_rows(B, H, [&](int64_t b0, int64_t b1) { s0_bwd(b0, b1, H, pre0 + t * B * H2, h, dst, gxt, dh); });
    gemm_rm<T>(blas, false, true, B, H, H2, T(1), gxt, H2, w0h, H2, T(1), dh, H);  // dh += dPre0 W0h^T
  }
  std::memcpy(gh0, dh, sizeof(T) * BH);
  // weight gradients over all steps (gw0h == nullptr: not wanted)
  if (gw0h) {
    gemm_rm<T>(blas, true, false, H, H2, B, T(1), h0, H, gx, H2, T(0), gw0h, H2);
    if (T_ > 1) gemm_rm<T>(blas, true, false, H, H2, (T_ - 1) * B, T(1), hs, H, gx + B * H2, H2, T(1), gw0h, H2);
  }
  for (int64_t q = 0; q < E * 4; ++q) {
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) s += part[b * E * 4 + q];
    gprobs[q] = static_cast<T>(s);
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> darts_rnn_backward(
    const Tensor& grad_hs_, const Tensor& h0_, const Tensor& w0h_, const Tensor& ws_, const Tensor& probs_,
    const Tensor& hs_, const Tensor& states_, const Tensor& pre0_, const Tensor& pre_,
    std::array<bool, 5> output_mask) {
  const Dims d = make_dims(hs_, true, h0_, w0h_, ws_, probs_);
  TORCH_CHECK(hs_.device().is_cpu(), "darts_rnn (CPU kernel) got a tensor on ", hs_.device());
  check_saved(d, grad_hs_, hs_, states_, pre0_, pre_);
  const Tensor gh = grad_hs_.contiguous(), h0 = h0_.contiguous(), w0h = w0h_.contiguous(), ws = ws_.contiguous(),
               probs = probs_.contiguous(), hs = hs_.contiguous(), states = states_.contiguous(),
               pre0 = pre0_.contiguous(), pre = pre_.contiguous();
  auto opts = hs.options();
  Tensor gx = at::empty({d.T, d.B, 2 * d.H}, opts);
  Tensor gh0 = at::empty({d.B, d.H}, opts);
  Tensor gw0h = output_mask[2] ? at::empty({d.H, 2 * d.H}, opts) : Tensor();
  Tensor gws = output_mask[3] ? at::empty({d.S, d.H, 2 * d.H}, opts) : Tensor();
  Tensor gprobs = at::empty({d.E, 4}, opts);
  Tensor dpre = at::empty({d.E * d.B * 2 * d.H}, opts);  // one step's [dC | dZ], reused at every step
  Tensor dst = at::empty({(d.S + 1) * d.B * d.H}, opts);
  Tensor dh = at::empty({d.B * d.H}, opts);
  Tensor part = at::empty({d.B * d.E * 4}, opts.dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "darts_rnn_backward", [&] {
    backward_impl<scalar_t>(d, gh.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(),
                            w0h.const_data_ptr<scalar_t>(), ws.const_data_ptr<scalar_t>(),
                            probs.const_data_ptr<scalar_t>(), hs.const_data_ptr<scalar_t>(),
                            states.const_data_ptr<scalar_t>(), pre0.const_data_ptr<scalar_t>(),
                            pre.const_data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gh0.data_ptr<scalar_t>(),
                            ptr_or_null<scalar_t>(gw0h), ptr_or_null<scalar_t>(gws), gprobs.data_ptr<scalar_t>(),
                            dpre.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
                            part.data_ptr<double>());
  });
  // grad_x_proj and grad_h0 are the recursion's own buffers, grad_probs its partial sums: handed back when asked
  return {output_mask[0] ? gx : Tensor(), output_mask[1] ? gh0 : Tensor(), gw0h, gws,
          output_mask[4] ? gprobs : Tensor()};
}

}  // namespace
}  // namespace darts_rnn_cpu
}  // namespace emodarts

// FRAGMENT: the namespace is shared with the other ops of the extension and the CUDA kernels.
TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def(
      "darts_rnn_forward(Tensor x_proj, Tensor h0, Tensor w0h, Tensor ws, Tensor probs) "
      "-> (Tensor hs, Tensor states, Tensor pre0, Tensor pre)");
  m.def(
      "darts_rnn_backward(Tensor grad_hs, Tensor h0, Tensor w0h, Tensor ws, Tensor probs, Tensor hs, "
      "Tensor states, Tensor pre0, Tensor pre, bool[5] output_mask) -> (Tensor grad_x_proj, Tensor grad_h0, "
      "Tensor grad_w0h, "
      "Tensor grad_ws, Tensor grad_probs)");
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("darts_rnn_forward", &emodarts::darts_rnn_cpu::darts_rnn_forward);
  m.impl("darts_rnn_backward", &emodarts::darts_rnn_cpu::darts_rnn_backward);
}
