// Multi-depthwise convolution on the CPU: the depthwise convolutions of every convolution candidate leaving
// one state of a DARTS CNN cell (3x3, 5x5, dilated 3x3 and 5x5; one stride), in one call.
//
//   multi_dw_fwd(xs, ws, dilations, stride, relu=False) -> outs
//   multi_dw_bwd(grads, xs, ws, dilations, stride, need_x, need_w, relu=False) -> (grad_xs, grad_ws)
//
// relu: the convolutions read ReLU(x) (a thread's copy of each plane, made while it is in cache) and grad_xs
// are the gradients of x itself (masked where x <= 0, as ReLU's backward): the shared ReLU of a state and the
// ReLU inside a separable convolution, without a ReLU'd map written and read back, nor its backward pass.
//
// need_x[j] / need_w[i]: whether the backward wants input j's / weight i's gradient; one it does not want is
// neither computed nor returned (each result list holds the wanted gradients only, in order): an alpha step
// wants no weight's.
//
// xs: one input (B, C, H, W) read by every candidate (the shared ReLU of a state), or one input per
// candidate (the second halves of the separable convolutions). ws[i]: (C, 1, k, k), k odd, padding
// dilations[i] * (k - 1) / 2, so every output is (B, C, (H - 1) / s + 1, (W - 1) / s + 1). float32 and float64,
// contiguous (the Python wrapper, emodarts/ops/multi_depthwise.py, makes them so and upcasts bf16/fp16).
//
// Work is split over channels with at::parallel_for: a thread owns channel c of every batch item and every
// candidate, so it reads each input plane once for all candidates while it is in cache, writes its own
// gradient planes and weight-gradient rows (no atomics; the same bits whatever the thread count). The
// weight gradients sum per plane in 8 partial sums of the input type, then across planes in double.
// Plane kernels: csrc/multi_dw_kernels.h (baseline and AVX2+FMA copies; EMODARTS_GROUPED_NO_AVX2=1 picks the
// baseline, as for the other kernels): register-blocked ones (csrc/multi_dw_blocked.h) for kernel 3 or 5,
// dilation 1 or 2, stride 1 or 2, which read a thread's padded / phase-split copy of the plane
// (csrc/multi_dw_scratch.h), and plain loops for any other size. Reference twin: F.conv2d per candidate
// (emodarts/ops/multi_depthwise.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu_common.h"
#include "multi_dw_scratch.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP) && defined(__linux__)
#error "csrc/*.cpp must be compiled with -fopenmp: torch uses OpenMP for intra-op parallelism"
#endif

namespace emodarts {
namespace multi_dw_cpu {
namespace {

using at::Tensor;

// register blocks of csrc/multi_dw_blocked.h: output rows x vectors of 8 (forward, input gradient), taps per
// weight-gradient pass; the baseline copy has half the vector registers (SSE: 8 floats in two)
#define EMODARTS_MDW_NS baseline
#define EMODARTS_MDW_ROWS 2
#define EMODARTS_MDW_ROWS_BIG 2
#define EMODARTS_MDW_VECS 1
#define EMODARTS_MDW_WGROUP 5
#include "multi_dw_kernels.h"
#undef EMODARTS_MDW_WGROUP
#undef EMODARTS_MDW_VECS
#undef EMODARTS_MDW_ROWS_BIG
#undef EMODARTS_MDW_ROWS
#undef EMODARTS_MDW_NS

#ifdef EMODARTS_CPU_HAVE_AVX2
EMODARTS_BEGIN_AVX2_FMA
#define EMODARTS_MDW_NS avx2
#define EMODARTS_MDW_ROWS 4
#define EMODARTS_MDW_ROWS_BIG 2
#define EMODARTS_MDW_VECS 2
#define EMODARTS_MDW_WGROUP 10
#include "multi_dw_kernels.h"
#undef EMODARTS_MDW_WGROUP
#undef EMODARTS_MDW_VECS
#undef EMODARTS_MDW_ROWS_BIG
#undef EMODARTS_MDW_ROWS
#undef EMODARTS_MDW_NS
EMODARTS_END_AVX2_FMA
#endif

template <typename T>
struct Kernels {
  decltype(&baseline::plane_fwd<T>) fwd;  // any (k, d, stride), straight from the planes
  decltype(&baseline::plane_bwd<T>) bwd;
  decltype(&baseline::fast_load_x<T>) load_x;  // mdw_fast (k, d, stride), through MdwScratch
  decltype(&baseline::fast_fwd<T>) fast_fwd;
  decltype(&baseline::fast_load_go<T>) load_go;
  decltype(&baseline::fast_bwd<T>) fast_bwd;
  decltype(&baseline::fast_gx4_zero<T>) gx4_zero;
  decltype(&baseline::fast_gx4_flush<T>) gx4_flush;
};

#define EMODARTS_MDW_KERNELS(ns)                                                                        \
  Kernels<T> {                                                                                          \
    ns::plane_fwd<T>, ns::plane_bwd<T>, ns::fast_load_x<T>, ns::fast_fwd<T>, ns::fast_load_go<T>,         \
        ns::fast_bwd<T>, ns::fast_gx4_zero<T>, ns::fast_gx4_flush<T>                                    \
  }

template <typename T>
Kernels<T> kernels() {
#ifdef EMODARTS_CPU_HAVE_AVX2
  if (std::is_same<T, float>::value && cpu_common::avx2_enabled()) return EMODARTS_MDW_KERNELS(avx2);
#endif
  return EMODARTS_MDW_KERNELS(baseline);
}
#undef EMODARTS_MDW_KERNELS

struct Geometry {
  int64_t B, C, H, W, Ho, Wo, stride, n;
  bool shared;
  std::vector<int64_t> k, d, p;
  std::vector<bool> fast;  // mdw_fast: the register-blocked kernels (multi_dw_blocked.h)
  bool any_fast = false;
};

Geometry check(at::TensorList xs, at::TensorList ws, at::IntArrayRef dilations, int64_t stride) {
  const int64_t n = static_cast<int64_t>(ws.size());
  TORCH_CHECK(n >= 1, "multi_dw: no candidates");
  TORCH_CHECK(xs.size() == 1 || static_cast<int64_t>(xs.size()) == n,
              "multi_dw: give one shared input or one input per candidate, got ", xs.size(), " inputs for ", n);
  TORCH_CHECK(static_cast<int64_t>(dilations.size()) == n, "multi_dw: ", dilations.size(), " dilations for ", n,
              " candidates");
  TORCH_CHECK(stride >= 1, "multi_dw: stride must be positive, got ", stride);
  const Tensor& x0 = xs[0];
  TORCH_CHECK(x0.dim() == 4, "multi_dw: inputs must be (B, C, H, W), got ", x0.sizes());
  TORCH_CHECK(x0.scalar_type() == at::kFloat || x0.scalar_type() == at::kDouble,
              "multi_dw: float32 or float64 inputs, got ", x0.scalar_type());
  Geometry g{x0.size(0), x0.size(1), x0.size(2), x0.size(3), 0, 0, stride, n, xs.size() == 1, {}, {}, {}, {}, false};
  TORCH_CHECK(g.H >= 1 && g.W >= 1, "multi_dw: empty spatial size ", x0.sizes());
  g.Ho = (g.H - 1) / stride + 1;
  g.Wo = (g.W - 1) / stride + 1;
  for (const Tensor& x : xs) {
    TORCH_CHECK(x.sizes() == x0.sizes() && x.scalar_type() == x0.scalar_type() && x.is_contiguous() &&
                    x.device().is_cpu(),
                "multi_dw: inputs must share one shape and dtype, be contiguous and on the CPU");
  }
  // The register-blocked kernels are the default; EMODARTS_DW_BLOCKED=0 (read per call, so a test can switch
  // it) runs the plain plane loops for every candidate instead.
  const char* env = std::getenv("EMODARTS_DW_BLOCKED");
  const bool blocked = env == nullptr || std::strcmp(env, "0") != 0;
  for (int64_t i = 0; i < n; ++i) {
    const Tensor& w = ws[i];
    TORCH_CHECK(w.dim() == 4 && w.size(0) == g.C && w.size(1) == 1 && w.size(2) == w.size(3) && w.size(2) % 2 == 1,
                "multi_dw: weight ", i, " must be (C, 1, k, k) with k odd and C = ", g.C, ", got ", w.sizes());
    TORCH_CHECK(w.scalar_type() == x0.scalar_type() && w.is_contiguous() && w.device().is_cpu(),
                "multi_dw: weight ", i, " must match the inputs' dtype, be contiguous and on the CPU");
    TORCH_CHECK(dilations[i] >= 1, "multi_dw: dilation must be positive, got ", dilations[i]);
    g.k.push_back(w.size(2));
    g.d.push_back(dilations[i]);
    g.p.push_back(dilations[i] * (w.size(2) - 1) / 2);
    g.fast.push_back(blocked && mdw_fast(w.size(2), dilations[i], stride));
    g.any_fast = g.any_fast || g.fast.back();
  }
  return g;
}

// channels per task: a channel's planes read and written, every batch item and candidate
int64_t channel_grain(const Geometry& g, int64_t element_size) {
  const int64_t inputs = g.shared ? 1 : g.n;
  return cpu_common::grain_items(g.B * (inputs * g.H * g.W + g.n * g.Ho * g.Wo) * element_size);
}

// The input plane a candidate reads: x itself, or with `relu` a thread's ReLU'd copy of it (NaN stays NaN, as
// F.relu), made once per input and plane; reset() when the next plane begins.
template <typename T>
class PlaneInput {
 public:
  PlaneInput(bool relu, int64_t n) : relu_(relu), n_(n), buf_(relu ? n : 0) {}
  void reset() { held_ = -1; }
  const T* get(const T* x, int64_t j) {
    if (!relu_) return x;
    if (held_ != j)
      for (int64_t p = 0; p < n_; ++p) buf_[p] = x[p] < T(0) ? T(0) : x[p];
    held_ = j;
    return buf_.data();
  }

 private:
  bool relu_;
  int64_t n_, held_ = -1;
  std::vector<T> buf_;
};

// grad *= (x > 0) over one plane: ReLU's backward (0 where x <= 0 or NaN)
template <typename T>
void relu_mask(const T* x, T* grad, int64_t n) {
  for (int64_t p = 0; p < n; ++p) grad[p] = x[p] > T(0) ? grad[p] : T(0);
}

template <typename T>
std::vector<Tensor> fwd_typed(at::TensorList xs, at::TensorList ws, const Geometry& g, bool relu) {
  std::vector<Tensor> outs;
  for (int64_t i = 0; i < g.n; ++i) outs.push_back(at::empty({g.B, g.C, g.Ho, g.Wo}, xs[0].options()));
  const Kernels<T> kern = kernels<T>();
  const int64_t in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
  at::parallel_for(0, g.C, channel_grain(g, sizeof(T)), [&](int64_t c0, int64_t c1) {
    std::unique_ptr<MdwScratch<T>> sc;
    if (g.any_fast) sc.reset(new MdwScratch<T>(g.H, g.W, g.stride, false));
    PlaneInput<T> input(relu, in_plane);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t b = 0; b < g.B; ++b) {
        int64_t loaded = -1;  // the input in the scratch
        input.reset();
        for (int64_t i = 0; i < g.n; ++i) {
          const int64_t j = g.shared ? 0 : i;
          const T* x = input.get(xs[j].template data_ptr<T>() + (b * g.C + c) * in_plane, j);
          const T* w = ws[i].template data_ptr<T>() + c * g.k[i] * g.k[i];
          T* out = outs[i].template data_ptr<T>() + (b * g.C + c) * out_plane;
          if (!g.fast[i]) {
            kern.fwd(x, g.H, g.W, w, g.k[i], g.d[i], g.stride, g.p[i], out, g.Ho, g.Wo);
            continue;
          }
          if (loaded != j) {
            kern.load_x(*sc, x);
            loaded = j;
          }
          kern.fast_fwd(*sc, w, g.k[i], g.d[i], out);
        }
      }
  });
  return outs;
}

template <typename T>
std::tuple<std::vector<Tensor>, std::vector<Tensor>> bwd_typed(at::TensorList grads, at::TensorList xs,
                                                               at::TensorList ws, const Geometry& g,
                                                               const std::vector<bool>& need_x,
                                                               const std::vector<bool>& need_w, bool relu) {
  std::vector<Tensor> gxs(xs.size()), gws(g.n), gw64(g.n);
  // when every candidate takes the blocked kernels, the first one of an input plane writes its gradient
  // (stride 1) or the phases are written once (stride 2): no zero fill
  const bool all_fast = std::all_of(g.fast.begin(), g.fast.end(), [](bool f) { return f; });
  for (size_t j = 0; j < xs.size(); ++j)
    if (need_x[j]) gxs[j] = all_fast ? at::empty_like(xs[j]) : at::zeros_like(xs[j]);
  for (int64_t i = 0; i < g.n; ++i)
    if (need_w[i]) gw64[i] = at::zeros(ws[i].sizes(), ws[i].options().dtype(at::kDouble));
  std::vector<Tensor> go;
  for (int64_t i = 0; i < g.n; ++i) go.push_back(grads[i].contiguous());
  const Kernels<T> kern = kernels<T>();
  const int64_t in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
  // stride 2: the fast kernels gather an input's gradient in the scratch's phases, flushed into gx once per
  // plane and input (after every candidate of a shared input)
  const bool phased = g.any_fast && g.stride == 2;
  at::parallel_for(0, g.C, channel_grain(g, sizeof(T)), [&](int64_t c0, int64_t c1) {
    std::unique_ptr<MdwScratch<T>> sc;
    if (g.any_fast) sc.reset(new MdwScratch<T>(g.H, g.W, g.stride, true));
    PlaneInput<T> input(relu, in_plane);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t b = 0; b < g.B; ++b) {
        int64_t loaded = -1;  // the input in the scratch
        input.reset();
        for (int64_t i = 0; i < g.n; ++i) {
          const int64_t j = g.shared ? 0 : i;
          const int64_t kk = g.k[i] * g.k[i];
          const T* gop = go[i].template data_ptr<T>() + (b * g.C + c) * out_plane;
          const T* w = ws[i].template data_ptr<T>() + c * kk;
          T* gx = need_x[j] ? gxs[j].template data_ptr<T>() + (b * g.C + c) * in_plane : nullptr;
          double* gw = need_w[i] ? gw64[i].template data_ptr<double>() + c * kk : nullptr;
          if (!gx && !gw) continue;
          const T* x = input.get(xs[j].template data_ptr<T>() + (b * g.C + c) * in_plane, j);
          if (!g.fast[i]) {
            kern.bwd(gop, x, g.H, g.W, w, g.k[i], g.d[i], g.stride, g.p[i], g.Ho, g.Wo, gx, gw);
            continue;
          }
          const bool first = loaded != j;
          if (first) {
            if (phased && loaded >= 0 && need_x[loaded])
              kern.gx4_flush(*sc, gxs[loaded].template data_ptr<T>() + (b * g.C + c) * in_plane, all_fast);
            kern.load_x(*sc, x);
            if (phased && gx) kern.gx4_zero(*sc);
            loaded = j;
          }
          kern.load_go(*sc, gop);
          kern.fast_bwd(*sc, w, g.k[i], g.d[i], gx, gw, all_fast && first);
        }
        if (phased && loaded >= 0 && need_x[loaded])
          kern.gx4_flush(*sc, gxs[loaded].template data_ptr<T>() + (b * g.C + c) * in_plane, all_fast);
        // every candidate of this plane is in: the gradients of the ReLU's output become those of its input
        if (relu)
          for (size_t j = 0; j < xs.size(); ++j)
            if (need_x[j])
              relu_mask(xs[j].template data_ptr<T>() + (b * g.C + c) * in_plane,
                        gxs[j].template data_ptr<T>() + (b * g.C + c) * in_plane, in_plane);
      }
  });
  for (int64_t i = 0; i < g.n; ++i)
    if (need_w[i]) gws[i] = gw64[i].to(ws[i].scalar_type());
  return {cpu_common::wanted_only(gxs, need_x), cpu_common::wanted_only(gws, need_w)};
}

std::vector<Tensor> multi_dw_fwd(at::TensorList xs, at::TensorList ws, at::IntArrayRef dilations, int64_t stride,
                                 bool relu) {
  const Geometry g = check(xs, ws, dilations, stride);
  return xs[0].scalar_type() == at::kFloat ? fwd_typed<float>(xs, ws, g, relu) : fwd_typed<double>(xs, ws, g, relu);
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>> multi_dw_bwd(at::TensorList grads, at::TensorList xs,
                                                                  at::TensorList ws, at::IntArrayRef dilations,
                                                                  int64_t stride, const c10::List<bool>& need_x_,
                                                                  const c10::List<bool>& need_w_, bool relu) {
  const Geometry g = check(xs, ws, dilations, stride);
  TORCH_CHECK(need_x_.size() == xs.size() && static_cast<int64_t>(need_w_.size()) == g.n,
              "multi_dw_bwd: need_x and need_w must have one flag per input and per weight");
  const std::vector<bool> need_x = need_x_.vec(), need_w = need_w_.vec();
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == g.n, "multi_dw_bwd: ", grads.size(), " gradients for ", g.n,
              " candidates");
  for (int64_t i = 0; i < g.n; ++i) {
    TORCH_CHECK(grads[i].dim() == 4 && grads[i].size(0) == g.B && grads[i].size(1) == g.C &&
                    grads[i].size(2) == g.Ho && grads[i].size(3) == g.Wo &&
                    grads[i].scalar_type() == xs[0].scalar_type(),
                "multi_dw_bwd: gradient ", i, " must be (", g.B, ", ", g.C, ", ", g.Ho, ", ", g.Wo, ") of the inputs' dtype");
  }
  return xs[0].scalar_type() == at::kFloat ? bwd_typed<float>(grads, xs, ws, g, need_x, need_w, relu)
                                            : bwd_typed<double>(grads, xs, ws, g, need_x, need_w, relu);
}

}  // namespace
}  // namespace multi_dw_cpu
}  // namespace emodarts

TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def("multi_dw_fwd(Tensor[] xs, Tensor[] ws, int[] dilations, int stride, bool relu=False) -> Tensor[]");
  m.def("multi_dw_bwd(Tensor[] grads, Tensor[] xs, Tensor[] ws, int[] dilations, int stride, bool[] need_x, "
        "bool[] need_w, bool relu=False) -> (Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("multi_dw_fwd", &emodarts::multi_dw_cpu::multi_dw_fwd);
  m.impl("multi_dw_bwd", &emodarts::multi_dw_cpu::multi_dw_bwd);
}
