// Training-mode batch norm without affine parameters for a list of tensors in one call: the batch norms of
// every candidate of a CNN search state (and of the pools, the factorized reduce, the preprocessing), which
// ATen runs one call each at 5-10x the cost of an elementwise pass on the search's small maps.
//
//   emodarts::multi_bn_fwd(Tensor[] xs, Tensor(a!)[] running_means, Tensor(b!)[] running_vars,
//                          Tensor(c!)[] counts, float[] momenta, int[] group_sizes, float eps)
//       -> (Tensor[] ys, Tensor[] invstds)
//       per tensor x (B, C, ...): y = (x - mean_c) * invstd_c with the batch statistics of each channel c
//       over B and the trailing dims; invstd = 1 / sqrt(biased var + eps), (C,) in x's dtype. x i moves the
//       running statistics of group_sizes[i] modules (the lists hold every module, group after group), as
//       BatchNorm2d's training forward does: count += 1, then r = (1 - m) r + m * stat with the batch mean
//       and the unbiased batch variance, m = momenta[k], or 1 / count where momenta[k] < 0 (momentum None).
//   emodarts::multi_bn_bwd(Tensor[] grads, Tensor[] ys, Tensor[] invstds) -> Tensor[] grad_xs
//       gx = invstd * (g - mean(g) - y * mean(g * y)) per channel: the batch norm's input gradient from its
//       output y (which is x normalised: no affine), so the input need not be kept.
//
// Tensors may differ in shape; each is float32 or float64, contiguous and on the CPU (the Python side makes them so),
// with more than one value per channel (ATen's training-mode rule). Work: the (tensor, channel) pairs are spread over
// the intra-op threads with at::parallel_for, calls that move less than cpu_common::parallel_grain_bytes() staying on
// one thread; each pair is computed by one thread in a fixed order, so results do not depend on the number of
// threads. Sums as csrc/multi_bn_kernels.h says (blocks in T, then double); the kernels are compiled twice, baseline
// and AVX2 + FMA (csrc/cpu_common.h), picked at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "cpu_common.h"

// at::parallel_for forks threads only in a source compiled with -fopenmp (see csrc/mixed_sum.cpp)
#if AT_PARALLEL_OPENMP && !defined(_OPENMP) && defined(__linux__)
#error "csrc/*.cpp must be compiled with -fopenmp: torch uses OpenMP for intra-op parallelism"
#endif

namespace emodarts {
namespace multi_bn_cpu {
namespace {

using at::Tensor;

#define EMODARTS_BNNS baseline
#define EMODARTS_BNVB 16
#include "multi_bn_kernels.h"
#undef EMODARTS_BNNS
#undef EMODARTS_BNVB

#ifdef EMODARTS_CPU_HAVE_AVX2
EMODARTS_BEGIN_AVX2_FMA
#define EMODARTS_BNNS avx2
#define EMODARTS_BNVB 32
#include "multi_bn_kernels.h"
#undef EMODARTS_BNNS
#undef EMODARTS_BNVB
EMODARTS_END_AVX2_FMA
#endif

// One tensor's geometry: channel c of batch item b starts at b * stride + c * n.
struct Geo {
  int64_t B, C, n, stride;
};

Geo geometry(const Tensor& x, const char* op, size_t i) {
  TORCH_CHECK(x.dim() >= 2, op, ": tensor ", i, " must be (B, C, ...), got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), op, ": tensor ", i, " must be contiguous and on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": tensor ", i,
              " must be float32 or float64, got ", x.scalar_type());
  Geo g{x.size(0), x.size(1), 1, 0};
  for (int64_t d = 2; d < x.dim(); ++d) g.n *= x.size(d);
  g.stride = g.C * g.n;
  return g;
}

// (tensor, channel) pairs of a call, and how many to give a thread at once
struct Units {
  std::vector<std::pair<int64_t, int64_t>> pairs;
  int64_t grain = 1;
};

Units units(const std::vector<Geo>& geos, int64_t element_size, int passes) {
  Units u;
  int64_t bytes = 0;
  for (size_t i = 0; i < geos.size(); ++i) {
    for (int64_t c = 0; c < geos[i].C; ++c) u.pairs.emplace_back(static_cast<int64_t>(i), c);
    bytes += geos[i].B * geos[i].stride * element_size * passes;
  }
  const int64_t per = bytes / std::max<int64_t>(1, static_cast<int64_t>(u.pairs.size()));
  u.grain = cpu_common::grain_items(per);
  return u;
}

bool use_avx2() { return cpu_common::avx2_enabled(); }

template <typename T>
void forward_channel(const T* x, T* y, const Geo& g, int64_t c, double eps, double* mean_out, T* invstd_out,
                     double* var_out, bool avx2) {
  const T* xc = x + c * g.n;
  T* yc = y + c * g.n;
  const double count = static_cast<double>(g.B * g.n);
  double sum;
#ifdef EMODARTS_CPU_HAVE_AVX2
  if (avx2) sum = avx2::channel_sum<T, false>(xc, g.B, g.n, g.stride, T(0));
  else
#endif
    sum = baseline::channel_sum<T, false>(xc, g.B, g.n, g.stride, T(0));
  const T mean = static_cast<T>(sum / count);
  double ss;
#ifdef EMODARTS_CPU_HAVE_AVX2
  if (avx2) ss = avx2::channel_sum<T, true>(xc, g.B, g.n, g.stride, mean);
  else
#endif
    ss = baseline::channel_sum<T, true>(xc, g.B, g.n, g.stride, mean);
  const double var = ss / count;
  const T invstd = static_cast<T>(1.0 / std::sqrt(var + eps));
#ifdef EMODARTS_CPU_HAVE_AVX2
  if (avx2) avx2::channel_normalise<T>(xc, yc, g.B, g.n, g.stride, mean, invstd);
  else
#endif
    baseline::channel_normalise<T>(xc, yc, g.B, g.n, g.stride, mean, invstd);
  mean_out[c] = sum / count;
  invstd_out[c] = invstd;
  var_out[c] = var * count / (count - 1.0);
}

template <typename T>
void backward_channel(const T* gr, const T* y, T* gx, const Geo& g, int64_t c, T invstd, bool avx2) {
  const int64_t off = c * g.n;
  double sg, sgy;
#ifdef EMODARTS_CPU_HAVE_AVX2
  if (avx2) avx2::channel_sums2<T>(gr + off, y + off, g.B, g.n, g.stride, sg, sgy);
  else
#endif
    baseline::channel_sums2<T>(gr + off, y + off, g.B, g.n, g.stride, sg, sgy);
  const double count = static_cast<double>(g.B * g.n);
  const T mg = static_cast<T>(sg / count), mgy = static_cast<T>(sgy / count);
#ifdef EMODARTS_CPU_HAVE_AVX2
  if (avx2) avx2::channel_backward<T>(gr + off, y + off, gx + off, g.B, g.n, g.stride, invstd, mg, mgy);
  else
#endif
    baseline::channel_backward<T>(gr + off, y + off, gx + off, g.B, g.n, g.stride, invstd, mg, mgy);
}

at::ScalarType common_dtype(const std::vector<Tensor>& ts, const char* op) {
  TORCH_CHECK(!ts.empty(), op, ": no tensors");
  const at::ScalarType st = ts[0].scalar_type();
  for (const Tensor& t : ts) TORCH_CHECK(t.scalar_type() == st, op, ": tensors must share one dtype");
  return st;
}

}  // namespace

// running = (1 - m) running + m * stat, in double, for one module's (C,) buffer
void update_running(const Tensor& running, const std::vector<double>& stat, double m) {
  TORCH_CHECK(running.is_contiguous() && running.device().is_cpu() && running.numel() == static_cast<int64_t>(stat.size()),
              "emodarts::multi_bn_fwd: a running statistic must be a contiguous (C,) CPU tensor");
  AT_DISPATCH_FLOATING_TYPES(running.scalar_type(), "multi_bn_running", [&] {
    scalar_t* r = running.data_ptr<scalar_t>();
    for (size_t c = 0; c < stat.size(); ++c)
      r[c] = static_cast<scalar_t>((1.0 - m) * static_cast<double>(r[c]) + m * stat[c]);
  });
}

std::tuple<std::vector<Tensor>, std::vector<Tensor>> multi_bn_fwd(
    const std::vector<Tensor>& xs, const std::vector<Tensor>& running_means, const std::vector<Tensor>& running_vars,
    const std::vector<Tensor>& counts, const std::vector<double>& momenta, const std::vector<int64_t>& group_sizes,
    double eps) {
  const char* op = "emodarts::multi_bn_fwd";
  const at::ScalarType st = common_dtype(xs, op);
  const size_t modules = running_means.size();
  TORCH_CHECK(group_sizes.size() == xs.size(), op, ": one group size per input");
  TORCH_CHECK(running_vars.size() == modules && counts.size() == modules && momenta.size() == modules, op,
              ": running_means, running_vars, counts and momenta must have one entry per module");
  std::vector<Geo> geos;
  std::vector<Tensor> ys, invstds;
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    geos.push_back(geometry(xs[i], op, i));
    TORCH_CHECK(geos.back().B * geos.back().n > 1, op, ": expected more than 1 value per channel when training, "
                "got input size ", xs[i].sizes());
    TORCH_CHECK(group_sizes[i] >= 0, op, ": negative group size");
    total += group_sizes[i];
    ys.push_back(at::empty_like(xs[i]));
    invstds.push_back(at::empty({geos.back().C}, xs[i].options()));
  }
  TORCH_CHECK(total == static_cast<int64_t>(modules), op, ": the group sizes add up to ", total, ", not to the ",
              modules, " modules");
  std::vector<std::vector<double>> means(xs.size()), vars(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    means[i].resize(geos[i].C);
    vars[i].resize(geos[i].C);
  }
  const Units u = units(geos, xs[0].element_size(), 4);
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(st, "multi_bn_fwd", [&] {
    at::parallel_for(0, static_cast<int64_t>(u.pairs.size()), u.grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const auto [i, c] = u.pairs[p];
        forward_channel<scalar_t>(xs[i].data_ptr<scalar_t>(), ys[i].data_ptr<scalar_t>(), geos[i], c, eps,
                                  means[i].data(), invstds[i].data_ptr<scalar_t>(), vars[i].data(), avx2);
      }
    });
  });
  size_t k = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    for (int64_t j = 0; j < group_sizes[i]; ++j, ++k) {
      TORCH_CHECK(counts[k].numel() == 1 && counts[k].scalar_type() == at::kLong && counts[k].device().is_cpu(), op,
                  ": counts must be int64 CPU scalars (num_batches_tracked)");
      int64_t* n = counts[k].data_ptr<int64_t>();
      *n += 1;
      const double m = momenta[k] < 0 ? 1.0 / static_cast<double>(*n) : momenta[k];
      update_running(running_means[k], means[i], m);
      update_running(running_vars[k], vars[i], m);
    }
  }
  return {ys, invstds};
}

std::vector<Tensor> multi_bn_bwd(const std::vector<Tensor>& grads, const std::vector<Tensor>& ys,
                                 const std::vector<Tensor>& invstds) {
  const char* op = "emodarts::multi_bn_bwd";
  TORCH_CHECK(grads.size() == ys.size() && invstds.size() == ys.size(), op,
              ": grads, ys and invstds must have one entry per tensor");
  const at::ScalarType st = common_dtype(ys, op);
  std::vector<Geo> geos;
  std::vector<Tensor> gxs;
  for (size_t i = 0; i < ys.size(); ++i) {
    geos.push_back(geometry(ys[i], op, i));
    TORCH_CHECK(grads[i].sizes() == ys[i].sizes() && grads[i].scalar_type() == st && grads[i].is_contiguous(), op,
                ": grad ", i, " must match its output's shape and dtype and be contiguous");
    TORCH_CHECK(invstds[i].numel() == geos.back().C && invstds[i].scalar_type() == st && invstds[i].is_contiguous(),
                op, ": invstd ", i, " must be (C,) in the outputs' dtype");
    gxs.push_back(at::empty_like(ys[i]));
  }
  const Units u = units(geos, ys[0].element_size(), 4);
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(st, "multi_bn_bwd", [&] {
    at::parallel_for(0, static_cast<int64_t>(u.pairs.size()), u.grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const auto [i, c] = u.pairs[p];
        backward_channel<scalar_t>(grads[i].data_ptr<scalar_t>(), ys[i].data_ptr<scalar_t>(),
                                   gxs[i].data_ptr<scalar_t>(), geos[i], c, invstds[i].data_ptr<scalar_t>()[c], avx2);
      }
    });
  });
  return gxs;
}

}  // namespace multi_bn_cpu
}  // namespace emodarts

TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def("multi_bn_fwd(Tensor[] xs, Tensor(a!)[] running_means, Tensor(b!)[] running_vars, Tensor(c!)[] counts, "
        "float[] momenta, int[] group_sizes, float eps) -> (Tensor[], Tensor[])");
  m.def("multi_bn_bwd(Tensor[] grads, Tensor[] ys, Tensor[] invstds) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("multi_bn_fwd", &emodarts::multi_bn_cpu::multi_bn_fwd);
  m.impl("multi_bn_bwd", &emodarts::multi_bn_cpu::multi_bn_bwd);
}
