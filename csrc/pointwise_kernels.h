// Small-channel GEMM kernels of the pointwise op (csrc/pointwise.cpp), written once for any vector width and
// compiled once per instruction set (no include guard: it is included on purpose twice).
//
// Before including, define EMODARTS_PWNS (the namespace to fill) and EMODARTS_PWVB (bytes per vector: 16 for
// the SSE2 / NEON baseline, 32 for AVX2). Vectors are GCC/Clang vector extensions, loaded and stored through
// memcpy (unaligned). Matrices are row-major with a row stride (ld): a (rows, P) plane of one batch item.
//
// - rows_gemm: y[o, p] = sum_c w[o, c] x[c, p] for p in [p0, p1): blocks of 4 output rows x 2 vectors of p
//   in registers, the input rows of the block read once per 4 output rows (from L1: callers pass short
//   ranges of p).
// - wgrad_accumulate: acc[o, c] += sum_p g[o, p] x[c, p] for p in [p0, p1): blocks of 4 x 2 (o, c) vector
//   partial sums in T over the range, then added to double (callers pass ranges of at most kChunk).
// A range's last partial vector of columns runs as one whole vector on zero-padded copies in both (rows of at
// most kTailRows): at the reduction cells' small planes (5 x 12 = 60 columns at the tiny preset) the element-by-
// element tail took as long as the vectors.

namespace EMODARTS_PWNS {

constexpr int VB = EMODARTS_PWVB;

#include "vec_ext.h"  // V<T>, for this namespace's VB

// OB output rows starting at w (row stride C) and y (row stride ldy)
template <typename T, int OB>
inline void rows_gemm_block(const T* w, int64_t C, const T* x, int64_t ldx, T* y, int64_t ldy, int64_t p0,
                            int64_t p1) {
  using Vt = V<T>;
  constexpr int L = Vt::n;
  int64_t p = p0;
  for (; p + 2 * L <= p1; p += 2 * L) {
    typename Vt::v a[OB][2];
    for (int ob = 0; ob < OB; ++ob) a[ob][0] = a[ob][1] = Vt::splat(T(0));
    for (int64_t c = 0; c < C; ++c) {
      const typename Vt::v x0 = Vt::load(x + c * ldx + p), x1 = Vt::load(x + c * ldx + p + L);
      for (int ob = 0; ob < OB; ++ob) {
        const typename Vt::v wv = Vt::splat(w[ob * C + c]);
        a[ob][0] += wv * x0;
        a[ob][1] += wv * x1;
      }
    }
    for (int ob = 0; ob < OB; ++ob) {
      Vt::store(y + ob * ldy + p, a[ob][0]);
      Vt::store(y + ob * ldy + p + L, a[ob][1]);
    }
  }
  for (; p + L <= p1; p += L) {
    typename Vt::v a[OB];
    for (int ob = 0; ob < OB; ++ob) a[ob] = Vt::splat(T(0));
    for (int64_t c = 0; c < C; ++c) {
      const typename Vt::v x0 = Vt::load(x + c * ldx + p);
      for (int ob = 0; ob < OB; ++ob) a[ob] += Vt::splat(w[ob * C + c]) * x0;
    }
    for (int ob = 0; ob < OB; ++ob) Vt::store(y + ob * ldy + p, a[ob]);
  }
  for (; p < p1; ++p) {
    for (int ob = 0; ob < OB; ++ob) {
      T s = T(0);
      for (int64_t c = 0; c < C; ++c) s += w[ob * C + c] * x[c * ldx + p];
      y[ob * ldy + p] = s;
    }
  }
}

// y (O rows) = w (O x C) @ x (C rows), columns [p0, p1), whole vectors only
template <typename T>
void rows_gemm_vectors(const T* w, int64_t O, int64_t C, const T* x, int64_t ldx, T* y, int64_t ldy, int64_t p0,
                       int64_t p1) {
  int64_t o = 0;
  for (; o + 4 <= O; o += 4) rows_gemm_block<T, 4>(w + o * C, C, x, ldx, y + o * ldy, ldy, p0, p1);
  switch (O - o) {
    case 3: rows_gemm_block<T, 3>(w + o * C, C, x, ldx, y + o * ldy, ldy, p0, p1); break;
    case 2: rows_gemm_block<T, 2>(w + o * C, C, x, ldx, y + o * ldy, ldy, p0, p1); break;
    case 1: rows_gemm_block<T, 1>(w + o * C, C, x, ldx, y + o * ldy, ldy, p0, p1); break;
    default: break;
  }
}

// Rows of at most kTailRows get their last partial vector of columns computed as one whole vector on zero-padded
// copies (the small planes of the reduction cells, 5 x 12 at the tiny preset, have a quarter of their columns in
// it); every lane sums the same products in the same order as the scalar loop would.
constexpr int64_t kTailRows = 64;

// y (O rows) = w (O x C) @ x (C rows), columns [p0, p1)
template <typename T>
void rows_gemm(const T* w, int64_t O, int64_t C, const T* x, int64_t ldx, T* y, int64_t ldy, int64_t p0, int64_t p1) {
  constexpr int L = V<T>::n;
  const int64_t pv = p0 + (p1 - p0) / L * L;
  if (pv == p1 || O > kTailRows || C > kTailRows) return rows_gemm_vectors<T>(w, O, C, x, ldx, y, ldy, p0, p1);
  rows_gemm_vectors<T>(w, O, C, x, ldx, y, ldy, p0, pv);
  const size_t r = static_cast<size_t>(p1 - pv) * sizeof(T);
  T xb[kTailRows * L], yb[kTailRows * L];
  std::memset(xb, 0, static_cast<size_t>(C * L) * sizeof(T));
  for (int64_t c = 0; c < C; ++c) std::memcpy(xb + c * L, x + c * ldx + pv, r);
  rows_gemm_vectors<T>(w, O, C, xb, L, yb, L, 0, L);
  for (int64_t o = 0; o < O; ++o) std::memcpy(y + o * ldy + pv, yb + o * L, r);
}

// acc[ob, cb] (row stride C) += sum over p in [p0, p1) of g[ob, p] x[cb, p], for OB rows of g and CB of x. With
// gt and xt (the same rows' columns from p1 on, zero-padded to one vector, row stride L) they join the sums as one
// more vector; without, columns left over after the whole vectors are summed one by one in double.
template <typename T, int OB, int CB>
inline void wgrad_block(const T* g, int64_t ldg, const T* x, int64_t ldx, double* acc, int64_t C, int64_t p0,
                        int64_t p1, const T* gt, const T* xt) {
  using Vt = V<T>;
  constexpr int L = Vt::n;
  typename Vt::v a[OB][CB];
  for (int ob = 0; ob < OB; ++ob)
    for (int cb = 0; cb < CB; ++cb) a[ob][cb] = Vt::splat(T(0));
  int64_t p = p0;
  for (; p + L <= p1; p += L) {
    typename Vt::v xv[CB];
    for (int cb = 0; cb < CB; ++cb) xv[cb] = Vt::load(x + cb * ldx + p);
    for (int ob = 0; ob < OB; ++ob) {
      const typename Vt::v gv = Vt::load(g + ob * ldg + p);
      for (int cb = 0; cb < CB; ++cb) a[ob][cb] += gv * xv[cb];
    }
  }
  if (gt != nullptr) {
    typename Vt::v xv[CB];
    for (int cb = 0; cb < CB; ++cb) xv[cb] = Vt::load(xt + cb * L);
    for (int ob = 0; ob < OB; ++ob) {
      const typename Vt::v gv = Vt::load(gt + ob * L);
      for (int cb = 0; cb < CB; ++cb) a[ob][cb] += gv * xv[cb];
    }
  }
  for (int ob = 0; ob < OB; ++ob) {
    for (int cb = 0; cb < CB; ++cb) {
      double s = Vt::total(a[ob][cb]);
      for (int64_t q = p; q < p1; ++q) s += static_cast<double>(g[ob * ldg + q]) * static_cast<double>(x[cb * ldx + q]);
      acc[ob * C + cb] += s;
    }
  }
}

template <typename T, int OB>
inline void wgrad_rows(const T* g, int64_t ldg, const T* x, int64_t ldx, double* acc, int64_t C, int64_t p0,
                       int64_t p1, const T* gt, const T* xt) {
  constexpr int L = V<T>::n;
  int64_t c = 0;
  for (; c + 2 <= C; c += 2)
    wgrad_block<T, OB, 2>(g, ldg, x + c * ldx, ldx, acc + c, C, p0, p1, gt, xt ? xt + c * L : nullptr);
  if (c < C) wgrad_block<T, OB, 1>(g, ldg, x + c * ldx, ldx, acc + c, C, p0, p1, gt, xt ? xt + c * L : nullptr);
}

// acc (O x C, doubles) += g (O rows) @ x (C rows)^T over columns [p0, p1); a last partial vector of columns (rows of
// at most kTailRows) joins the vector sums zero-padded (the small planes' case, as in rows_gemm)
template <typename T>
void wgrad_accumulate(const T* g, int64_t O, int64_t ldg, const T* x, int64_t C, int64_t ldx, double* acc, int64_t p0,
                      int64_t p1) {
  constexpr int L = V<T>::n;
  const int64_t pv = p0 + (p1 - p0) / L * L;
  const bool pad = pv < p1 && O <= kTailRows && C <= kTailRows;
  T gb[kTailRows * L], xb[kTailRows * L];
  if (pad) {
    const size_t r = static_cast<size_t>(p1 - pv) * sizeof(T);
    std::memset(gb, 0, static_cast<size_t>(O * L) * sizeof(T));
    std::memset(xb, 0, static_cast<size_t>(C * L) * sizeof(T));
    for (int64_t o = 0; o < O; ++o) std::memcpy(gb + o * L, g + o * ldg + pv, r);
    for (int64_t c = 0; c < C; ++c) std::memcpy(xb + c * L, x + c * ldx + pv, r);
  }
  const int64_t end = pad ? pv : p1;
  const T* xt = pad ? xb : nullptr;
  auto rows = [&](auto ob, int64_t o) {  // OB = ob rows of g from row o
    wgrad_rows<T, decltype(ob)::value>(g + o * ldg, ldg, x, ldx, acc + o * C, C, p0, end, pad ? gb + o * L : nullptr,
                                       xt);
  };
  int64_t o = 0;
  for (; o + 4 <= O; o += 4) rows(std::integral_constant<int, 4>(), o);
  switch (O - o) {
    case 3: rows(std::integral_constant<int, 3>(), o); break;
    case 2: rows(std::integral_constant<int, 2>(), o); break;
    case 1: rows(std::integral_constant<int, 1>(), o); break;
    default: break;
  }
}

}  // namespace EMODARTS_PWNS
