// The two sampling grids of the factorized reduce (a skip connection that halves the map): even rows and
// columns of x, and odd rows and columns of x zero-padded to even sizes, both (B, C, ceil(H/2), ceil(W/2)),
// each written contiguous in one pass. In ATen (pad, two strided slices, .contiguous()) the backward fills
// two full-size zero tensors and scatters into each; here it writes grad_x once: every element of x belongs
// to at most one grid.
//
//   emodarts::offset_grids_fwd(Tensor x) -> (Tensor even, Tensor odd)
//   emodarts::offset_grids_bwd(Tensor grad_even, Tensor grad_odd, int H, int W) -> Tensor grad_x
//
// x: (B, C, H, W) contiguous on the CPU, any floating dtype; outputs contiguous. Planes are spread over the
// intra-op threads; every element is computed alone, so results do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "cpu_common.h"

#if AT_PARALLEL_OPENMP && !defined(_OPENMP) && defined(__linux__)
#error "csrc/*.cpp must be compiled with -fopenmp: torch uses OpenMP for intra-op parallelism"
#endif

namespace emodarts {
namespace offset_grids_cpu {

using at::Tensor;

namespace {
// a plane's bytes read and written (one read of each element, one write)
int64_t grain(int64_t per_plane, int64_t element_size) { return cpu_common::grain_items(2 * per_plane * element_size); }
}  // namespace

std::tuple<Tensor, Tensor> offset_grids_fwd(const Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.is_contiguous(),
              "emodarts::offset_grids_fwd: x must be a contiguous (B, C, H, W) CPU tensor, got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  Tensor even = at::empty({B, C, Ho, Wo}, x.options());
  Tensor odd = at::empty({B, C, Ho, Wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "offset_grids_fwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* ep = even.data_ptr<scalar_t>();
    scalar_t* op = odd.data_ptr<scalar_t>();
    at::parallel_for(0, B * C, grain(H * W, sizeof(scalar_t)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t* xi = xp + p * H * W;
        scalar_t* e = ep + p * Ho * Wo;
        scalar_t* o = op + p * Ho * Wo;
        for (int64_t i = 0; i < Ho; ++i) {
          const scalar_t* r0 = xi + (2 * i) * W;
          for (int64_t j = 0; j < Wo; ++j) e[i * Wo + j] = r0[2 * j];
          if (2 * i + 1 < H) {
            const scalar_t* r1 = xi + (2 * i + 1) * W;
            for (int64_t j = 0; j < Wo; ++j) o[i * Wo + j] = 2 * j + 1 < W ? r1[2 * j + 1] : scalar_t(0);
          } else {
            for (int64_t j = 0; j < Wo; ++j) o[i * Wo + j] = scalar_t(0);
          }
        }
      }
    });
  });
  return {even, odd};
}

Tensor offset_grids_bwd(const Tensor& g_even_in, const Tensor& g_odd_in, int64_t H, int64_t W) {
  const Tensor g_even = g_even_in.contiguous(), g_odd = g_odd_in.contiguous();
  TORCH_CHECK(g_even.dim() == 4 && g_even.sizes() == g_odd.sizes() && g_even.size(2) == (H + 1) / 2 &&
                  g_even.size(3) == (W + 1) / 2 && g_even.device().is_cpu() &&
                  g_even.scalar_type() == g_odd.scalar_type(),
              "emodarts::offset_grids_bwd: both gradients must be (B, C, ceil(H/2), ceil(W/2)) CPU tensors of one dtype");
  const int64_t B = g_even.size(0), C = g_even.size(1), Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  Tensor gx = at::empty({B, C, H, W}, g_even.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g_even.scalar_type(), "offset_grids_bwd", [&] {
    const scalar_t* ep = g_even.data_ptr<scalar_t>();
    const scalar_t* op = g_odd.data_ptr<scalar_t>();
    scalar_t* gp = gx.data_ptr<scalar_t>();
    at::parallel_for(0, B * C, grain(H * W, sizeof(scalar_t)), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const scalar_t* e = ep + p * Ho * Wo;
        const scalar_t* o = op + p * Ho * Wo;
        scalar_t* g = gp + p * H * W;
        for (int64_t h = 0; h < H; ++h) {
          scalar_t* row = g + h * W;
          const int64_t i = h / 2;
          if (h % 2 == 0) {
            for (int64_t w = 0; w < W; ++w) row[w] = w % 2 == 0 ? e[i * Wo + w / 2] : scalar_t(0);
          } else {
            for (int64_t w = 0; w < W; ++w) row[w] = w % 2 == 1 ? o[i * Wo + w / 2] : scalar_t(0);
          }
        }
      }
    });
  });
  return gx;
}

}  // namespace offset_grids_cpu
}  // namespace emodarts

TORCH_LIBRARY_FRAGMENT(emodarts, m) {
  m.def("offset_grids_fwd(Tensor x) -> (Tensor, Tensor)");
  m.def("offset_grids_bwd(Tensor grad_even, Tensor grad_odd, int H, int W) -> Tensor");
}

TORCH_LIBRARY_IMPL(emodarts, CPU, m) {
  m.impl("offset_grids_fwd", &emodarts::offset_grids_cpu::offset_grids_fwd);
  m.impl("offset_grids_bwd", &emodarts::offset_grids_cpu::offset_grids_bwd);
}
