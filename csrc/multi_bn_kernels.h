// Channel kernels of the multi batch norm (csrc/multi_bn.cpp), written once for any vector width and compiled
// once per instruction set (no include guard: it is included on purpose twice).
//
// Before including, define EMODARTS_BNNS (the namespace to fill) and EMODARTS_BNVB (bytes per vector: 16 for
// the SSE2 / NEON baseline, 32 for AVX2). Vectors are GCC/Clang vector extensions, loaded and stored through
// memcpy (unaligned). A channel is B planes of n contiguous elements, `stride` elements apart.
//
// Sums: each plane is summed in blocks of kBlock elements in two vectors of T, and every block total is added
// to a double (an error of a few ulps of T per block, then double across the channel's B * n elements, as
// ATen's CPU batch norm accumulates in double). Everything else is elementwise in T.

namespace EMODARTS_BNNS {

constexpr int VB = EMODARTS_BNVB;
constexpr int64_t kBlock = 256;

#include "vec_ext.h"  // V<T>, for this namespace's VB

// sum over the channel of x (kDev false) or of (x - mean)^2 (kDev true), accumulated as the header says
template <typename T, bool kDev>
double channel_sum(const T* x, int64_t planes, int64_t n, int64_t stride, T mean) {
  using Vt = V<T>;
  constexpr int L = Vt::n;
  const typename Vt::v m = Vt::splat(mean);
  double acc = 0.0;
  for (int64_t b = 0; b < planes; ++b) {
    const T* p = x + b * stride;
    int64_t j = 0;
    for (; j + 2 * L <= n;) {
      const int64_t end = std::min(n, j + kBlock);
      typename Vt::v a0 = Vt::splat(T(0)), a1 = Vt::splat(T(0));
      for (; j + 2 * L <= end; j += 2 * L) {
        typename Vt::v v0 = Vt::load(p + j), v1 = Vt::load(p + j + L);
        if (kDev) {
          v0 -= m;
          v1 -= m;
          v0 *= v0;
          v1 *= v1;
        }
        a0 += v0;
        a1 += v1;
      }
      acc += Vt::total(a0 + a1);
    }
    for (; j < n; ++j) {
      const T v = kDev ? (p[j] - mean) * (p[j] - mean) : p[j];
      acc += static_cast<double>(v);
    }
  }
  return acc;
}

// (sum of g, sum of g * y) over the channel
template <typename T>
void channel_sums2(const T* g, const T* y, int64_t planes, int64_t n, int64_t stride, double& sg, double& sgy) {
  using Vt = V<T>;
  constexpr int L = Vt::n;
  sg = 0.0;
  sgy = 0.0;
  for (int64_t b = 0; b < planes; ++b) {
    const T* gp = g + b * stride;
    const T* yp = y + b * stride;
    int64_t j = 0;
    for (; j + L <= n;) {
      const int64_t end = std::min(n, j + kBlock);
      typename Vt::v a = Vt::splat(T(0)), c = Vt::splat(T(0));
      for (; j + L <= end; j += L) {
        const typename Vt::v gv = Vt::load(gp + j);
        a += gv;
        c += gv * Vt::load(yp + j);
      }
      sg += Vt::total(a);
      sgy += Vt::total(c);
    }
    for (; j < n; ++j) {
      sg += static_cast<double>(gp[j]);
      sgy += static_cast<double>(gp[j]) * static_cast<double>(yp[j]);
    }
  }
}

// y = (x - mean) * invstd over the channel
template <typename T>
void channel_normalise(const T* x, T* y, int64_t planes, int64_t n, int64_t stride, T mean, T invstd) {
  using Vt = V<T>;
  constexpr int L = Vt::n;
  const typename Vt::v m = Vt::splat(mean), s = Vt::splat(invstd);
  for (int64_t b = 0; b < planes; ++b) {
    const T* xp = x + b * stride;
    T* yp = y + b * stride;
    int64_t j = 0;
    for (; j + L <= n; j += L) Vt::store(yp + j, (Vt::load(xp + j) - m) * s);
    for (; j < n; ++j) yp[j] = (xp[j] - mean) * invstd;
  }
}

// gx = invstd * (g - mean_g - y * mean_gy) over the channel
template <typename T>
void channel_backward(const T* g, const T* y, T* gx, int64_t planes, int64_t n, int64_t stride, T invstd, T mean_g,
                      T mean_gy) {
  using Vt = V<T>;
  constexpr int L = Vt::n;
  const typename Vt::v s = Vt::splat(invstd), mg = Vt::splat(mean_g), mgy = Vt::splat(mean_gy);
  for (int64_t b = 0; b < planes; ++b) {
    const T* gp = g + b * stride;
    const T* yp = y + b * stride;
    T* op = gx + b * stride;
    int64_t j = 0;
    for (; j + L <= n; j += L) Vt::store(op + j, s * (Vt::load(gp + j) - mg - Vt::load(yp + j) * mgy));
    for (; j < n; ++j) op[j] = invstd * (gp[j] - mean_g - yp[j] * mean_gy);
  }
}

}  // namespace EMODARTS_BNNS
