// Plane kernels of the multi-depthwise convolution (csrc/multi_depthwise.cpp), included twice: once for the
// baseline instruction set and once (x86-64) for AVX2+FMA, each copy in its own namespace EMODARTS_MDW_NS.
// A plane is one (batch, channel) image, row-major H x W; the output plane is Ho x Wo with
// Ho = (H + 2p - d(k-1) - 1) / s + 1. Inner loops run along a row, contiguous at stride 1, so the compiler
// vectorises them; the weight-gradient dot products keep 8 partial sums for the same reason.

namespace EMODARTS_MDW_NS {

// output columns [lo, hi) whose input column ow * s + off lies inside [0, W)
inline void col_range(int64_t off, int64_t s, int64_t W, int64_t Wo, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = W - 1 - off >= 0 ? std::min<int64_t>(Wo, (W - 1 - off) / s + 1) : 0;
  if (hi < lo) hi = lo;
}

template <typename T>
void plane_fwd(const T* __restrict__ x, int64_t H, int64_t W, const T* __restrict__ w, int64_t k, int64_t d,
               int64_t s, int64_t p, T* __restrict__ out, int64_t Ho, int64_t Wo) {
  for (int64_t oh = 0; oh < Ho; ++oh) {
    T* __restrict__ orow = out + oh * Wo;
    for (int64_t ow = 0; ow < Wo; ++ow) orow[ow] = T(0);
    for (int64_t kh = 0; kh < k; ++kh) {
      const int64_t ih = oh * s - p + kh * d;
      if (ih < 0 || ih >= H) continue;
      const T* __restrict__ xrow = x + ih * W;
      for (int64_t kw = 0; kw < k; ++kw) {
        const int64_t off = kw * d - p;
        const T wv = w[kh * k + kw];
        int64_t lo, hi;
        col_range(off, s, W, Wo, lo, hi);
        if (s == 1) {
          const T* __restrict__ xr = xrow + off;
          for (int64_t ow = lo; ow < hi; ++ow) orow[ow] += wv * xr[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) orow[ow] += wv * xrow[ow * s + off];
        }
      }
    }
  }
}

// gx (H x W) += the input gradient of one plane; gw (k x k, double) += its weight gradient (either may be
// nullptr: that gradient is not wanted)
template <typename T>
void plane_bwd(const T* __restrict__ go, const T* __restrict__ x, int64_t H, int64_t W, const T* __restrict__ w,
               int64_t k, int64_t d, int64_t s, int64_t p, int64_t Ho, int64_t Wo, T* __restrict__ gx,
               double* __restrict__ gw) {
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const T* __restrict__ grow = go + oh * Wo;
    for (int64_t kh = 0; kh < k; ++kh) {
      const int64_t ih = oh * s - p + kh * d;
      if (ih < 0 || ih >= H) continue;
      const T* __restrict__ xrow = x + ih * W;
      T* __restrict__ gxrow = gx ? gx + ih * W : nullptr;
      for (int64_t kw = 0; kw < k; ++kw) {
        const int64_t off = kw * d - p;
        const T wv = w[kh * k + kw];
        int64_t lo, hi;
        col_range(off, s, W, Wo, lo, hi);
        T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
        if (gx) {  // the scatter of the input gradient
          if (s == 1) {
            T* __restrict__ gr = gxrow + off;
            for (int64_t ow = lo; ow < hi; ++ow) gr[ow] += wv * grow[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) gxrow[ow * s + off] += wv * grow[ow];
          }
        }
        if (!gw) continue;
        if (s == 1) {
          const T* __restrict__ xr = xrow + off;
          int64_t ow = lo;
          for (; ow + 8 <= hi; ow += 8)
            for (int l = 0; l < 8; ++l) acc[l] += grow[ow + l] * xr[ow + l];
          for (; ow < hi; ++ow) acc[0] += grow[ow] * xr[ow];
        } else {  // plain loops (the scatter above, a strided dot product here) that the compiler can vectorise
          const T* __restrict__ xr = xrow + off;
          int64_t ow = lo;
          for (; ow + 8 <= hi; ow += 8)
            for (int l = 0; l < 8; ++l) acc[l] += grow[ow + l] * xr[(ow + l) * s];
          for (; ow < hi; ++ow) acc[0] += grow[ow] * xr[ow * s];
        }
        double sum = 0.0;
        for (int l = 0; l < 8; ++l) sum += static_cast<double>(acc[l]);
        gw[kh * k + kw] += sum;
      }
    }
  }
}

#include "multi_dw_blocked.h"

}  // namespace EMODARTS_MDW_NS
