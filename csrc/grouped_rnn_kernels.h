// Kernels of the grouped recurrent layer on the CPU (csrc/grouped_rnn.cpp), written once and compiled once
// per instruction set: csrc/grouped_rnn.cpp includes this file three times (no include guard, on purpose),
// into namespace `baseline` and, on x86-64, into namespace `avx2` under `#pragma GCC target("avx2,fma")` and
// `avx512` under an AVX-512 target. The vectors are GCC/Clang vector extensions of 8 floats (16 in the
// avx512 copy, EMODARTS_GRNN_VEC = v16f): the compiler emits the instructions of the target it is compiling
// for (two SSE halves in the baseline copy, one AVX2 register and FMAs in the avx2 copy, one zmm register in
// the avx512 copy). Before including, define EMODARTS_GRNN_NS (the namespace to fill) and EMO_INLINE.

namespace EMODARTS_GRNN_NS {

#include "simd_math.h"  // V = v8f / double, load, store, vexp, vsigmoid, vtanh

// ---------------------------------------------------------------------------------------------------
// epilogues of one unit and one time step (B rows). Row stride of gate blocks: ldg.

// LSTM forward: pre = gates + bias (gates already hold x W_ih^T + h_{t-1} W_hh^T); writes the activated
// gates back, c_t and h_t. cprev == nullptr: c_{t-1} = 0.
template <typename V, typename T>
EMO_INLINE void lstm_fwd_block(int64_t j, T* g, const T* bias, const T* cp, T* c, T* h, int64_t H) {
  V pi, pf, pg, po, bi, bf, bg, bo, cprev;
  load(pi, g + j);
  load(pf, g + H + j);
  load(pg, g + 2 * H + j);
  load(po, g + 3 * H + j);
  load(bi, bias + j);
  load(bf, bias + H + j);
  load(bg, bias + 2 * H + j);
  load(bo, bias + 3 * H + j);
  V i = vsigmoid(pi + bi), f = vsigmoid(pf + bf), gg = vtanh(pg + bg), o = vsigmoid(po + bo);
  V cn = i * gg;
  if (cp != nullptr) {
    load(cprev, cp + j);
    cn = f * cprev + cn;
  }
  V hn = o * vtanh(cn);
  store(g + j, i);
  store(g + H + j, f);
  store(g + 2 * H + j, gg);
  store(g + 3 * H + j, o);
  store(c + j, cn);
  store(h + j, hn);
}

template <typename V, typename T>
EMO_INLINE void rnn_fwd_block(int64_t j, const T* g, const T* bias, T* h) {
  V p, b;
  load(p, g + j);
  load(b, bias + j);
  store(h + j, vtanh(p + b));
}

// LSTM backward: gh = dL/dh_t from the output, dhr = dL/dh_t through h_{t+1} (nullptr: 0), dc = dL/dc_t
// carried from step t+1 (in) and dL/dc_{t-1} (out). Writes the pre-activation gate gradients to dg.
template <typename V, typename T>
EMO_INLINE void lstm_bwd_block(int64_t j, const T* a, const T* c, const T* cp, const T* gh, const T* dhr, T* dc,
                               T* dg, int64_t H, bool first_step) {
  V i, f, g, o, cn, cprev, dh, dhrec, dcn;
  load(i, a + j);
  load(f, a + H + j);
  load(g, a + 2 * H + j);
  load(o, a + 3 * H + j);
  load(cn, c + j);
  load(dh, gh + j);
  if (dhr != nullptr) {
    load(dhrec, dhr + j);
    dh = dh + dhrec;
  }
  V tc = vtanh(cn);
  V dct = dh * o * (1 - tc * tc);
  if (!first_step) {
    load(dcn, dc + j);
    dct = dct + dcn;
  }
  V di = dct * g * i * (1 - i);
  V dgg = dct * i * (1 - g * g);
  V dO = dh * tc * o * (1 - o);
  V df;
  if (cp != nullptr) {
    load(cprev, cp + j);
    df = dct * cprev * f * (1 - f);
  } else {
    df = dct * 0;
  }
  store(dg + j, di);
  store(dg + H + j, df);
  store(dg + 2 * H + j, dgg);
  store(dg + 3 * H + j, dO);
  store(dc + j, dct * f);
}

template <typename V, typename T>
EMO_INLINE void rnn_bwd_block(int64_t j, const T* h, const T* gh, const T* dhr, T* dg) {
  V hv, dh, dhrec;
  load(hv, h + j);
  load(dh, gh + j);
  if (dhr != nullptr) {
    load(dhrec, dhr + j);
    dh = dh + dhrec;
  }
  store(dg + j, dh * (1 - hv * hv));
}

// Row loops: full vectors, then a tail through zero-padded scratch rows of 8 (same formulas).

template <typename V, typename T>
EMO_INLINE void lstm_fwd_rows(int64_t B, int64_t H, T* gates, int64_t ldg, const T* bias, const T* cprev, T* c,
                              T* h) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = 0; b < B; ++b) {
    T* g = gates + b * ldg;
    const T* cp = cprev ? cprev + b * H : nullptr;
    T* cr = c + b * H;
    T* hr = h + b * H;
    for (int64_t j = 0; j < hv; j += L) lstm_fwd_block<V, T>(j, g, bias, cp, cr, hr, H);
    if (hv < H) {
      const int64_t n = H - hv;
      T tg[4 * L] = {}, tb[4 * L] = {}, tcp[L] = {}, tc[L] = {}, th[L] = {};
      for (int q = 0; q < 4; ++q)
        for (int64_t u = 0; u < n; ++u) {
          tg[q * L + u] = g[q * H + hv + u];
          tb[q * L + u] = bias[q * H + hv + u];
        }
      if (cp)
        for (int64_t u = 0; u < n; ++u) tcp[u] = cp[hv + u];
      lstm_fwd_block<V, T>(0, tg, tb, cp ? tcp : nullptr, tc, th, L);
      for (int q = 0; q < 4; ++q)
        for (int64_t u = 0; u < n; ++u) g[q * H + hv + u] = tg[q * L + u];
      for (int64_t u = 0; u < n; ++u) {
        cr[hv + u] = tc[u];
        hr[hv + u] = th[u];
      }
    }
  }
}

template <typename V, typename T>
EMO_INLINE void rnn_fwd_rows(int64_t B, int64_t H, const T* gates, int64_t ldg, const T* bias, T* h) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = 0; b < B; ++b) {
    const T* g = gates + b * ldg;
    T* hr = h + b * H;
    for (int64_t j = 0; j < hv; j += L) rnn_fwd_block<V, T>(j, g, bias, hr);
    if (hv < H) {
      const int64_t n = H - hv;
      T tg[L] = {}, tb[L] = {}, th[L] = {};
      for (int64_t u = 0; u < n; ++u) {
        tg[u] = g[hv + u];
        tb[u] = bias[hv + u];
      }
      rnn_fwd_block<V, T>(0, tg, tb, th);
      for (int64_t u = 0; u < n; ++u) hr[hv + u] = th[u];
    }
  }
}

template <typename V, typename T>
EMO_INLINE void lstm_bwd_rows(int64_t B, int64_t H, const T* act, int64_t ldg, const T* c, const T* cprev,
                              const T* gh, const T* dhr, T* dc, T* dg, bool first_step) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = 0; b < B; ++b) {
    const T* a = act + b * ldg;
    const T* cr = c + b * H;
    const T* cp = cprev ? cprev + b * H : nullptr;
    const T* ghr = gh + b * H;
    const T* dhrr = dhr ? dhr + b * H : nullptr;
    T* dcr = dc + b * H;
    T* dgr = dg + b * ldg;
    for (int64_t j = 0; j < hv; j += L) lstm_bwd_block<V, T>(j, a, cr, cp, ghr, dhrr, dcr, dgr, H, first_step);
    if (hv < H) {
      const int64_t n = H - hv;
      T ta[4 * L] = {}, tc[L] = {}, tcp[L] = {}, tgh[L] = {}, tdh[L] = {}, tdc[L] = {}, tdg[4 * L] = {};
      for (int q = 0; q < 4; ++q)
        for (int64_t u = 0; u < n; ++u) ta[q * L + u] = a[q * H + hv + u];
      for (int64_t u = 0; u < n; ++u) {
        tc[u] = cr[hv + u];
        if (cp) tcp[u] = cp[hv + u];
        tgh[u] = ghr[hv + u];
        if (dhrr) tdh[u] = dhrr[hv + u];
        tdc[u] = dcr[hv + u];
      }
      lstm_bwd_block<V, T>(0, ta, tc, cp ? tcp : nullptr, tgh, dhrr ? tdh : nullptr, tdc, tdg, L, first_step);
      for (int q = 0; q < 4; ++q)
        for (int64_t u = 0; u < n; ++u) dgr[q * H + hv + u] = tdg[q * L + u];
      for (int64_t u = 0; u < n; ++u) dcr[hv + u] = tdc[u];
    }
  }
}

template <typename V, typename T>
EMO_INLINE void rnn_bwd_rows(int64_t B, int64_t H, const T* h, const T* gh, const T* dhr, T* dg, int64_t ldg) {
  constexpr int L = Lanes<V>::n;
  const int64_t hv = H - H % L;
  for (int64_t b = 0; b < B; ++b) {
    const T* hr = h + b * H;
    const T* ghr = gh + b * H;
    const T* dhrr = dhr ? dhr + b * H : nullptr;
    T* dgr = dg + b * ldg;
    for (int64_t j = 0; j < hv; j += L) rnn_bwd_block<V, T>(j, hr, ghr, dhrr, dgr);
    if (hv < H) {
      const int64_t n = H - hv;
      T th[L] = {}, tgh[L] = {}, tdh[L] = {}, tdg[L] = {};
      for (int64_t u = 0; u < n; ++u) {
        th[u] = hr[hv + u];
        tgh[u] = ghr[hv + u];
        if (dhrr) tdh[u] = dhrr[hv + u];
      }
      rnn_bwd_block<V, T>(0, th, tgh, dhrr ? tdh : nullptr, tdg);
      for (int64_t u = 0; u < n; ++u) dgr[hv + u] = tdg[u];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// float32 entry points (what the Epi table of csrc/grouped_rnn.cpp points at), on vectors of
// EMODARTS_GRNN_VEC (v8f unless the including copy says otherwise: v16f in the AVX-512 copy)

#ifndef EMODARTS_GRNN_VEC
#define EMODARTS_GRNN_VEC v8f
#endif
void lstm_fwd(int64_t B, int64_t H, float* g, int64_t ldg, const float* bias, const float* cp, float* c, float* h) {
  lstm_fwd_rows<EMODARTS_GRNN_VEC, float>(B, H, g, ldg, bias, cp, c, h);
}
void rnn_fwd(int64_t B, int64_t H, const float* g, int64_t ldg, const float* bias, float* h) {
  rnn_fwd_rows<EMODARTS_GRNN_VEC, float>(B, H, g, ldg, bias, h);
}
void lstm_bwd(int64_t B, int64_t H, const float* a, int64_t ldg, const float* c, const float* cp, const float* gh,
              const float* dhr, float* dc, float* dg, bool first) {
  lstm_bwd_rows<EMODARTS_GRNN_VEC, float>(B, H, a, ldg, c, cp, gh, dhr, dc, dg, first);
}
void rnn_bwd(int64_t B, int64_t H, const float* h, const float* gh, const float* dhr, float* dg, int64_t ldg) {
  rnn_bwd_rows<EMODARTS_GRNN_VEC, float>(B, H, h, gh, dhr, dg, ldg);
}
#undef EMODARTS_GRNN_VEC
}  // namespace EMODARTS_GRNN_NS

