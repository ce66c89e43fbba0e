// Epilogues of the DARTS recurrent cell on the CPU (csrc/darts_rnn.cpp), written once and compiled once per
// instruction set, like csrc/grouped_rnn_kernels.h: csrc/darts_rnn.cpp includes this file twice (no include
// guard, on purpose), into namespace `baseline` and, on x86-64, into namespace `avx2` under
// `#pragma GCC target("avx2,fma")`. float32 runs 8 lanes (csrc/simd_math.h, Cephes-style exp / tanh),
// float64 1 lane with std::exp / std::tanh (the tests' precision path).
// Before including, define EMODARTS_DARTS_NS (the namespace to fill) and EMO_INLINE.
//
// Every function works on the batch rows [b0, b1) of one time step (the caller spreads rows over threads).
// Layouts (row-major, one time step): a state s_k is (B, H); the states of a step are (S + 1, B, H), s_0
// first. A pre-activation block is (rows, 2H): [C | Z] per row, and the forward overwrites C with the gate
// c = sigmoid(C) (what backward reads). Node i (nj = i + 1 sources) has the block (nj * B, 2H), row
// j * B + b = s_j[b] W_i, and the probs rows p[e0 + j] (4 values each: tanh, relu, sigmoid, identity).

namespace EMODARTS_DARTS_NS {

#include "simd_math.h"  // V = v8f / double, load, store, vexp, vsigmoid, vtanh

template <typename V>
EMO_INLINE V bcast(typename Lanes<V>::scalar x);
template <>
EMO_INLINE v8f bcast<v8f>(float x) {
  return splat(x);
}
template <>
EMO_INLINE double bcast<double>(double x) {
  return x;
}

EMO_INLINE v8f relu(v8f z) { return vsel(z > 0.0f, z, splat(0.0f)); }
EMO_INLINE double relu(double z) { return z > 0.0 ? z : 0.0; }
EMO_INLINE v8f relu_grad(v8f z) { return vsel(z > 0.0f, splat(1.0f), splat(0.0f)); }  // 0 at z = 0, as torch
EMO_INLINE double relu_grad(double z) { return z > 0.0 ? 1.0 : 0.0; }

EMO_INLINE float hsum(v8f v) {
  float s = v[0];
  for (int u = 1; u < 8; ++u) s += v[u];
  return s;
}
EMO_INLINE double hsum(double v) { return v; }

// lanes [x, x + n) of a row: Full (n == lanes) loads / stores directly, else through a zero-padded copy
template <typename V, bool Full, typename T>
EMO_INLINE V get(const T* p, int64_t n) {
  V v;
  if constexpr (Full) {
    load(v, p);
  } else {
    T tmp[Lanes<V>::n] = {};
    for (int64_t u = 0; u < n; ++u) tmp[u] = p[u];
    load(v, tmp);
  }
  return v;
}
template <typename V, bool Full, typename T>
EMO_INLINE void put(T* p, const V& v, int64_t n) {
  if constexpr (Full) {
    store(p, v);
  } else {
    T tmp[Lanes<V>::n];
    store(tmp, v);
    for (int64_t u = 0; u < n; ++u) p[u] = tmp[u];
  }
}

// ---------------------------------------------------------------------------------------------------
// forward

// s0 = h + c0 (tanh(z0) - h), c0 = sigmoid(C0). pr: this row of [C0 | Z0] (gate written back), hr: h_{t-1}
template <typename V, typename T, bool Full>
EMO_INLINE void s0_fwd_block(int64_t x, int64_t n, T* pr, const T* hr, T* sr, int64_t H) {
  const V C = get<V, Full>(pr + x, n), Z = get<V, Full>(pr + H + x, n), h = get<V, Full>(hr + x, n);
  const V c = vsigmoid(C);
  put<V, Full>(pr + x, c, n);
  put<V, Full>(sr + x, h + c * (vtanh(Z) - h), n);
}

// s_{nj}[b] = sum_j sum_f p[j, f] (s_j + c_j (f(Z_j) - s_j)) = sum_j (ps_j s_j + c_j (a_j - ps_j s_j)),
// a_j = sum_f p[j, f] f(Z_j), ps_j = sum_f p[j, f] (< 1 when `none` holds mass)
template <typename V, typename T, bool Full>
EMO_INLINE void node_fwd_block(int64_t x, int64_t n, int64_t b, int64_t B, int64_t H, int64_t nj, const T* p, T* pre,
                               T* st) {
  V acc = bcast<V>(T(0));
  for (int64_t j = 0; j < nj; ++j) {
    T* pr = pre + (j * B + b) * 2 * H;
    const V C = get<V, Full>(pr + x, n), Z = get<V, Full>(pr + H + x, n);
    const V s = get<V, Full>(st + (j * B + b) * H + x, n);
    const V c = vsigmoid(C);
    put<V, Full>(pr + x, c, n);
    const T* pj = p + 4 * j;
    const V a = bcast<V>(pj[0]) * vtanh(Z) + bcast<V>(pj[1]) * relu(Z) + bcast<V>(pj[2]) * vsigmoid(Z) +
                bcast<V>(pj[3]) * Z;
    const V ps_s = bcast<V>(pj[0] + pj[1] + pj[2] + pj[3]) * s;
    acc = acc + ps_s + c * (a - ps_s);
  }
  put<V, Full>(st + (nj * B + b) * H + x, acc, n);
}

// h_t[b] = mean(s_1 .. s_S)
template <typename V, typename T, bool Full>
EMO_INLINE void mean_block(int64_t x, int64_t n, int64_t b, int64_t B, int64_t H, int64_t S, const T* st, T* out) {
  V acc = get<V, Full>(st + (B + b) * H + x, n);
  for (int64_t k = 2; k <= S; ++k) acc = acc + get<V, Full>(st + (k * B + b) * H + x, n);
  put<V, Full>(out + b * H + x, acc / bcast<V>(T(S)), n);
}

template <typename V, typename T>
void s0_fwd_rows(int64_t b0, int64_t b1, int64_t H, T* pre0, const T* h, T* s0) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = b0; b < b1; ++b) {
    T* pr = pre0 + b * 2 * H;
    const T* hr = h + b * H;
    T* sr = s0 + b * H;
    for (int64_t x = 0; x < hv; x += L) s0_fwd_block<V, T, true>(x, L, pr, hr, sr, H);
    if (hv < H) s0_fwd_block<V, T, false>(hv, H - hv, pr, hr, sr, H);
  }
}

template <typename V, typename T>
void node_fwd_rows(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const T* p, T* pre, T* st) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t x = 0; x < hv; x += L) node_fwd_block<V, T, true>(x, L, b, B, H, nj, p, pre, st);
    if (hv < H) node_fwd_block<V, T, false>(hv, H - hv, b, B, H, nj, p, pre, st);
  }
}

template <typename V, typename T>
void mean_rows(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t S, const T* st, T* out) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t x = 0; x < hv; x += L) mean_block<V, T, true>(x, L, b, B, H, S, st, out);
    if (hv < H) mean_block<V, T, false>(hv, H - hv, b, B, H, S, st, out);
  }
}

// ---------------------------------------------------------------------------------------------------
// backward

// One edge (source j of a node) on one row: g = dL/ds_{node output} (final), pr = [c | Z] of the edge's row,
// sr = s_j. Writes [dC | dZ] to dpr, adds the direct term g ps (1 - c) to dsr = dL/ds_j, and accumulates
// dL/dp[j, f] = sum g (s + c (f(Z) - s)) per lane into acc.
template <typename V, typename T, bool Full>
EMO_INLINE void edge_bwd_block(int64_t x, int64_t n, int64_t H, const T* pj, T ps, const T* pr, const T* sr,
                               const T* gr, T* dpr, T* dsr, V* acc) {
  const V g = get<V, Full>(gr + x, n), s = get<V, Full>(sr + x, n);
  const V c = get<V, Full>(pr + x, n), Z = get<V, Full>(pr + H + x, n);
  const V th = vtanh(Z), sg = vsigmoid(Z), r = relu(Z);
  const V p0 = bcast<V>(pj[0]), p1 = bcast<V>(pj[1]), p2 = bcast<V>(pj[2]), p3 = bcast<V>(pj[3]);
  const V P = bcast<V>(ps);
  const V a = p0 * th + p1 * r + p2 * sg + p3 * Z;
  const V da = p0 * (1 - th * th) + p1 * relu_grad(Z) + p2 * sg * (1 - sg) + p3;
  const V gc = g * c;
  put<V, Full>(dpr + x, g * (a - P * s) * c * (1 - c), n);
  put<V, Full>(dpr + H + x, gc * da, n);
  put<V, Full>(dsr + x, get<V, Full>(dsr + x, n) + P * (g - gc), n);
  const V base = g * s - gc * s;  // g s (1 - c)
  acc[0] = acc[0] + (base + gc * th);
  acc[1] = acc[1] + (base + gc * r);
  acc[2] = acc[2] + (base + gc * sg);
  acc[3] = acc[3] + (base + gc * Z);
}

// Node with nj sources, rows [b0, b1): pre / dpre its (nj * B, 2H) blocks, st / dst the step's states and
// their gradients ((S + 1, B, H); dst[nj] = dL/ds_nj is final). part: row b's probs-gradient partial sums
// at part + b * part_ld, one (nj, 4) block (double, accumulated over time steps).
template <typename V, typename T>
void node_bwd_rows(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const T* p, const T* pre, const T* st,
                   T* dpre, T* dst, double* part, int64_t part_ld) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = b0; b < b1; ++b) {
    const T* gr = dst + (nj * B + b) * H;
    for (int64_t j = 0; j < nj; ++j) {
      const T* pj = p + 4 * j;
      const T ps = pj[0] + pj[1] + pj[2] + pj[3];
      const int64_t row = j * B + b;
      const T* pr = pre + row * 2 * H;
      T* dpr = dpre + row * 2 * H;
      const T* sr = st + row * H;
      T* dsr = dst + row * H;
      V acc[4] = {bcast<V>(T(0)), bcast<V>(T(0)), bcast<V>(T(0)), bcast<V>(T(0))};
      for (int64_t x = 0; x < hv; x += L) edge_bwd_block<V, T, true>(x, L, H, pj, ps, pr, sr, gr, dpr, dsr, acc);
      if (hv < H) edge_bwd_block<V, T, false>(hv, H - hv, H, pj, ps, pr, sr, gr, dpr, dsr, acc);
      double* pp = part + b * part_ld + 4 * j;
      for (int f = 0; f < 4; ++f) pp[f] += static_cast<double>(hsum(acc[f]));
    }
  }
}

// s0 backward: ds0 = dL/ds0, pr = [c0 | Z0], hr = h_{t-1}. Writes [dC0 | dZ0] (= dL/dx_proj[t]) to gx and the
// direct part of dL/dh_{t-1}, ds0 (1 - c0), to dh (the caller adds [dC0 | dZ0] W0h^T).
template <typename V, typename T, bool Full>
EMO_INLINE void s0_bwd_block(int64_t x, int64_t n, int64_t H, const T* pr, const T* hr, const T* gr, T* gxr,
                             T* dhr) {
  const V c = get<V, Full>(pr + x, n), Z = get<V, Full>(pr + H + x, n);
  const V h = get<V, Full>(hr + x, n), g = get<V, Full>(gr + x, n);
  const V tz = vtanh(Z);
  const V gc = g * c;
  put<V, Full>(gxr + x, g * (tz - h) * c * (1 - c), n);
  put<V, Full>(gxr + H + x, gc * (1 - tz * tz), n);
  put<V, Full>(dhr + x, g - gc, n);
}

template <typename V, typename T>
void s0_bwd_rows(int64_t b0, int64_t b1, int64_t H, const T* pre0, const T* h, const T* ds0, T* gx, T* dh) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = b0; b < b1; ++b) {
    const T* pr = pre0 + b * 2 * H;
    const T* hr = h + b * H;
    const T* gr = ds0 + b * H;
    T* gxr = gx + b * 2 * H;
    T* dhr = dh + b * H;
    for (int64_t x = 0; x < hv; x += L) s0_bwd_block<V, T, true>(x, L, H, pr, hr, gr, gxr, dhr);
    if (hv < H) s0_bwd_block<V, T, false>(hv, H - hv, H, pr, hr, gr, gxr, dhr);
  }
}

// ---------------------------------------------------------------------------------------------------
// float32 entry points (what the Epi table of csrc/darts_rnn.cpp points at)

void s0_fwd(int64_t b0, int64_t b1, int64_t H, float* pre0, const float* h, float* s0) {
  s0_fwd_rows<v8f, float>(b0, b1, H, pre0, h, s0);
}
void node_fwd(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const float* p, float* pre, float* st) {
  node_fwd_rows<v8f, float>(b0, b1, B, H, nj, p, pre, st);
}
void mean(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t S, const float* st, float* out) {
  mean_rows<v8f, float>(b0, b1, B, H, S, st, out);
}
void node_bwd(int64_t b0, int64_t b1, int64_t B, int64_t H, int64_t nj, const float* p, const float* pre,
              const float* st, float* dpre, float* dst, double* part, int64_t part_ld) {
  node_bwd_rows<v8f, float>(b0, b1, B, H, nj, p, pre, st, dpre, dst, part, part_ld);
}
void s0_bwd(int64_t b0, int64_t b1, int64_t H, const float* pre0, const float* h, const float* ds0, float* gx,
            float* dh) {
  s0_bwd_rows<v8f, float>(b0, b1, H, pre0, h, ds0, gx, dh);
}
}  // namespace EMODARTS_DARTS_NS
