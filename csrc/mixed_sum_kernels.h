// Block kernels of the C++ mixed sum, written once for any vector width and compiled once per instruction
// set by csrc/mixed_sum.cpp (no include guard: it is included on purpose several times).
//
// Before including, define EMODARTS_KNS (the namespace to fill), EMODARTS_VW (float lanes per vector: 4
// for the SSE2/NEON baseline, 8 for AVX2) and optionally EMODARTS_F16C (fp16 conversions with F16C), and
// declare kBlock, kGroup, kFlush, kMaxDims, Plan, Src, Group, FwdCtx, BwdCtx in the enclosing namespace.
// The vectors are GCC/Clang vector extensions: the compiler emits the instructions of the target it is
// compiling for, so the same source gives SSE2 code in the baseline copy and AVX2 code in the copy
// compiled under `#pragma GCC target("avx2,f16c")`.
//
// Arithmetic is identical in every copy (no FMA contraction: the targets do not enable FMA): the sum runs
// left to right as in the reference, so forward results and grad_y are bitwise equal across copies; only
// the lane split of the dot products (hence their last bits) depends on the width.

namespace EMODARTS_KNS {

constexpr int W = EMODARTS_VW;
typedef float vf __attribute__((vector_size(4 * EMODARTS_VW)));
typedef uint32_t vu __attribute__((vector_size(4 * EMODARTS_VW)));
typedef uint16_t vh __attribute__((vector_size(2 * EMODARTS_VW)));

inline vf splat(float x) {
  vf v;
  for (int l = 0; l < W; ++l) v[l] = x;
  return v;
}

template <typename T>
inline float to_f(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline T from_f(float v) {
  return static_cast<T>(v);  // c10::BFloat16 / c10::Half: round to nearest even
}

template <typename T>
inline vf loadv(const T* p);

template <>
inline vf loadv<float>(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <>
inline vf loadv<c10::BFloat16>(const c10::BFloat16* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  const vu u = __builtin_convertvector(h, vu) << 16;
  return (vf)u;  // same-size vector cast: a bit cast
}

template <>
inline vf loadv<c10::Half>(const c10::Half* p) {
#ifdef EMODARTS_F16C
  return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  vf v;
  for (int l = 0; l < W; ++l) v[l] = static_cast<float>(p[l]);
  return v;
#endif
}

template <typename T>
inline void storev(T* p, vf v);

template <>
inline void storev<float>(float* p, vf v) {
  std::memcpy(p, &v, sizeof v);
}

template <>
inline void storev<c10::BFloat16>(c10::BFloat16* p, vf v) {
  // as c10::BFloat16(float): round to nearest even, NaN -> 0x7FC0
  const vu u = (vu)v;
  vu r = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  const vu nan = (vu)(v != v);
  r = (r & ~nan) | (0x7FC0u & nan);
  const vh h = __builtin_convertvector(r, vh);
  std::memcpy(p, &h, sizeof h);
}

template <>
inline void storev<c10::Half>(c10::Half* p, vf v) {
#ifdef EMODARTS_F16C
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#else
  for (int l = 0; l < W; ++l) p[l] = c10::Half(v[l]);
#endif
}

inline double hsum(vf v) {
  double s = 0.0;
  for (int l = 0; l < W; ++l) s += static_cast<double>(v[l]);
  return s;
}

template <typename F>
inline void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat:
      f(float());
      return;
    case at::kBFloat16:
      f(c10::BFloat16());
      return;
    case at::kHalf:
      f(c10::Half());
      return;
    default:
      TORCH_CHECK(false, "emodarts::mixed_sum: unsupported dtype ", st, " (float32, bfloat16, float16)");
  }
}

// Calls f(std::integral_constant<int, G>) for G = count in 1..kGroup.
template <typename F>
inline void dispatch_group(int count, F&& f) {
  switch (count) {
    case 1: f(std::integral_constant<int, 1>()); return;
    case 2: f(std::integral_constant<int, 2>()); return;
    case 3: f(std::integral_constant<int, 3>()); return;
    case 4: f(std::integral_constant<int, 4>()); return;
    case 5: f(std::integral_constant<int, 5>()); return;
    case 6: f(std::integral_constant<int, 6>()); return;
    case 7: f(std::integral_constant<int, 7>()); return;
    case 8: f(std::integral_constant<int, 8>()); return;
    default: TORCH_CHECK(false, "emodarts::mixed_sum: bad group size ", count);
  }
}

// dst[0:len] = (float) tensor elements [start, start + len) in the output's memory order.
template <typename T>
void gather(const T* base, const int64_t* strides, const Plan& plan, int64_t start, int64_t len, float* dst) {
  const int nd = plan.ndim;
  int64_t coord[kMaxDims];
  int64_t rem = start;
  int64_t off = 0;
  for (int d = nd - 1; d >= 0; --d) {
    coord[d] = rem % plan.sizes[d];
    rem /= plan.sizes[d];
    off += coord[d] * strides[d];
  }
  const int inner = nd - 1;
  const int64_t s = strides[inner];
  int64_t done = 0;
  while (done < len) {
    const int64_t run = std::min(len - done, plan.sizes[inner] - coord[inner]);
    const T* p = base + off;
    float* q = dst + done;
    if (s == 1) {
      for (int64_t j = 0; j < run; ++j) q[j] = to_f(p[j]);
    } else {
      for (int64_t j = 0; j < run; ++j) q[j] = to_f(p[j * s]);
    }
    done += run;
    off += run * s;
    coord[inner] += run;
    for (int d = inner; d > 0 && coord[d] == plan.sizes[d]; --d) {
      off -= coord[d] * strides[d];
      coord[d] = 0;
      coord[d - 1] += 1;
      off += strides[d - 1];
    }
  }
}

// dst[j] = (src[j] +) w0*y0[j] + w1*y1[j] + ... (left to right, as the reference adds), G streams at once.
template <typename T, int G, bool FIRST>
inline void fwd_group(const float* src, float* dst, const T* const* ys, const float* w, int64_t n) {
  const T* p[G];
  vf wv[G];
  for (int g = 0; g < G; ++g) {
    p[g] = ys[g];
    wv[g] = splat(w[g]);
  }
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    vf s;
    if (FIRST) {
      s = wv[0] * loadv(p[0] + j);
    } else {
      s = loadv(src + j) + wv[0] * loadv(p[0] + j);
    }
    for (int g = 1; g < G; ++g) s += wv[g] * loadv(p[g] + j);
    storev(dst + j, s);
  }
  for (; j < n; ++j) {
    float s = FIRST ? w[0] * to_f(p[0][j]) : src[j] + w[0] * to_f(p[0][j]);
    for (int g = 1; g < G; ++g) s += w[g] * to_f(p[g][j]);
    dst[j] = s;
  }
}

template <typename T>
inline void fwd_any(int count, bool first, const float* src, float* dst, const T* const* ys, const float* w,
                    int64_t n) {
  dispatch_group(count, [&](auto gc) {
    constexpr int G = decltype(gc)::value;
    if (first) fwd_group<T, G, true>(src, dst, ys, w, n);
    else fwd_group<T, G, false>(src, dst, ys, w, n);
  });
}

template <typename T>
inline void store_block(T* out, const float* acc, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W) storev(out + j, loadv(acc + j));
  for (; j < n; ++j) out[j] = from_f<T>(acc[j]);
}

// gys[g][j] = w[g] * g[j] (GRADS) and dots[g] = <g, ys[g]> (DOTS) over the block, G streams at once. The
// fp32 lanes are flushed into double every kFlush elements (short fp32 chains: accurate dots). A backward
// that wants no alpha gradient reads no y; one that wants no input gradient writes none.
template <typename T, int G, bool DOTS, bool GRADS>
inline void bwd_group(const float* gsrc, const T* const* ys, T* const* gys, const float* w, int64_t n,
                      double* dots) {
  const T* p[G];
  T* q[G];
  vf wv[G];
  vf acc[G];
  double sum[G];
  for (int g = 0; g < G; ++g) {
    p[g] = ys[g];
    q[g] = gys[g];
    wv[g] = splat(w[g]);
    acc[g] = splat(0.f);
    sum[g] = 0.0;
  }
  int64_t j = 0;
  while (j + W <= n) {
    const int64_t stop = j + std::min<int64_t>(kFlush, ((n - j) / W) * W);
    for (; j < stop; j += W) {
      const vf gv = loadv(gsrc + j);
      for (int g = 0; g < G; ++g) {
        if constexpr (DOTS) acc[g] += gv * loadv(p[g] + j);
        if constexpr (GRADS) storev(q[g] + j, wv[g] * gv);
      }
    }
    for (int g = 0; g < G; ++g) {
      sum[g] += hsum(acc[g]);
      acc[g] = splat(0.f);
    }
  }
  float tail[G] = {};
  for (; j < n; ++j) {
    const float gv = gsrc[j];
    for (int g = 0; g < G; ++g) {
      if constexpr (DOTS) tail[g] += gv * to_f(p[g][j]);
      if constexpr (GRADS) q[g][j] = from_f<T>(w[g] * gv);
    }
  }
  if constexpr (DOTS)
    for (int g = 0; g < G; ++g) dots[g] = sum[g] + static_cast<double>(tail[g]);
}

// A strided input: its block was gathered into `yb` (float); grad_y is still written in its own dtype.
// (Called only when the alpha gradient is wanted; gy == nullptr: no input gradient.)
template <typename T>
inline double bwd_single_gathered(const float* gsrc, const float* yb, T* gy, float w, int64_t n) {
  vf acc = splat(0.f);
  const vf wv = splat(w);
  double sum = 0.0;
  int64_t j = 0;
  while (j + W <= n) {
    const int64_t stop = j + std::min<int64_t>(kFlush, ((n - j) / W) * W);
    for (; j < stop; j += W) {
      const vf gv = loadv(gsrc + j);
      acc += gv * loadv(yb + j);
      if (gy) storev(gy + j, wv * gv);
    }
    sum += hsum(acc);
    acc = splat(0.f);
  }
  float tail = 0.f;
  for (; j < n; ++j) {
    tail += gsrc[j] * yb[j];
    if (gy) gy[j] = from_f<T>(w * gsrc[j]);
  }
  return sum + tail;
}

// Forward over blocks [b0, b1).
void fwd_range(const FwdCtx& c, int64_t b0, int64_t b1) {
  alignas(64) float acc[kBlock];
  alignas(64) float tmp[kBlock];
  const Plan& plan = *c.plan;
  const std::vector<Group>& groups = *c.groups;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * kBlock;
    const int64_t len = std::min(kBlock, c.n - start);
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const Group& gr = groups[gi];
      const bool first = gi == 0;
      const bool last = gi + 1 == groups.size();
      float* dst = (last && c.out_float) ? static_cast<float*>(c.out) + start : acc;
      dispatch_dtype(gr.dtype, [&](auto tag) {
        using T = decltype(tag);
        if (gr.flat) {
          const T* ptrs[kGroup];
          for (int g = 0; g < gr.count; ++g) ptrs[g] = static_cast<const T*>(plan.ys[gr.first + g].data) + start;
          fwd_any<T>(gr.count, first, acc, dst, ptrs, c.w + gr.first, len);
        } else {
          const Src& src = plan.ys[gr.first];
          gather(static_cast<const T*>(src.data), src.strides, plan, start, len, tmp);
          const float* one = tmp;
          fwd_any<float>(1, first, acc, dst, &one, c.w + gr.first, len);
        }
      });
    }
    if (!c.out_float) {
      dispatch_dtype(c.out_dtype, [&](auto tag) {
        using T = decltype(tag);
        store_block(static_cast<T*>(c.out) + start, acc, len);
      });
    }
  }
}

// A strided input's gradient alone: gy = w * g over the block.
template <typename T>
inline void grad_single(const float* gsrc, T* gy, float w, int64_t n) {
  const vf wv = splat(w);
  int64_t j = 0;
  for (; j + W <= n; j += W) storev(gy + j, wv * loadv(gsrc + j));
  for (; j < n; ++j) gy[j] = from_f<T>(w * gsrc[j]);
}

// Backward over blocks [b0, b1): per block, grad_out is read once, every y read once (c.dots), every grad_y
// written once (c.grads); partial[b * k + i] = <grad_out, y_i> over block b.
void bwd_range(const BwdCtx& c, int64_t b0, int64_t b1) {
  alignas(64) float gb[kBlock];
  alignas(64) float tmp[kBlock];
  const Plan& plan = *c.plan;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * kBlock;
    const int64_t len = std::min(kBlock, c.n - start);
    const float* gsrc = gb;
    if (c.g_direct) {
      gsrc = static_cast<const float*>(plan.g.data) + start;
    } else {
      dispatch_dtype(plan.g.dtype, [&](auto tag) {
        using T = decltype(tag);
        const T* base = static_cast<const T*>(plan.g.data);
        if (plan.g.flat) {
          int64_t j = 0;
          for (; j + W <= len; j += W) storev(gb + j, loadv(base + start + j));
          for (; j < len; ++j) gb[j] = to_f(base[start + j]);
        } else {
          gather(base, plan.g.strides, plan, start, len, gb);
        }
      });
    }
    double* part = c.dots ? c.partial + b * c.k : nullptr;  // the block's dot products, when wanted
    for (const Group& gr : *c.groups) {
      dispatch_dtype(gr.dtype, [&](auto tag) {
        using T = decltype(tag);
        if (gr.flat) {
          const T* ptrs[kGroup];
          T* gptrs[kGroup];
          for (int g = 0; g < gr.count; ++g) {
            ptrs[g] = static_cast<const T*>(plan.ys[gr.first + g].data) + start;
            gptrs[g] = c.grads ? static_cast<T*>(c.gdata[gr.first + g]) + start : nullptr;
          }
          double* dots = part ? part + gr.first : nullptr;
          dispatch_group(gr.count, [&](auto gc) {
            constexpr int G = decltype(gc)::value;
            if (c.dots && c.grads) bwd_group<T, G, true, true>(gsrc, ptrs, gptrs, c.w + gr.first, len, dots);
            else if (c.dots) bwd_group<T, G, true, false>(gsrc, ptrs, gptrs, c.w + gr.first, len, dots);
            else bwd_group<T, G, false, true>(gsrc, ptrs, gptrs, c.w + gr.first, len, dots);
          });
        } else {
          const Src& src = plan.ys[gr.first];
          T* gy = c.grads ? static_cast<T*>(c.gdata[gr.first]) + start : nullptr;
          if (c.dots) {
            gather(static_cast<const T*>(src.data), src.strides, plan, start, len, tmp);
            part[gr.first] = bwd_single_gathered(gsrc, tmp, gy, c.w[gr.first], len);
          } else {
            grad_single(gsrc, gy, c.w[gr.first], len);
          }
        }
      });
    }
  }
}

}  // namespace EMODARTS_KNS
