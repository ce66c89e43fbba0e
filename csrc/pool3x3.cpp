// The 3x3 pool pair of the CNN search cells on the CPU: max and average pool (padding 1, stride 1 or 2) of
// one input, from one read of it, and their backward in one call.
//
//   emodarts::pool3x3_fwd(Tensor x, int stride) -> (Tensor max_out, Tensor avg_out)
//       max_out = max_pool2d(x, 3, stride, 1) (padding counts as -inf; NaN propagates as in ATen),
//       avg_out = avg_pool2d(x, 3, stride, 1, count_include_pad=False) (mean of the in-bounds elements).
//   emodarts::pool3x3_bwd(Tensor? grad_max, Tensor? grad_avg, Tensor x, int stride) -> Tensor grad_x
//       the gradient of x from either or both outputs' gradients (a missing one contributes nothing). The
//       max part recomputes each window's argmax from x (no saved indices) with ATen's rule, so the
//       gradient goes to the element max_pool2d_with_indices would pick: the first maximum in row-major
//       scan order, a NaN (the last NaN of the window) over any number.
//   emodarts::pool3x3_cpu_info() -> str      the kernel copy a call runs here (benchmarks record it)
//
// x: (B, C, H, W), H, W >= 1, float32, float64 or bfloat16 (bf16 computed in fp32, outputs and grad_x in
// bf16), any strides: a non-contiguous input (channels_last included) is made contiguous once; the outputs
// and grad_x are contiguous (N, C, H, W). Output size per spatial dim: (n - 1) / stride + 1, as ATen's
// floor((n + 2 - 3) / stride) + 1.
//
// float32 / float64 results are bitwise ATen's CPU results (same operations in the same order per element, see
// csrc/pool3x3_kernels.h); bf16 keeps fp32 partial sums and rounds once (ATen's bf16 backward rounds after every
// addition). Work: the B * C planes are spread over the intra-op threads with at::parallel_for, calls that move less
// than cpu_common::parallel_grain_bytes() staying on one thread; every plane is computed alone, so results do not
// depend on the number of threads. Inside a plane the kernels run along W in vectors (GCC/Clang vector extensions),
// compiled twice: a baseline copy (SSE2 / NEON) and, on x86-64, an AVX2 + FMA copy picked at run time when the CPU
// has both, unless EMODARTS_GROUPED_NO_AVX2 is set (csrc/cpu_common.h; read once per process). Both copies give the
// same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu_common.h"

// at::parallel_for forks threads only in a source compiled with -fopenmp (see csrc/mixed_sum.cpp)
#if AT_PARALLEL_OPENMP && !defined(_OPENMP) && defined(__linux__)
#error "csrc/*.cpp must be compiled with -fopenmp: torch uses OpenMP for intra-op parallelism"
#endif

namespace emodarts {
namespace pool3x3_cpu {
namespace {

using at::Tensor;

template <typename T>
struct Compute {
  using type = T;
};
template <>
struct Compute<c10::BFloat16> {
  using type = float;
};

// ---------------------------------------------------------------------------------------------------
// the plane kernels, once per instruction set

#define EMODARTS_PKNS baseline
#define EMODARTS_PVB 16
#include "pool3x3_kernels.h"
#undef EMODARTS_PKNS
#undef EMODARTS_PVB

#ifdef EMODARTS_CPU_HAVE_AVX2
EMODARTS_BEGIN_AVX2_FMA
#define EMODARTS_PKNS avx2
#define EMODARTS_PVB 32
#include "pool3x3_kernels.h"
#undef EMODARTS_PKNS
#undef EMODARTS_PVB
EMODARTS_END_AVX2_FMA
#endif

bool use_avx2() { return cpu_common::avx2_enabled(); }

// ---------------------------------------------------------------------------------------------------
// checks and dispatch

int64_t out_size(int64_t n, int64_t stride) { return (n - 1) / stride + 1; }

void check_x(const Tensor& x, int64_t stride, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be (B, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), op, ": x is not a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kBFloat16,
              op, ": unsupported dtype ", x.scalar_type(), " (float32, float64, bfloat16)");
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, op, ": empty spatial size ", x.sizes());
}

// Calls f(T(), std::integral_constant<int, S>()) for x's dtype and the stride.
template <typename F>
void dispatch(at::ScalarType st, int64_t stride, F&& f) {
  auto with_stride = [&](auto tag) {
    if (stride == 1) f(tag, std::integral_constant<int, 1>());
    else f(tag, std::integral_constant<int, 2>());
  };
  switch (st) {
    case at::kFloat: with_stride(float()); return;
    case at::kDouble: with_stride(double()); return;
    case at::kBFloat16: with_stride(c10::BFloat16()); return;
    default: TORCH_CHECK(false, "emodarts::pool3x3: unsupported dtype ", st);
  }
}

// ---------------------------------------------------------------------------------------------------
// operators

std::tuple<Tensor, Tensor> pool3x3_fwd(const Tensor& x_in, int64_t stride) {
  check_x(x_in, stride, "emodarts::pool3x3_fwd");
  const Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = out_size(H, stride), Wo = out_size(W, stride);
  Tensor mo = at::empty({B, C, Ho, Wo}, x.options());
  Tensor ao = at::empty({B, C, Ho, Wo}, x.options());
  const int64_t planes = B * C;
  if (planes == 0) return {mo, ao};
  const int64_t es = x.element_size();
  const int64_t grain = cpu_common::grain_items((H * W + 2 * Ho * Wo) * es);
  const bool avx2 = use_avx2();
  dispatch(x.scalar_type(), stride, [&](auto tag, auto sc) {
    using T = decltype(tag);
    constexpr int S = decltype(sc)::value;
    const T* xp = x.const_data_ptr<T>();
    T* mp = mo.mutable_data_ptr<T>();
    T* ap = ao.mutable_data_ptr<T>();
    at::parallel_for(0, planes, grain, [&](int64_t p0, int64_t p1) {
#ifdef EMODARTS_CPU_HAVE_AVX2
      if (avx2) return avx2::fwd_range<T, S>(xp, mp, ap, H, W, Ho, Wo, p0, p1);
#endif
      baseline::fwd_range<T, S>(xp, mp, ap, H, W, Ho, Wo, p0, p1);
    });
  });
  return {mo, ao};
}

Tensor grad_operand(const std::optional<Tensor>& g, const Tensor& x, int64_t Ho, int64_t Wo, const char* name) {
  if (!g.has_value() || !g->defined()) return Tensor();
  TORCH_CHECK(g->device().is_cpu(), "emodarts::pool3x3_bwd: ", name, " is not a CPU tensor");
  TORCH_CHECK(g->dim() == 4 && g->size(0) == x.size(0) && g->size(1) == x.size(1) && g->size(2) == Ho &&
                  g->size(3) == Wo,
              "emodarts::pool3x3_bwd: ", name, " has shape ", g->sizes(), ", the outputs are ",
              at::IntArrayRef({x.size(0), x.size(1), Ho, Wo}));
  return g->to(x.scalar_type()).contiguous();
}

Tensor pool3x3_bwd(const std::optional<Tensor>& grad_max, const std::optional<Tensor>& grad_avg,
                   const Tensor& x_in, int64_t stride) {
  check_x(x_in, stride, "emodarts::pool3x3_bwd");
  const Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = out_size(H, stride), Wo = out_size(W, stride);
  const Tensor gm = grad_operand(grad_max, x, Ho, Wo, "grad_max");
  const Tensor ga = grad_operand(grad_avg, x, Ho, Wo, "grad_avg");
  const bool hm = gm.defined(), ha = ga.defined();
  if (!hm && !ha) return at::zeros({B, C, H, W}, x.options());
  Tensor gx = at::empty({B, C, H, W}, x.options());
  const int64_t planes = B * C;
  if (planes == 0) return gx;
  const int64_t es = x.element_size();
  const int64_t grain = cpu_common::grain_items((2 * H * W + (int64_t(hm) + int64_t(ha)) * Ho * Wo) * es);
  const bool avx2 = use_avx2();
  dispatch(x.scalar_type(), stride, [&](auto tag, auto sc) {
    using T = decltype(tag);
    constexpr int S = decltype(sc)::value;
    const T* xp = x.const_data_ptr<T>();
    const T* gmp = hm ? gm.const_data_ptr<T>() : nullptr;
    const T* gap = ha ? ga.const_data_ptr<T>() : nullptr;
    T* gxp = gx.mutable_data_ptr<T>();
    at::parallel_for(0, planes, grain, [&](int64_t p0, int64_t p1) {
#ifdef EMODARTS_CPU_HAVE_AVX2
      if (avx2) return avx2::bwd_range<T, S>(xp, gmp, gap, gxp, H, W, Ho, Wo, p0, p1);
#endif
      baseline::bwd_range<T, S>(xp, gmp, gap, gxp, H, W, Ho, Wo, p0, p1);
    });
  });
  return gx;
}

std::string pool3x3_cpu_info() { return cpu_common::cpu_info(use_avx2()); }

}  // namespace
}  // namespace pool3x3_cpu
}  // namespace emodarts

TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def("pool3x3_fwd(Tensor x, int stride) -> (Tensor, Tensor)");
  m.def("pool3x3_bwd(Tensor? grad_max, Tensor? grad_avg, Tensor x, int stride) -> Tensor");
  m.def("pool3x3_cpu_info() -> str", &emodarts::pool3x3_cpu::pool3x3_cpu_info);
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("pool3x3_fwd", &emodarts::pool3x3_cpu::pool3x3_fwd);
  m.impl("pool3x3_bwd", &emodarts::pool3x3_cpu::pool3x3_bwd);
}
