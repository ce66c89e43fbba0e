// Grouped recurrent layer, C++ CPU implementation (the CUDA one is csrc/cuda/grouped_rnn_cuda.cu).
//
// K recurrent "units" (one layer and one direction of an LSTM or tanh-RNN candidate, hidden H) run
// together over one time loop:
//
//   emodarts::grouped_rnn_forward(Tensor[] x, Tensor[] w_ih, Tensor[] w_hh, Tensor[] b_ih, Tensor[] b_hh,
//                                 int n_lstm, int[] reverse) -> (Tensor hs, Tensor cs, Tensor gates)
//   emodarts::grouped_rnn_backward(Tensor grad_hs, Tensor[] x, Tensor[] w_ih, Tensor[] w_hh, Tensor hs,
//                                  Tensor cs, Tensor gates, int n_lstm, int[] reverse, bool[4] output_mask)
//                                  -> (Tensor[] grad_x, Tensor[] grad_w_ih, Tensor[] grad_w_hh,
//                                      Tensor[] grad_bias)
//   The inputs and weights are the callers' own tensors (the modules' parameters, read in place: nothing is
//   concatenated or stacked per call); grad_x holds one gradient per input, grad_bias[k] is the gradient of
//   b_ih[k] and of b_hh[k] alike.
//   output_mask: which of (grad_x, grad_w_ih, grad_w_hh, grad_bias) to compute (as ATen's backwards take it);
//   a list comes back empty when not asked for, and its work is skipped: an alpha step asks for grad_x only,
//   so the weight GEMMs never run.
//
// Layout (time-major inside the op; emodarts/ops/grouped_recurrent.py does the batch_first plumbing):
//   x      Kx tensors (T, B, I)   Kx = 1: every unit reads the same input; Kx = K: unit k reads x[k] (the
//                          deeper layers of multi-layer candidates: per-unit inputs, read in place, so a
//                          bidirectional layer's two directions read one tensor without a copy).
//   units  0 .. n_lstm-1 are LSTM (4 gates, PyTorch order i, f, g, o), n_lstm .. K-1 tanh-RNN (1 gate).
//          Unit k has g_k = 4H or H gate rows: w_ih[k] (g_k, I), w_hh[k] (g_k, H), b_ih[k] and b_hh[k] (g_k,),
//          its module's own parameters. Its gates take columns [goff_k, goff_k + g_k) of G = sum of g_k.
//   reverse[k] != 0: unit k runs backwards in time (the reverse direction of a bidirectional layer).
//   hs     (K, T, B, H)    every unit's h_t, in natural time order (the layer output).
//   cs     (n_lstm, T, B, H) the LSTM units' cell states (saved for backward).
//   gates  (T*B*G,)        workspace saved for backward: unit k's block (T, B, g_k*H) starts at T*B*goff_k
//                          and holds its activated gates (LSTM) or pre-activations (RNN, unused).
// h_0 = c_0 = 0, as nn.LSTM / nn.RNN called without hx.
// dtypes: x, weights and state all float32 or all float64; or bfloat16 x (and hs, grad_hs, grad_x) with float32
// weights, biases, cs and gates: the bf16 products of csrc/grouped_rnn_bf16.h (--amp bf16).
//
// Algorithm (the contract of docs/architecture.md: "Grouped recurrent layer"). Forward: the input projections of every
// time step as one GEMM, then the time loop: per step the recurrent GEMM gates_t += h_{t-1} W_hh^T and one
// fused epilogue (bias, gates, cell update, new h). Backward through time (d gates written to a workspace,
// dh carried through dgates W_hh), then the weight gradients as one GEMM each after the loop: dW_hh over all
// (T-1)*B rows at once, dW_ih = dgates^T x, dx = dgates W_ih.
// CPU mapping. The K units are independent, so the loops over units and time are interchanged: units are
// spread over threads (at::parallel_for, dynamic scheduling, LSTM units first) and each task runs one unit
// whole: its input GEMM, its time loop, and in backward its BPTT and weight GEMMs, on a unit-major workspace
// that stays in the core's cache (one (T*B, G) GEMM for all units up front measured slower: for the 48+
// candidates of a source the workspace is tens of MB and falls out of cache before the time loop reads it).
// There is no barrier per time step. The "batched recurrent GEMM over K" is thus K small GEMMs per step,
// run concurrently. The shared input's gradient dx = sum_k dgates_k W_ih_k is accumulated after the loop
// in unit order (deterministic for any thread count).
//
// GEMMs (csrc/cpu_common.h, shared with csrc/darts_rnn.cpp) call the BLAS that PyTorch links (MKL's
// sgemm_/dgemm_, exported by libtorch_cpu) directly: ATen's per-call overhead is several microseconds, as
// much as a whole tiny-preset step. When those symbols are absent (another BLAS build), or with
// EMODARTS_GROUPED_GEMM=aten, the same GEMMs go through ATen (at::mm_out / addmm_ on strided views of the
// same buffers). (Measured and dropped: a register-blocked
// GEMM fused with the epilogue. MKL's packed GEMM for W_hh was slower on an AMD EPYC, but 1.5x the plain sgemm
// per LSTM step at H = 128 on an Intel Xeon with AVX-512: the float32 forward packs W_hh where
// cpu_common::packed_gemm_pays says so.) On other CPUs with AVX-512 the per-step products run on our own tiles
// over W_hh packed once per call (csrc/panel_gemm.h, forward and backward), and the bf16 products on its
// vdpbf16ps twin (csrc/grouped_rnn_bf16.h).
// The epilogue is vectorised: float32 runs 8 lanes, or 16 on a CPU with AVX-512 (GCC/Clang vector
// extensions, csrc/grouped_rnn_kernels.h compiled for the baseline, for AVX2+FMA and for AVX-512F, picked at
// run time) with Cephes-style exp/tanh (max rel. error ~2e-7); float64 calls std::exp/std::tanh per element
// (the tests' precision path).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "panel_gemm.h"

#pragma GCC diagnostic ignored "-Wpsabi"


namespace emodarts {
namespace grouped_rnn_cpu {
namespace {

using at::Tensor;

#define EMO_INLINE inline __attribute__((always_inline))

// GEMMs (BLAS or ATen) and the AVX2 switch: csrc/cpu_common.h
using cpu_common::avx2_enabled;
using cpu_common::gemm_rm;
using cpu_common::use_blas;

// ---------------------------------------------------------------------------------------------------
// kernels: csrc/grouped_rnn_kernels.h, compiled for the baseline and (x86-64) for AVX2+FMA

#define EMODARTS_GRNN_NS baseline
#include "grouped_rnn_kernels.h"
#undef EMODARTS_GRNN_NS

#ifdef EMODARTS_CPU_HAVE_AVX2
EMODARTS_BEGIN_AVX2_FMA
#define EMODARTS_GRNN_NS avx2
#include "grouped_rnn_kernels.h"
#undef EMODARTS_GRNN_NS
EMODARTS_END_AVX2_FMA

EMODARTS_BEGIN_AVX512
#define EMODARTS_GRNN_NS avx512
#define EMODARTS_GRNN_VEC v16f
#include "grouped_rnn_kernels.h"
#undef EMODARTS_GRNN_NS
EMODARTS_END_AVX512
#endif

// float32 kernels of one instruction set, picked once at run time: AVX-512 (16 lanes) where the CPU has it,
// else AVX2 (8 lanes), else the baseline (EMODARTS_GROUPED_NO_AVX512=1 / EMODARTS_GROUPED_NO_AVX2=1 step down)
struct Epi {
  decltype(&baseline::lstm_fwd) lstm_fwd;
  decltype(&baseline::rnn_fwd) rnn_fwd;
  decltype(&baseline::lstm_bwd) lstm_bwd;
  decltype(&baseline::rnn_bwd) rnn_bwd;
};

#define EMODARTS_GRNN_EPI(NS)                                                                          \
  Epi {                                                                                                \
    NS::lstm_fwd, NS::rnn_fwd, NS::lstm_bwd, NS::rnn_bwd                                               \
  }

const Epi& float_epi() {
  static const Epi epi = [] {
#ifdef EMODARTS_CPU_HAVE_AVX2
    if (cpu_common::avx512_enabled()) return EMODARTS_GRNN_EPI(avx512);
    if (avx2_enabled()) return EMODARTS_GRNN_EPI(avx2);
#endif
    return EMODARTS_GRNN_EPI(baseline);
  }();
  return epi;
}

// typed front ends (float: the table above; double: the baseline templates, std::exp / std::tanh)
void lstm_fwd(int64_t B, int64_t H, float* g, int64_t ldg, const float* bias, const float* cp, float* c, float* h) {
  float_epi().lstm_fwd(B, H, g, ldg, bias, cp, c, h);
}
void lstm_fwd(int64_t B, int64_t H, double* g, int64_t ldg, const double* bias, const double* cp, double* c,
              double* h) {
  baseline::lstm_fwd_rows<double, double>(B, H, g, ldg, bias, cp, c, h);
}
void rnn_fwd(int64_t B, int64_t H, const float* g, int64_t ldg, const float* bias, float* h) {
  float_epi().rnn_fwd(B, H, g, ldg, bias, h);
}
void rnn_fwd(int64_t B, int64_t H, const double* g, int64_t ldg, const double* bias, double* h) {
  baseline::rnn_fwd_rows<double, double>(B, H, g, ldg, bias, h);
}
void lstm_bwd(int64_t B, int64_t H, const float* a, int64_t ldg, const float* c, const float* cp, const float* gh,
              const float* dhr, float* dc, float* dg, bool first) {
  float_epi().lstm_bwd(B, H, a, ldg, c, cp, gh, dhr, dc, dg, first);
}
void lstm_bwd(int64_t B, int64_t H, const double* a, int64_t ldg, const double* c, const double* cp,
              const double* gh, const double* dhr, double* dc, double* dg, bool first) {
  baseline::lstm_bwd_rows<double, double>(B, H, a, ldg, c, cp, gh, dhr, dc, dg, first);
}
void rnn_bwd(int64_t B, int64_t H, const float* h, const float* gh, const float* dhr, float* dg, int64_t ldg) {
  float_epi().rnn_bwd(B, H, h, gh, dhr, dg, ldg);
}
void rnn_bwd(int64_t B, int64_t H, const double* h, const double* gh, const double* dhr, double* dg,
             int64_t ldg) {
  baseline::rnn_bwd_rows<double, double>(B, H, h, gh, dhr, dg, ldg);
}

// ---------------------------------------------------------------------------------------------------
// shapes and checks

#include "grouped_rnn_plan.h"

// Runs fn(k) for every unit, units spread over threads by an atomic counter (LSTM units come first: the
// longest tasks start first). No time-step barrier: each task owns a whole time loop.
template <typename F>
void for_units(int64_t K, int64_t workers, const F& fn) {
  if (workers <= 1) {
    for (int64_t k = 0; k < K; ++k) fn(k, int64_t(0));
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      for (;;) {
        const int64_t k = next.fetch_add(1);
        if (k >= K) break;
        fn(k, w);
      }
    }
  });
}

int64_t n_workers(int64_t K) {
  if (at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(K, at::get_num_threads()));
}

// ---------------------------------------------------------------------------------------------------
// forward

// Unit k's parameters, read in place from the modules' own tensors (no concatenation per call).
template <typename T>
struct UnitPtrs {
  std::vector<const T*> x, w_ih, w_hh;  // x: Kx inputs (x[0] shared when Kx = 1)
  UnitPtrs(const std::vector<Tensor>& xs, const std::vector<Tensor>& wi, const std::vector<Tensor>& wh) {
    for (const auto& t : xs) x.push_back(t.const_data_ptr<T>());
    for (const auto& t : wi) w_ih.push_back(t.const_data_ptr<T>());
    for (const auto& t : wh) w_hh.push_back(t.const_data_ptr<T>());
  }
  const T* input(const Plan& p, int64_t k) const { return x[p.Kx == 1 ? 0 : k]; }
};

// Whether the float32 per-step products run on csrc/panel_gemm.h: where panel_gemm::f32_enabled says so, unless
// EMODARTS_GROUPED_NO_PACK=1 (read per call).
bool f32_panels_on() {
  return panel_gemm::f32_enabled() && !cpu_common::switched_off("EMODARTS_GROUPED_NO_PACK");
}

// Each worker's float32 W_hh packed for the per-step products (`on`: float32 inputs and f32_panels_on()):
// W_hh^T (H x gh) for the forward's gates += h W_hh^T, W_hh (gh x H) for the backward's dh = dgates W_hh.
struct F32Panels {
  bool on, fwd;
  int64_t H, words;
  std::unique_ptr<float[]> buf;
  F32Panels(const Plan& p, int64_t workers, int64_t H_, bool forward, bool float32)
      : on(float32 && f32_panels_on()),
        fwd(forward),
        H(H_),
        words(0) {
    const int64_t gmax = *std::max_element(p.gh.begin(), p.gh.end());
    if (on) words = forward ? panel_gemm::packed_words<panel_gemm::F32>(H, gmax)
                            : panel_gemm::packed_words<panel_gemm::F32>(gmax, H);
    buf = cpu_common::scratch_of<float>(workers * words);
  }
  template <typename T>
  const float* load(int64_t worker, const T* w_hh, int64_t gh) const {
    float* dst = buf.get() + worker * words;
    if constexpr (std::is_same_v<T, float>) {
      if (fwd)
        panel_gemm::pack<panel_gemm::F32>(w_hh, H, true, H, gh, dst);
      else
        panel_gemm::pack<panel_gemm::F32>(w_hh, H, false, gh, H, dst);
    }
    return dst;
  }
};

template <typename T>
void forward_impl(const Plan& p, const UnitPtrs<T>& w, const T* bias, T* hs, T* cs, T* gates) {
  const bool blas = use_blas();
  const int64_t T_ = p.T, B = p.B, H = p.H, I = p.I, BH = B * H, TB = T_ * B;
  const int64_t workers = n_workers(p.K);
  // float32: each unit's W_hh^T packed once for its T-1 products
  const F32Panels panels(p, workers, H, true, std::is_same_v<T, float>);
  for_units(p.K, workers, [&](int64_t k, int64_t wk) {
    const int64_t go = p.goff[k], gh = p.gh[k];
    const T* whh = w.w_hh[k];
    const T* b = bias + go;
    T* gk = gates + TB * go;  // this unit's (T, B, gh) block
    // input projection of every step at once: (TB, gh) = x_k (TB, I) W_ih_k^T
    gemm_rm<T>(blas, false, true, TB, gh, I, T(1), w.input(p, k), I, w.w_ih[k], I, T(0), gk, gh);
    T* hk = hs + k * T_ * BH;
    T* ck = k < p.KL ? cs + k * T_ * BH : nullptr;
    // float32 W_hh packed once for the T-1 recurrent products, where that pays (cpu_common.h)
    std::unique_ptr<cpu_common::PackedRhsT> packed;
    const float* panel = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      if (T_ > 1 && panels.on)
        panel = panels.load(wk, whh, gh);
      else if (blas && T_ > 2 && cpu_common::packed_gemm_pays(gh, H))
        packed = std::make_unique<cpu_common::PackedRhsT>(B, gh, H, whh, H);
    }
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = p.rev[k] ? T_ - 1 - s : s;
      const int64_t tp = p.rev[k] ? t + 1 : t - 1;
      T* gt = gk + t * B * gh;
      if (s > 0 && panel != nullptr) {  // gates_t += h_{t-1} W_hh^T
        if constexpr (std::is_same_v<T, float>) panel_gemm::gemm_f32(B, gh, H, hk + tp * BH, H, panel, 1.0f, gt, gh);
      } else if (s > 0 && packed) {
        if constexpr (std::is_same_v<T, float>) packed->accumulate(hk + tp * BH, H, gt, gh);
      } else if (s > 0) {
        gemm_rm<T>(blas, false, true, B, gh, H, T(1), hk + tp * BH, H, whh, H, T(1), gt, gh);
      }
      if (k < p.KL)
        lstm_fwd(B, H, gt, gh, b, s > 0 ? ck + tp * BH : nullptr, ck + t * BH, hk + t * BH);
      else
        rnn_fwd(B, H, gt, gh, b, hk + t * BH);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// backward

// Per-unit gradient outputs; an empty vector: that gradient is not wanted (its GEMMs are skipped).
template <typename T>
struct UnitGrads {
  std::vector<T*> dw_ih, dw_hh, db;
  explicit UnitGrads(std::vector<Tensor>& gi, std::vector<Tensor>& gh, std::vector<Tensor>& gb) {
    for (auto& t : gi) dw_ih.push_back(t.data_ptr<T>());
    for (auto& t : gh) dw_hh.push_back(t.data_ptr<T>());
    for (auto& t : gb) db.push_back(t.data_ptr<T>());
  }
};

// a bias gradient: the column sums of a unit's (rows, cols) d gates, in row order
template <typename T>
void column_sums(const T* dg, int64_t rows, int64_t cols, T* out) {
  std::fill(out, out + cols, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = dg + r * cols;
    for (int64_t j = 0; j < cols; ++j) out[j] += row[j];
  }
}

template <typename T>
void backward_impl(const Plan& p, const T* gh_all, const UnitPtrs<T>& w, const T* hs, const T* cs, const T* gates,
                   const std::vector<T*>& dx, const UnitGrads<T>& d, T* dgates, T* scratch, int64_t workers) {
  const bool blas = use_blas();
  const int64_t T_ = p.T, B = p.B, H = p.H, I = p.I, BH = B * H, TB = T_ * B;
  // float32: each unit's W_hh packed once for its T-1 products
  const F32Panels panels(p, workers, H, false, std::is_same_v<T, float>);
  for_units(p.K, workers, [&](int64_t k, int64_t wk) {
    const int64_t go = p.goff[k], gh = p.gh[k];
    const bool rev = p.rev[k];
    const T* whh = w.w_hh[k];
    const float* panel = nullptr;
    if constexpr (std::is_same_v<T, float>)
      if (T_ > 1 && panels.on) panel = panels.load(wk, whh, gh);
    const T* hk = hs + k * T_ * BH;
    const T* ck = k < p.KL ? cs + k * T_ * BH : nullptr;
    const T* ghk = gh_all + k * T_ * BH;
    const T* ak = gates + TB * go;  // saved activations, (T, B, gh)
    T* dgk = dgates + TB * go;      // d gates (pre-activation), (T, B, gh)
    T* dhr = scratch + wk * 2 * BH;  // dL/dh_t through h_{t+1}
    T* dc = dhr + BH;                // dL/dc carried between steps
    for (int64_t s = T_ - 1; s >= 0; --s) {
      const int64_t t = rev ? T_ - 1 - s : s;
      const int64_t tp = rev ? t + 1 : t - 1;  // previous step's time (s > 0)
      const int64_t tn = rev ? t - 1 : t + 1;  // next step's time (s < T-1)
      const bool last = s == T_ - 1;
      if (!last && panel != nullptr) {  // dh_rec = dgates_{t_next} W_hh
        if constexpr (std::is_same_v<T, float>)
          panel_gemm::gemm_f32(B, H, gh, dgk + tn * B * gh, gh, panel, 0.0f, dhr, H);
      } else if (!last) {
        gemm_rm<T>(blas, false, false, B, H, gh, T(1), dgk + tn * B * gh, gh, whh, H, T(0), dhr, H);
      }
      T* dg = dgk + t * B * gh;
      if (k < p.KL)
        lstm_bwd(B, H, ak + t * B * gh, gh, ck + t * BH, s > 0 ? ck + tp * BH : nullptr, ghk + t * BH,
                 last ? nullptr : dhr, dc, dg, last);
      else
        rnn_bwd(B, H, hk + t * BH, ghk + t * BH, last ? nullptr : dhr, dg, gh);
    }
    // weight gradients, one GEMM each over all steps (while this unit's d gates are still in cache):
    // dW_hh = sum over steps s >= 1 of dgates_t^T h_{t_prev} (rows (T-1)*B), dW_ih = dgates^T x
    const int64_t rows = (T_ - 1) * B;
    if (!d.dw_hh.empty()) {
      if (rows > 0)
        gemm_rm<T>(blas, true, false, gh, H, rows, T(1), dgk + (rev ? 0 : B * gh), gh, hk + (rev ? BH : 0), H, T(0),
                   d.dw_hh[k], H);
      else
        std::fill(d.dw_hh[k], d.dw_hh[k] + gh * H, T(0));
    }
    if (!d.dw_ih.empty())
      gemm_rm<T>(blas, true, false, gh, I, TB, T(1), dgk, gh, w.input(p, k), I, T(0), d.dw_ih[k], I);
    if (!dx.empty() && p.Kx != 1)  // dx of this unit's own input
      gemm_rm<T>(blas, false, false, TB, I, gh, T(1), dgk, gh, w.w_ih[k], I, T(0), dx[k], I);
    if (!d.db.empty()) column_sums(dgk, TB, gh, d.db[k]);
  });
  if (!dx.empty() && p.Kx == 1) {  // dx of the shared input = sum_k dgates_k W_ih_k, in unit order (deterministic)
    for (int64_t k = 0; k < p.K; ++k)
      gemm_rm<T>(blas, false, false, TB, I, p.gh[k], T(1), dgates + TB * p.goff[k], p.gh[k], w.w_ih[k], I,
                 k == 0 ? T(0) : T(1), dx[0], I);
  }
}

#include "grouped_rnn_bf16.h"

// ---------------------------------------------------------------------------------------------------
// the ops' entry points

std::tuple<Tensor, Tensor, Tensor> grouped_rnn_forward(at::TensorList xs_, at::TensorList w_ih_, at::TensorList w_hh_,
                                                       at::TensorList b_ih_, at::TensorList b_hh_, int64_t n_lstm,
                                                       at::IntArrayRef reverse) {
  const Plan p = make_plan(xs_, w_ih_, w_hh_, n_lstm, reverse);
  const Tensor& x_ = xs_[0];
  check_list(xs_, x_, "x", false);
  check_list(w_ih_, x_, "w_ih", true);
  check_list(w_hh_, x_, "w_hh", true);
  check_biases(p, b_ih_, b_hh_, x_);
  TORCH_CHECK(x_.device().is_cpu(), "grouped_rnn (CPU kernel) got a tensor on ", x_.device());
  const std::vector<Tensor> xs = contiguous_all(xs_), w_ih = contiguous_all(w_ih_), w_hh = contiguous_all(w_hh_);
  const auto opts = w_hh[0].options();  // the weights' dtype: x's, or float32 for bf16 inputs
  Tensor hs = at::empty({p.K, p.T, p.B, p.H}, x_.options());
  Tensor cs = at::empty({p.KL, p.T, p.B, p.H}, opts);
  Tensor gates = at::empty({p.T * p.B * p.G}, opts);
  Tensor bias = at::empty({p.G}, opts);  // b_ih + b_hh of every unit, at its gate offset
  for (int64_t k = 0; k < p.K; ++k) {
    Tensor rows = bias.narrow(0, p.goff[k], p.gh[k]);
    at::add_out(rows, b_ih_[k], b_hh_[k]);
  }
  if (x_.scalar_type() == at::kBFloat16) {
    forward_bf16(p, Bf16Ptrs(xs, w_ih, w_hh), bias.const_data_ptr<float>(), hs.data_ptr<BF16>(),
                 cs.data_ptr<float>(), gates.data_ptr<float>());
    return {hs, cs, gates};
  }
  AT_DISPATCH_FLOATING_TYPES(x_.scalar_type(), "grouped_rnn_forward", [&] {
    forward_impl<scalar_t>(p, UnitPtrs<scalar_t>(xs, w_ih, w_hh), bias.const_data_ptr<scalar_t>(),
                           hs.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>());
  });
  return {hs, cs, gates};
}

// one new tensor per unit shaped like `like[k]`, or none when not wanted
std::vector<Tensor> per_unit_like(const std::vector<Tensor>& like, bool wanted) {
  std::vector<Tensor> out;
  if (wanted)
    for (const auto& t : like) out.push_back(at::empty_like(t));
  return out;
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>> grouped_rnn_backward(
    const Tensor& grad_hs_, at::TensorList xs_, at::TensorList w_ih_, at::TensorList w_hh_, const Tensor& hs_,
    const Tensor& cs_, const Tensor& gates_, int64_t n_lstm, at::IntArrayRef reverse,
    std::array<bool, 4> output_mask) {
  const Plan p = make_plan(xs_, w_ih_, w_hh_, n_lstm, reverse);
  TORCH_CHECK(xs_[0].device().is_cpu(), "grouped_rnn (CPU kernel) got a tensor on ", xs_[0].device());
  check_saved(p, xs_, grad_hs_, w_ih_, w_hh_, hs_, cs_, gates_);
  const Tensor gh = grad_hs_.contiguous(), hs = hs_.contiguous(), cs = cs_.contiguous(), gates = gates_.contiguous();
  const std::vector<Tensor> xs = contiguous_all(xs_), w_ih = contiguous_all(w_ih_), w_hh = contiguous_all(w_hh_);
  const auto opts = w_hh[0].options();  // the weights' dtype: x's, or float32 for bf16 inputs
  std::vector<Tensor> dx = per_unit_like(xs, output_mask[0]), dw_ih = per_unit_like(w_ih, output_mask[1]),
                      dw_hh = per_unit_like(w_hh, output_mask[2]), db;
  if (output_mask[3])
    for (int64_t k = 0; k < p.K; ++k) db.push_back(at::empty({p.gh[k]}, opts));
  if (!(output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3])) return {dx, dw_ih, dw_hh, db};
  Tensor dgates = at::empty({p.T * p.B * p.G}, opts);
  if (xs[0].scalar_type() == at::kBFloat16) {
    Tensor dgates16 = at::empty({p.T * p.B * p.G}, xs[0].options());
    std::vector<BF16*> dxp;
    for (auto& t : dx) dxp.push_back(t.data_ptr<BF16>());
    backward_bf16(p, gh.const_data_ptr<BF16>(), Bf16Ptrs(xs, w_ih, w_hh), hs.const_data_ptr<BF16>(),
                  cs.const_data_ptr<float>(), gates.const_data_ptr<float>(), dxp, UnitGrads<float>(dw_ih, dw_hh, db),
                  dgates.data_ptr<float>(), dgates16.data_ptr<BF16>());
    return {dx, dw_ih, dw_hh, db};
  }
  const int64_t workers = n_workers(p.K);
  Tensor scratch = at::empty({workers, 2, p.B, p.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "grouped_rnn_backward", [&] {
    std::vector<scalar_t*> dxp;
    for (auto& t : dx) dxp.push_back(t.data_ptr<scalar_t>());
    backward_impl<scalar_t>(p, gh.const_data_ptr<scalar_t>(), UnitPtrs<scalar_t>(xs, w_ih, w_hh),
                            hs.const_data_ptr<scalar_t>(), cs.const_data_ptr<scalar_t>(),
                            gates.const_data_ptr<scalar_t>(), dxp, UnitGrads<scalar_t>(dw_ih, dw_hh, db),
                            dgates.data_ptr<scalar_t>(), scratch.data_ptr<scalar_t>(), workers);
  });
  return {dx, dw_ih, dw_hh, db};
}

// Which GEMM path the CPU kernel takes, for tests and benchmarks: "blas" or "aten", with "+panels" when the
// float32 per-step products run on csrc/panel_gemm.h; for bf16 inputs "avx512-bf16" (our dot-product kernel for
// the products through a weight), "blas-bf16" (MKL's bf16 GEMM) or "float32-copies".
std::string grouped_rnn_cpu_gemm(bool bf16) {
  if (bf16 && panel_gemm::bf16_enabled()) return "avx512-bf16";
  if (bf16) return cpu_common::bf16_blas() ? "blas-bf16" : "float32-copies";
  return std::string(use_blas() ? "blas" : "aten") + (f32_panels_on() ? "+panels" : "");
}

}  // namespace
}  // namespace grouped_rnn_cpu
}  // namespace emodarts

// FRAGMENT: the namespace is shared with the mixed-sum ops (csrc/mixed_sum.cpp) and the CUDA kernels.
TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def(
      "grouped_rnn_forward(Tensor[] x, Tensor[] w_ih, Tensor[] w_hh, Tensor[] b_ih, Tensor[] b_hh, int n_lstm, "
      "int[] reverse) -> (Tensor hs, Tensor cs, Tensor gates)");
  m.def(
      "grouped_rnn_backward(Tensor grad_hs, Tensor[] x, Tensor[] w_ih, Tensor[] w_hh, Tensor hs, Tensor cs, "
      "Tensor gates, int n_lstm, int[] reverse, bool[4] output_mask) -> (Tensor[] grad_x, Tensor[] grad_w_ih, "
      "Tensor[] grad_w_hh, Tensor[] grad_bias)");
  m.def("grouped_rnn_cpu_gemm(bool bf16=False) -> str", &emodarts::grouped_rnn_cpu::grouped_rnn_cpu_gemm);
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("grouped_rnn_forward", &emodarts::grouped_rnn_cpu::grouped_rnn_forward);
  m.impl("grouped_rnn_backward", &emodarts::grouped_rnn_cpu::grouped_rnn_backward);
}
