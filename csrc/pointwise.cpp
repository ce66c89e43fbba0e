// Bias-free 1x1 convolutions of several inputs in one call: the pointwise halves of every separable and
// dilated convolution candidate of a CNN search state, the factorized reduce and the cell preprocessing.
// At the search's channel counts (4-64) ATen's convolution and einsum pay more in copies, permutes and
// per-call overhead than in arithmetic; here each (input, batch item) is one small GEMM on the BLAS that
// PyTorch links, called directly on the tensors' own memory (csrc/cpu_common.h), or, when both channel counts
// are at most kSmall (the search's case), the register-blocked kernels of csrc/pointwise_kernels.h (no BLAS
// call overhead, which exceeds the arithmetic of an 8 x 8 x 240 product; the backward reads each gradient
// chunk once for both the input and the weight gradient; weight-gradient sums in T per chunk, then double).
//
//   emodarts::pointwise_fwd(Tensor[] xs, Tensor[] ws) -> Tensor[]
//       ys[i][b] = ws[i] @ xs[i][b]: x (B, C, H, W) contiguous, w (O, C) or (O, C, 1, 1), y (B, O, H, W).
//   emodarts::pointwise_bwd(Tensor[] grads, Tensor[] xs, Tensor[] ws) -> (Tensor[] grad_xs, Tensor[] grad_ws)
//       grad_x[b] = w^T @ g[b]; grad_w = sum over b of g[b] @ x[b]^T, summed in double in batch order.
//
// float32 or float64, CPU, one dtype per call. The (input, batch item) pairs are spread over the intra-op
// threads (at::parallel_for; each GEMM then runs on its thread alone); each weight gradient is summed from
// per-item products in a fixed order, so results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_common.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP) && defined(__linux__)
#error "csrc/*.cpp must be compiled with -fopenmp: torch uses OpenMP for intra-op parallelism"
#endif

namespace emodarts {
namespace pointwise_cpu {
namespace {

using at::Tensor;
using cpu_common::gemm_rm;

// channel counts up to this run the register-blocked kernels
constexpr int64_t kSmall = 64;

#define EMODARTS_PWNS baseline
#define EMODARTS_PWVB 16
#include "pointwise_kernels.h"
#undef EMODARTS_PWNS
#undef EMODARTS_PWVB

#ifdef EMODARTS_CPU_HAVE_AVX2
EMODARTS_BEGIN_AVX2_FMA
#define EMODARTS_PWNS avx2
#define EMODARTS_PWVB 32
#include "pointwise_kernels.h"
#undef EMODARTS_PWNS
#undef EMODARTS_PWVB
EMODARTS_END_AVX2_FMA
#endif

// columns per chunk: the chunk's input rows stay in L1 (about 32 KiB of float32)
int64_t chunk_cols(int64_t rows) { return std::max<int64_t>(32, std::min<int64_t>(1024, (8192 / std::max<int64_t>(1, rows)) / 16 * 16)); }

// y (O x P) = w (O x C) @ x (C x P), one batch item, with the small-channel kernels
template <typename T>
void small_forward(const T* w, const T* x, T* y, int64_t O, int64_t C, int64_t P, bool avx2) {
  const int64_t step = chunk_cols(C);
  for (int64_t p0 = 0; p0 < P; p0 += step) {
    const int64_t p1 = std::min(P, p0 + step);
#ifdef EMODARTS_CPU_HAVE_AVX2
    if (avx2) {
      avx2::rows_gemm<T>(w, O, C, x, P, y, P, p0, p1);
      continue;
    }
#endif
    baseline::rows_gemm<T>(w, O, C, x, P, y, P, p0, p1);
  }
}

// gx (C x P) = wt (C x O) @ g (O x P) and acc (O x C, double) += g @ x^T, one batch item, chunk by chunk
template <typename T>
void small_backward(const T* wt, const T* g, const T* x, T* gx, double* acc, int64_t O, int64_t C, int64_t P,
                    bool avx2) {
  const int64_t step = chunk_cols(std::max(O, C));
  for (int64_t p0 = 0; p0 < P; p0 += step) {
    const int64_t p1 = std::min(P, p0 + step);
#ifdef EMODARTS_CPU_HAVE_AVX2
    if (avx2) {
      if (gx) avx2::rows_gemm<T>(wt, C, O, g, P, gx, P, p0, p1);
      if (acc) avx2::wgrad_accumulate<T>(g, O, P, x, C, P, acc, p0, p1);
      continue;
    }
#endif
    if (gx) baseline::rows_gemm<T>(wt, C, O, g, P, gx, P, p0, p1);
    if (acc) baseline::wgrad_accumulate<T>(g, O, P, x, C, P, acc, p0, p1);
  }
}

bool small(int64_t O, int64_t C) { return O <= kSmall && C <= kSmall; }

struct Dims {
  int64_t B, C, O, P;
};

Dims check(const Tensor& x, const Tensor& w, const char* op, size_t i, at::ScalarType st) {
  TORCH_CHECK(x.dim() == 4, op, ": input ", i, " must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.scalar_type() == st, op, ": input ", i,
              " must be a contiguous CPU tensor of the call's dtype");
  TORCH_CHECK((w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) && w.size(1) == x.size(1), op,
              ": weight ", i, " must be (O, C) or (O, C, 1, 1) with C = ", x.size(1), ", got ", w.sizes());
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous() && w.scalar_type() == st, op, ": weight ", i,
              " must be a contiguous CPU tensor of the inputs' dtype");
  return {x.size(0), x.size(1), w.size(0), x.size(2) * x.size(3)};
}

at::ScalarType call_dtype(const std::vector<Tensor>& xs, const char* op) {
  TORCH_CHECK(!xs.empty(), op, ": no inputs");
  const at::ScalarType st = xs[0].scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, op, ": float32 or float64, got ", st);
  return st;
}

// every (input, batch item) pair of a call, and how many to give a thread at once
std::vector<std::pair<int64_t, int64_t>> items(const std::vector<Dims>& dims, int64_t element_size, int64_t& grain) {
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t bytes = 0;
  for (size_t i = 0; i < dims.size(); ++i) {
    for (int64_t b = 0; b < dims[i].B; ++b) out.emplace_back(static_cast<int64_t>(i), b);
    bytes += dims[i].B * (dims[i].C + dims[i].O) * dims[i].P * element_size;
  }
  const int64_t per = bytes / std::max<int64_t>(1, static_cast<int64_t>(out.size()));
  grain = cpu_common::grain_items(per);
  return out;
}

}  // namespace

std::vector<Tensor> pointwise_fwd(const std::vector<Tensor>& xs, const std::vector<Tensor>& ws) {
  const char* op = "emodarts::pointwise_fwd";
  const at::ScalarType st = call_dtype(xs, op);
  TORCH_CHECK(ws.size() == xs.size(), op, ": one weight per input");
  std::vector<Dims> dims;
  std::vector<Tensor> ys;
  for (size_t i = 0; i < xs.size(); ++i) {
    dims.push_back(check(xs[i], ws[i], op, i, st));
    ys.push_back(at::empty({xs[i].size(0), dims[i].O, xs[i].size(2), xs[i].size(3)}, xs[i].options()));
  }
  int64_t grain = 1;
  const auto work = items(dims, xs[0].element_size(), grain);
  const bool blas = cpu_common::use_blas();
  const bool avx2 = cpu_common::avx2_enabled();
  AT_DISPATCH_FLOATING_TYPES(st, "pointwise_fwd", [&] {
    at::parallel_for(0, static_cast<int64_t>(work.size()), grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const auto [i, b] = work[p];
        const Dims& d = dims[i];
        if (small(d.O, d.C)) {
          small_forward<scalar_t>(ws[i].data_ptr<scalar_t>(), xs[i].data_ptr<scalar_t>() + b * d.C * d.P,
                                  ys[i].data_ptr<scalar_t>() + b * d.O * d.P, d.O, d.C, d.P, avx2);
          continue;
        }
        gemm_rm<scalar_t>(blas, false, false, d.O, d.P, d.C, scalar_t(1), ws[i].data_ptr<scalar_t>(), d.C,
                          xs[i].data_ptr<scalar_t>() + b * d.C * d.P, d.P, scalar_t(0),
                          ys[i].data_ptr<scalar_t>() + b * d.O * d.P, d.P);
      }
    });
  });
  return ys;
}

// need_x[i] / need_w[i]: whether input i's / weight i's gradient is wanted; one that is not is neither
// computed nor returned (each result list holds the wanted gradients only, in order).
std::tuple<std::vector<Tensor>, std::vector<Tensor>> pointwise_bwd(const std::vector<Tensor>& grads,
                                                                   const std::vector<Tensor>& xs,
                                                                   const std::vector<Tensor>& ws,
                                                                   const c10::List<bool>& need_x_,
                                                                   const c10::List<bool>& need_w_) {
  const std::vector<bool> need_x = need_x_.vec(), need_w = need_w_.vec();
  const char* op = "emodarts::pointwise_bwd";
  const at::ScalarType st = call_dtype(xs, op);
  TORCH_CHECK(ws.size() == xs.size() && grads.size() == xs.size(), op, ": one weight and one gradient per input");
  TORCH_CHECK(need_x.size() == xs.size() && need_w.size() == xs.size(), op, ": one need_x and need_w flag per input");
  std::vector<Dims> dims;
  std::vector<Tensor> gxs(xs.size()), gws(xs.size()), parts(xs.size()), wts;
  for (size_t i = 0; i < xs.size(); ++i) {
    dims.push_back(check(xs[i], ws[i], op, i, st));
    const Dims& d = dims.back();
    TORCH_CHECK(grads[i].is_contiguous() && grads[i].scalar_type() == st && grads[i].dim() == 4 &&
                    grads[i].size(0) == d.B && grads[i].size(1) == d.O && grads[i].size(2) * grads[i].size(3) == d.P,
                op, ": gradient ", i, " must be a contiguous (B, O, H, W) tensor of the inputs' dtype");
    if (need_x[i]) gxs[i] = at::empty_like(xs[i]);
    if (need_w[i]) parts[i] = at::zeros({d.B, d.O, d.C}, xs[i].options().dtype(at::kDouble));
    wts.push_back(ws[i].reshape({d.O, d.C}).t().contiguous());
  }
  int64_t grain = 1;
  const auto work = items(dims, xs[0].element_size(), grain);
  const bool blas = cpu_common::use_blas();
  const bool avx2 = cpu_common::avx2_enabled();
  AT_DISPATCH_FLOATING_TYPES(st, "pointwise_bwd", [&] {
    at::parallel_for(0, static_cast<int64_t>(work.size()), grain, [&](int64_t p0, int64_t p1) {
      std::vector<scalar_t> prod;
      for (int64_t p = p0; p < p1; ++p) {
        const auto [i, b] = work[p];
        const Dims& d = dims[i];
        const scalar_t* g = grads[i].data_ptr<scalar_t>() + b * d.O * d.P;
        const scalar_t* x = xs[i].data_ptr<scalar_t>() + b * d.C * d.P;
        scalar_t* gx = need_x[i] ? gxs[i].data_ptr<scalar_t>() + b * d.C * d.P : nullptr;
        double* acc = need_w[i] ? parts[i].data_ptr<double>() + b * d.O * d.C : nullptr;
        if (small(d.O, d.C)) {
          small_backward<scalar_t>(wts[i].data_ptr<scalar_t>(), g, x, gx, acc, d.O, d.C, d.P, avx2);
          continue;
        }
        if (gx)
          gemm_rm<scalar_t>(blas, true, false, d.C, d.P, d.O, scalar_t(1), ws[i].data_ptr<scalar_t>(), d.C, g, d.P,
                            scalar_t(0), gx, d.P);
        if (!acc) continue;
        prod.resize(d.O * d.C);
        gemm_rm<scalar_t>(blas, false, true, d.O, d.C, d.P, scalar_t(1), g, d.P, x, d.P, scalar_t(0), prod.data(), d.C);
        for (int64_t k = 0; k < d.O * d.C; ++k) acc[k] = static_cast<double>(prod[k]);
      }
    });
    for (size_t i = 0; i < xs.size(); ++i) {
      if (!need_w[i]) continue;
      const Dims& d = dims[i];
      Tensor gw = at::empty(ws[i].sizes(), ws[i].options());
      scalar_t* out = gw.data_ptr<scalar_t>();
      const double* part = parts[i].data_ptr<double>();
      const int64_t n = d.O * d.C;
      for (int64_t k = 0; k < n; ++k) {
        double s = 0.0;
        for (int64_t b = 0; b < d.B; ++b) s += part[b * n + k];
        out[k] = static_cast<scalar_t>(s);
      }
      gws[i] = gw;
    }
  });
  return {cpu_common::wanted_only(gxs, need_x), cpu_common::wanted_only(gws, need_w)};
}

}  // namespace pointwise_cpu
}  // namespace emodarts

TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def("pointwise_fwd(Tensor[] xs, Tensor[] ws) -> Tensor[]");
  m.def("pointwise_bwd(Tensor[] grads, Tensor[] xs, Tensor[] ws, bool[] need_x, bool[] need_w) "
        "-> (Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("pointwise_fwd", &emodarts::pointwise_cpu::pointwise_fwd);
  m.impl("pointwise_bwd", &emodarts::pointwise_cpu::pointwise_bwd);
}
