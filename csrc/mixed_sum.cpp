// C++ CPU twin of the Triton mixed-sum kernels (kernels/mixed_sum.py).
//
//   emodarts::mixed_sum_fwd(Tensor[] ys, Tensor alpha, int[] index) -> Tensor
//       out = sum_i p[index[i]] * ys[i] with p = softmax(alpha, -1) flattened (index[i] = e_i * M + m_i),
//       fp32 accumulation, one read of each y, one write of out.
//   emodarts::mixed_sum_bwd(Tensor grad_out, Tensor[] ys, Tensor alpha, int[] index, bool[2] output_mask)
//       -> (Tensor[], Tensor)
//       output_mask: (the inputs' gradients, alpha's) wanted; grad_ys is empty and grad_alpha undefined (None)
//       when not, and their work is skipped (a weight step reads no y, an alpha step into a part with no
//       alpha upstream writes no grad_y).
//       grad_ys[i] = p[index[i]] * grad_out and grad_alpha, in one pass: each block of grad_out is read once,
//       then every y block is read once and every grad_y block written once, accumulating the dot products
//       d_i = <grad_out, ys[i]>; the epilogue on (E, M) scatters them (repeated entries add up) and applies
//       the softmax Jacobian: grad_alpha[e, k] = p[e, k] * (D[e, k] - sum_j p[e, j] D[e, j]).
//
// The softmax and the epilogue run here, in double, so that a call is one operator and no small ATen ops (on a small
// CPU those cost more than the sum itself at tiny-preset sizes). Inputs may be float32, bfloat16 or float16 (mixed:
// the output takes the promoted dtype), any shape, any strides: inputs whose layout differs from the output's are
// read in place through their strides (never copied). Layout rules mirror kernels/layout.py: the fake kernels promise
// the output strides and dtype with it, and tests/test_mixed_sum.py::test_cpp_and_python_layout_rules_agree fails
// when the two disagree. Work is split into blocks of kBlock elements and spread over the intra-op threads with
// at::parallel_for (calls that move less than cpu_common::parallel_grain_bytes() stay on one thread). Within a block,
// up to 8 flat inputs of one dtype are streamed together (like the Triton kernel's 8 pointers per launch) with
// explicit vectors (GCC/Clang vector extensions), which keeps several memory streams in flight and the fp32
// accumulator in registers; the sum runs left to right as in the reference. Dot products are accumulated in fp32
// lanes per input, flushed into double every 256 elements; the per-block partials are reduced in double, in block
// order (deterministic for any number of threads). The block kernels live in mixed_sum_kernels.h, compiled twice: a
// baseline copy (SSE2 / NEON, 4 lanes) and, on x86-64 with GCC/Clang, an AVX2 + F16C copy (8 lanes) picked at run
// time when the CPU has it (EMODARTS_CPU_ISA=baseline forces the baseline copy). The sums are memory-bound: an
// AVX-512 copy, software prefetch, non-temporal stores, other block sizes and one-input-at-a-time streaming were
// measured (2-core EPYC VM) and gave nothing once both threads run, or lost.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EMODARTS_HAVE_AVX2_COPY 1
#endif

// at::parallel_for is a header template: with torch's OpenMP backend it only forks threads in a source
// compiled with -fopenmp (ATen/ParallelOpenMP.h); without the flag it silently runs the whole range on the
// calling thread. The build passes -fopenmp on Linux (setup.py, emodarts/ops/compiled/cpp.py); this guard
// makes a Linux build without it fail loudly rather than run on one core.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP) && defined(__linux__)
#error "csrc/*.cpp must be compiled with -fopenmp: torch uses OpenMP for intra-op parallelism"
#endif

namespace emodarts {
namespace mixed_sum_cpu {
namespace {

using at::Tensor;
using at::TensorList;

constexpr int64_t kBlock = 2048;         // elements per block
constexpr int kMaxDims = 64;
constexpr int64_t kFlush = 256;  // dot products: fp32 lanes are flushed into double every kFlush elements

constexpr int kGroup = 8;  // inputs streamed together (as in the Triton kernel: 8 pointers per launch)

// ---------------------------------------------------------------------------------------------------
// layout rules (mirror of kernels/layout.py; checked against it by test_cpp_and_python_layout_rules_agree)

bool is_dense(at::IntArrayRef sizes, at::IntArrayRef strides) {
  std::vector<std::pair<int64_t, int64_t>> dims;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] != 1) dims.emplace_back(strides[d], sizes[d]);
  }
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& sd : dims) {
    if (sd.first != expected) return false;
    expected *= sd.second;
  }
  return true;
}

std::vector<int64_t> layout_key(at::IntArrayRef sizes, at::IntArrayRef strides) {
  std::vector<int64_t> k;
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] != 1) k.push_back(strides[d]);
  }
  return k;
}

std::vector<int64_t> row_major_strides(at::IntArrayRef sizes) {
  std::vector<int64_t> st(sizes.size(), 1);
  int64_t acc = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    st[d] = acc;
    acc *= std::max<int64_t>(sizes[d], 1);
  }
  return st;
}

// Majority dense layout among the inputs (ties: the first), else contiguous.
std::vector<int64_t> out_strides(TensorList ys) {
  const auto sizes = ys[0].sizes();
  std::vector<std::vector<int64_t>> keys;
  std::vector<int64_t> counts, first;
  for (size_t i = 0; i < ys.size(); ++i) {
    if (!is_dense(sizes, ys[i].strides())) continue;
    auto k = layout_key(sizes, ys[i].strides());
    auto it = std::find(keys.begin(), keys.end(), k);
    if (it == keys.end()) {
      keys.push_back(std::move(k));
      counts.push_back(1);
      first.push_back(static_cast<int64_t>(i));
    } else {
      counts[it - keys.begin()] += 1;
    }
  }
  if (keys.empty()) return row_major_strides(sizes);
  size_t best = 0;
  for (size_t k = 1; k < keys.size(); ++k) {
    if (counts[k] > counts[best]) best = k;
  }
  return ys[first[best]].strides().vec();
}

bool is_flat(const Tensor& t, at::IntArrayRef ostrides) {
  return is_dense(t.sizes(), t.strides()) &&
         layout_key(t.sizes(), t.strides()) == layout_key(t.sizes(), ostrides);
}

// A tensor as the kernels read it: flat (at the output's memory offsets) or through collapsed strides.
struct Src {
  const void* data = nullptr;
  at::ScalarType dtype = at::kFloat;
  bool flat = true;
  int64_t strides[kMaxDims] = {};
};

struct Plan {
  int ndim = 1;
  int64_t sizes[kMaxDims] = {1};
  std::vector<Src> ys;
  Src g;

  Plan(TensorList inputs, at::IntArrayRef ostrides, const Tensor* grad) {
    const auto sizes_in = inputs[0].sizes();
    std::vector<const Tensor*> strided;
    std::vector<Src*> strided_src;
    ys.resize(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      ys[i].data = inputs[i].data_ptr();
      ys[i].dtype = inputs[i].scalar_type();
      ys[i].flat = is_flat(inputs[i], ostrides);
      if (!ys[i].flat) {
        strided.push_back(&inputs[i]);
        strided_src.push_back(&ys[i]);
      }
    }
    if (grad != nullptr) {
      g.data = grad->data_ptr();
      g.dtype = grad->scalar_type();
      g.flat = is_flat(*grad, ostrides);
      if (!g.flat) {
        strided.push_back(grad);
        strided_src.push_back(&g);
      }
    }
    if (strided.empty()) return;
    // dims of size > 1 in the output's memory order (outer -> inner), merged when every strided tensor
    // walks two neighbours as one
    std::vector<int64_t> dims;
    for (size_t d = 0; d < sizes_in.size(); ++d) {
      if (sizes_in[d] != 1) dims.push_back(static_cast<int64_t>(d));
    }
    std::stable_sort(dims.begin(), dims.end(),
                     [&](int64_t a, int64_t b) { return ostrides[a] > ostrides[b]; });
    int nd = 0;
    for (int64_t d : dims) {
      bool merge = nd > 0;
      for (size_t t = 0; merge && t < strided.size(); ++t) {
        merge = strided_src[t]->strides[nd - 1] == strided[t]->stride(d) * sizes_in[d];
      }
      if (merge) {
        sizes[nd - 1] *= sizes_in[d];
        for (size_t t = 0; t < strided.size(); ++t) strided_src[t]->strides[nd - 1] = strided[t]->stride(d);
        continue;
      }
      TORCH_CHECK(nd < kMaxDims, "emodarts::mixed_sum: too many dimensions");
      sizes[nd] = sizes_in[d];
      for (size_t t = 0; t < strided.size(); ++t) strided_src[t]->strides[nd] = strided[t]->stride(d);
      ++nd;
    }
    if (nd == 0) {
      nd = 1;
      sizes[0] = 1;
      for (auto* s : strided_src) s->strides[0] = 0;
    }
    ndim = nd;
  }
};

// Consecutive flat inputs of one dtype are streamed together (up to kGroup); strided inputs go alone.
struct Group {
  int64_t first;
  int count;
  at::ScalarType dtype;
  bool flat;
};

std::vector<Group> make_groups(const Plan& plan) {
  std::vector<Group> groups;
  for (int64_t i = 0; i < static_cast<int64_t>(plan.ys.size()); ++i) {
    const Src& s = plan.ys[i];
    if (s.flat && !groups.empty()) {
      Group& last = groups.back();
      if (last.flat && last.dtype == s.dtype && last.count < kGroup) {
        ++last.count;
        continue;
      }
    }
    groups.push_back(Group{i, 1, s.dtype, s.flat});
  }
  return groups;
}

void check_inputs(TensorList ys, const Tensor& alpha, at::IntArrayRef index, const char* op) {
  TORCH_CHECK(!ys.empty(), op, ": needs at least one input");
  const auto sizes = ys[0].sizes();
  for (size_t i = 0; i < ys.size(); ++i) {
    TORCH_CHECK(ys[i].sizes() == sizes, op, ": input ", i, " has shape ", ys[i].sizes(), ", input 0 has ",
                sizes);
    TORCH_CHECK(ys[i].device().is_cpu(), op, ": input ", i, " is not a CPU tensor");
    TORCH_CHECK(ys[i].scalar_type() == at::kFloat || ys[i].scalar_type() == at::kBFloat16 ||
                    ys[i].scalar_type() == at::kHalf,
                op, ": unsupported dtype ", ys[i].scalar_type(), " (float32, bfloat16, float16)");
  }
  TORCH_CHECK(alpha.dim() == 2 && alpha.numel() > 0, op, ": alpha must be a non-empty (E, M) tensor, got ",
              alpha.sizes());
  TORCH_CHECK(alpha.device().is_cpu(), op, ": alpha must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(alpha.scalar_type()), op, ": alpha must be floating point");
  TORCH_CHECK(index.size() == ys.size(), op, ": ", ys.size(), " inputs but ", index.size(), " index entries");
  for (size_t i = 0; i < index.size(); ++i) {
    TORCH_CHECK(index[i] >= 0 && index[i] < alpha.numel(), op, ": index[", i, "] = ", index[i],
                " is outside alpha of shape ", alpha.sizes());
  }
}

// p = softmax(alpha, -1), row by row, in double.
std::vector<double> softmax_rows(const Tensor& alpha) {
  const Tensor a = alpha.to(at::kDouble).contiguous();
  const double* ap = a.data_ptr<double>();
  const int64_t e = a.size(0), m = a.size(1);
  std::vector<double> p(static_cast<size_t>(e * m));
  for (int64_t r = 0; r < e; ++r) {
    const double* row = ap + r * m;
    double mx = row[0];
    for (int64_t c = 1; c < m; ++c) mx = std::max(mx, row[c]);
    double z = 0.0;
    for (int64_t c = 0; c < m; ++c) z += (p[r * m + c] = std::exp(row[c] - mx));
    for (int64_t c = 0; c < m; ++c) p[r * m + c] /= z;
  }
  return p;
}

// w[i] = p[index[i]] as float (what the block kernels multiply by).
std::vector<float> gather_weights(const std::vector<double>& p, at::IntArrayRef index) {
  std::vector<float> w(index.size());
  for (size_t i = 0; i < index.size(); ++i) w[i] = static_cast<float>(p[static_cast<size_t>(index[i])]);
  return w;
}

// Blocks per task for a call that moves `bytes_per_elem` bytes per output element.
int64_t grain_blocks(int64_t bytes_per_elem) {
  return cpu_common::grain_items(std::max<int64_t>(1, bytes_per_elem) * kBlock);
}

// What the block kernels need (mixed_sum_kernels.h).
struct FwdCtx {
  const Plan* plan;
  const std::vector<Group>* groups;
  const float* w;
  void* out;
  at::ScalarType out_dtype;
  bool out_float;
  int64_t n;
};

struct BwdCtx {
  const Plan* plan;
  const std::vector<Group>* groups;
  const float* w;
  const std::vector<void*>& gdata;
  double* partial;
  int64_t k;
  int64_t n;
  bool g_direct;
  bool dots;   // the alpha gradient is wanted: read every y
  bool grads;  // the inputs' gradients are wanted: write every grad_y
};

// ---------------------------------------------------------------------------------------------------
// the block kernels, once per instruction set

#define EMODARTS_KNS baseline
#define EMODARTS_VW 4
#include "mixed_sum_kernels.h"
#undef EMODARTS_KNS
#undef EMODARTS_VW

#ifdef EMODARTS_HAVE_AVX2_COPY
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif
#define EMODARTS_KNS avx2
#define EMODARTS_VW 8
#define EMODARTS_F16C 1
#include "mixed_sum_kernels.h"
#undef EMODARTS_KNS
#undef EMODARTS_VW
#undef EMODARTS_F16C
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

bool use_avx2() {
#ifdef EMODARTS_HAVE_AVX2_COPY
  static const bool ok = [] {
    const char* e = std::getenv("EMODARTS_CPU_ISA");
    if (e != nullptr && std::strcmp(e, "baseline") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  }();
  return ok;
#else
  return false;
#endif
}

void fwd_range(const FwdCtx& c, int64_t b0, int64_t b1) {
#ifdef EMODARTS_HAVE_AVX2_COPY
  if (use_avx2()) return avx2::fwd_range(c, b0, b1);
#endif
  baseline::fwd_range(c, b0, b1);
}

void bwd_range(const BwdCtx& c, int64_t b0, int64_t b1) {
#ifdef EMODARTS_HAVE_AVX2_COPY
  if (use_avx2()) return avx2::bwd_range(c, b0, b1);
#endif
  baseline::bwd_range(c, b0, b1);
}

// grad_alpha[e, k] = p[e, k] * (D[e, k] - sum_j p[e, j] D[e, j]), in alpha's dtype.
Tensor alpha_grad(const Tensor& alpha, const std::vector<double>& p, const std::vector<double>& d) {
  const int64_t e = alpha.size(0), m = alpha.size(1);
  Tensor ga = at::empty({e, m}, alpha.options().dtype(at::kDouble));
  double* gp = ga.data_ptr<double>();
  for (int64_t r = 0; r < e; ++r) {
    double pd = 0.0;
    for (int64_t c = 0; c < m; ++c) pd += p[r * m + c] * d[r * m + c];
    for (int64_t c = 0; c < m; ++c) gp[r * m + c] = p[r * m + c] * (d[r * m + c] - pd);
  }
  return alpha.scalar_type() == at::kDouble ? ga : ga.to(alpha.scalar_type());
}

// ---------------------------------------------------------------------------------------------------
// operators

Tensor mixed_sum_fwd(TensorList ys, const Tensor& alpha, at::IntArrayRef index) {
  check_inputs(ys, alpha, index, "emodarts::mixed_sum_fwd");
  const auto ostrides = out_strides(ys);
  at::ScalarType dtype = ys[0].scalar_type();
  for (const auto& y : ys) dtype = at::promote_types(dtype, y.scalar_type());
  Tensor out = at::empty_strided(ys[0].sizes(), ostrides, ys[0].options().dtype(dtype));
  const int64_t n = out.numel();
  if (n == 0) return out;
  const std::vector<float> w = gather_weights(softmax_rows(alpha), index);
  const Plan plan(ys, ostrides, nullptr);
  const std::vector<Group> groups = make_groups(plan);
  const FwdCtx ctx{&plan, &groups, w.data(), out.data_ptr(), dtype, dtype == at::kFloat, n};
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  int64_t bytes_per_elem = out.element_size();
  for (const auto& y : ys) bytes_per_elem += y.element_size();
  at::parallel_for(0, nblocks, grain_blocks(bytes_per_elem), [&](int64_t b0, int64_t b1) { fwd_range(ctx, b0, b1); });
  return out;
}

std::tuple<std::vector<Tensor>, Tensor> mixed_sum_bwd(const Tensor& grad_out, TensorList ys, const Tensor& alpha,
                                                      at::IntArrayRef index, std::array<bool, 2> output_mask) {
  const bool need_ys = output_mask[0], need_alpha = output_mask[1];
  check_inputs(ys, alpha, index, "emodarts::mixed_sum_bwd");
  TORCH_CHECK(grad_out.sizes() == ys[0].sizes(), "emodarts::mixed_sum_bwd: grad_out has shape ",
              grad_out.sizes(), ", the inputs ", ys[0].sizes());
  TORCH_CHECK(grad_out.device().is_cpu(), "emodarts::mixed_sum_bwd: grad_out is not a CPU tensor");
  const Tensor g = (grad_out.scalar_type() == at::kFloat || grad_out.scalar_type() == at::kBFloat16 ||
                    grad_out.scalar_type() == at::kHalf)
                       ? grad_out
                       : grad_out.to(at::kFloat);
  const auto ostrides = out_strides(ys);
  const int64_t k = static_cast<int64_t>(ys.size());
  std::vector<Tensor> grads;  // empty when the inputs' gradients are not wanted
  if (need_ys) {
    grads.reserve(k);
    for (const auto& y : ys) grads.push_back(at::empty_strided(y.sizes(), ostrides, y.options()));
  }
  const int64_t n = g.numel();
  const std::vector<double> p = softmax_rows(alpha);
  const std::vector<float> w = gather_weights(p, index);
  std::vector<double> d(p.size(), 0.0);  // D[e * M + m]: summed dot products
  if (n == 0 || !(need_ys || need_alpha)) return {grads, need_alpha ? alpha_grad(alpha, p, d) : Tensor()};
  const Plan plan(ys, ostrides, &g);
  const std::vector<Group> groups = make_groups(plan);
  std::vector<void*> gdata(k, nullptr);
  for (int64_t i = 0; i < k && need_ys; ++i) gdata[i] = grads[i].data_ptr();
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(need_alpha ? static_cast<size_t>(nblocks * k) : 0);
  const BwdCtx ctx{&plan, &groups, w.data(), gdata, need_alpha ? partial.data() : nullptr, k, n,
                   plan.g.flat && plan.g.dtype == at::kFloat, need_alpha, need_ys};
  int64_t bytes_per_elem = g.element_size();
  for (const auto& y : ys) bytes_per_elem += (int64_t(need_alpha) + int64_t(need_ys)) * y.element_size();
  at::parallel_for(0, nblocks, grain_blocks(bytes_per_elem), [&](int64_t b0, int64_t b1) { bwd_range(ctx, b0, b1); });
  if (!need_alpha) return {grads, Tensor()};

  for (int64_t i = 0; i < k; ++i) {
    double s = 0.0;
    for (int64_t b = 0; b < nblocks; ++b) s += partial[static_cast<size_t>(b * k + i)];
    d[static_cast<size_t>(index[i])] += s;
  }
  return {grads, alpha_grad(alpha, p, d)};
}

// What a call runs here: the kernel copy and how blocks are spread over threads (benchmarks record it).
std::string mixed_sum_cpu_info() { return cpu_common::cpu_info(use_avx2()); }

}  // namespace
}  // namespace mixed_sum_cpu
}  // namespace emodarts

// FRAGMENT: other sources (grouped recurrent, CUDA kernels) add their operators to the same namespace.
TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def("mixed_sum_fwd(Tensor[] ys, Tensor alpha, int[] index) -> Tensor");
  m.def("mixed_sum_bwd(Tensor grad_out, Tensor[] ys, Tensor alpha, int[] index, bool[2] output_mask) "
        "-> (Tensor[], Tensor)");
  m.def("mixed_sum_cpu_info() -> str", &emodarts::mixed_sum_cpu::mixed_sum_cpu_info);
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("mixed_sum_fwd", &emodarts::mixed_sum_cpu::mixed_sum_fwd);
  m.impl("mixed_sum_bwd", &emodarts::mixed_sum_cpu::mixed_sum_bwd);
}
