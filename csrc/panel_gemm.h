// Products against a right operand packed once and reused many times: C (M x N, float32) = A B + beta C, on
// AVX-512 register tiles. The grouped recurrent layer multiplies by the same weight at every time step (the
// recurrent products, 16 x 128 by 128 x 512 at the paper preset); a BLAS call re-packs that weight each time.
// Two kinds of operands, one kernel:
// - bf16 (`Bf16Pairs`, AVX512-BF16's vdpbf16ps): A bf16, B rounded once to bf16 and packed in pairs of k. Why
//   our own: MKL's gemm_bf16bf16f32 uses a CPU's bf16 units only on Intel; elsewhere (an AMD EPYC with
//   AVX512-BF16: `perf` shows MKL converting both operands and running its float32 kernel) it is slower than a
//   float32 product.
// - float32 (`F32`, FMA): A and B float32, B packed once; on CPUs where MKL's own packed GEMM does not pay (not
//   Intel's: cpu_common::packed_gemm_pays).
//
// Packed layout of B (Kd x N): panels of 16 columns; in a panel, for each step of k, 16 words: bf16 pairs
// (word j = (B[2p][16q + j], B[2p + 1][16q + j]), low half first: what vdpbf16ps multiplies with a broadcast
// word (A[m][2p], A[m][2p + 1]) and adds pairwise into 16 float32 sums) or floats (B[k][16q + j]). An odd
// last k of a pair and the columns past N are zeros. Products of bf16 numbers are exact in float32 and every
// sum runs in float32 in k order, so results differ from a BLAS product of the same operands only in the order
// of the sums.
//
// The kernel tiles C by up to 4 rows x 4 panels (16 accumulators); a call runs on the calling thread (the
// grouped layer runs one unit per thread).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu_common.h"

#ifdef EMODARTS_CPU_HAVE_AVX2
#include <immintrin.h>
#endif

namespace emodarts {
namespace panel_gemm {

// c10's rounding to bf16 (nearest even; NaN to the quiet NaN 0x7FC0) without branches, so loops vectorise
inline uint32_t bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return v != v ? 0x7FC0u : r;
}
inline uint32_t bf16_bits(c10::BFloat16 v) { return v.x; }

// The two kinds' packed words and k steps.
struct Bf16Pairs {
  using Word = uint32_t;
  static int64_t steps(int64_t Kd) { return (Kd + 1) / 2; }
  template <typename S>
  static Word at(const S* W, int64_t ldw, bool trans, int64_t Kd, int64_t p, int64_t n) {
    const int64_t k0 = 2 * p;
    const uint32_t lo = bf16_bits(trans ? W[n * ldw + k0] : W[k0 * ldw + n]);
    return k0 + 1 < Kd ? lo | bf16_bits(trans ? W[n * ldw + k0 + 1] : W[(k0 + 1) * ldw + n]) << 16 : lo;
  }
};
struct F32 {
  using Word = float;
  static int64_t steps(int64_t Kd) { return Kd; }
  static Word at(const float* W, int64_t ldw, bool trans, int64_t, int64_t k, int64_t n) {
    return trans ? W[n * ldw + k] : W[k * ldw + n];
  }
};

// words of a packed Kd x N operand
template <typename Kind>
int64_t packed_words(int64_t Kd, int64_t N) {
  return Kind::steps(Kd) * ((N + 15) / 16) * 16;
}

// B (Kd x N) from W: B[k][n] = W[n * ldw + k] (trans: W is N x Kd) or W[k * ldw + n]; W float32 (rounded for
// bf16) or bf16. Also the layout of a packed left operand (`gemm_packed_lhs`): A^T packed as a Kd x M operand.
template <typename Kind, typename S>
void pack(const S* W, int64_t ldw, bool trans, int64_t Kd, int64_t N, typename Kind::Word* dst) {
  const int64_t KS = Kind::steps(Kd), NB = (N + 15) / 16;
  if (N % 16 != 0)  // the columns past N: zeros in the last panel
    for (int64_t p = 0; p < KS; ++p)
      for (int64_t j = N % 16; j < 16; ++j) dst[((NB - 1) * KS + p) * 16 + j] = 0;
  if (trans) {  // a row of W holds a column of B: read it along the row
    for (int64_t n = 0; n < N; ++n) {
      typename Kind::Word* out = dst + (n / 16) * KS * 16 + n % 16;
      for (int64_t p = 0; p < KS; ++p) out[p * 16] = Kind::at(W, ldw, true, Kd, p, n);
    }
    return;
  }
  for (int64_t p = 0; p < KS; ++p)  // rows of W interleave into a step's words
    for (int64_t q = 0; q < NB; ++q) {
      typename Kind::Word* out = dst + (q * KS + p) * 16;
      const int64_t n0 = q * 16, cols = N - n0 < 16 ? N - n0 : 16;
      for (int64_t j = 0; j < cols; ++j) out[j] = Kind::at(W, ldw, false, Kd, p, n0 + j);
    }
}

// The CPU's side of the two paths (read once) and the switches (read per call, like EMODARTS_GROUPED_GEMM):
// bf16: a CPU with AVX512-BF16 that is not Intel's (on Intel, MKL's bf16 GEMM runs on the bf16 units or AMX
// itself); EMODARTS_BF16_GEMM=dot or =mkl picks either wherever it can run.
// float32: a CPU with AVX-512 that is not Intel's (on Intel, MKL's packed GEMM pays: cpu_common.h);
// EMODARTS_F32_PANEL=1 or =0 picks either wherever it can run.
// AVX-512 as the grouped layer's epilogues see it (EMODARTS_GROUPED_NO_AVX2 / _NO_AVX512 switch it off)
inline bool cpu_has(bool bf16) {
#ifdef EMODARTS_CPU_HAVE_AVX2
  static const bool f32 = cpu_common::avx512_enabled();
  static const bool dot = f32 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
  return bf16 ? dot : f32;
#else
  (void)bf16;
  return false;
#endif
}
inline bool chosen(bool bf16) {
  if (!cpu_has(bf16)) return false;
  const char* e = std::getenv(bf16 ? "EMODARTS_BF16_GEMM" : "EMODARTS_F32_PANEL");
  if (e != nullptr && *e != '\0') return std::strcmp(e, bf16 ? "dot" : "1") == 0;
  return !cpu_common::cpu_is_intel();
}
inline bool bf16_enabled() { return chosen(true); }
inline bool f32_enabled() { return chosen(false); }

#ifdef EMODARTS_CPU_HAVE_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")
#endif

// The kinds' instructions: a packed step of 16 words, a broadcast A word, the multiply-add.
struct Bf16Ops {
  using Vec = __m512i;
  static Vec load(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static Vec bcast(uint32_t w) { return _mm512_set1_epi32(static_cast<int>(w)); }
  static __m512 madd(__m512 acc, Vec a, Vec b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
};
struct F32Ops {
  using Vec = __m512;
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec bcast(float w) { return _mm512_set1_ps(w); }
  static __m512 madd(__m512 acc, Vec a, Vec b) { return _mm512_fmadd_ps(a, b, acc); }
};

// The left operand's words: bf16 rows in place, a pair (A[m][2p], A[m][2p + 1]) per step (the last, odd k
// with a zero) ...
struct Bf16Rows {
  using Ops = Bf16Ops;
  const c10::BFloat16* a;
  int64_t lda;
  static int64_t full(int64_t Kd) { return Kd / 2; }
  uint32_t word(int i, int64_t p) const {
    uint32_t w;
    std::memcpy(&w, a + i * lda + 2 * p, sizeof w);
    return w;
  }
  uint32_t last(int i, int64_t Kd) const { return a[i * lda + Kd - 1].x; }
  Bf16Rows rows_from(int64_t m) const { return {a + m * lda, lda}; }
};

// ... bf16 packed by pack<Bf16Pairs> as a Kd x M operand (panels of 16 rows of A, an odd k already padded) ...
struct Bf16PackedRows {
  using Ops = Bf16Ops;
  const uint32_t* panel;  // the panel holding row `row` at step 0
  int64_t KS, row;
  static int64_t full(int64_t Kd) { return (Kd + 1) / 2; }
  uint32_t word(int i, int64_t p) const { return panel[p * 16 + row + i]; }
  uint32_t last(int, int64_t) const { return 0; }  // never read: full() covers every step
  Bf16PackedRows rows_from(int64_t m) const { return {panel + (m / 16) * KS * 16, KS, m % 16}; }
};

// ... or float32 rows in place.
struct F32Rows {
  using Ops = F32Ops;
  const float* a;
  int64_t lda;
  static int64_t full(int64_t Kd) { return Kd; }
  float word(int i, int64_t k) const { return a[i * lda + k]; }
  float last(int, int64_t) const { return 0.0f; }  // never read
  F32Rows rows_from(int64_t m) const { return {a + m * lda, lda}; }
};

// One tile: rows [0, MR) of A and C, panels [0, NR) of Bp (KS steps each; `cols` valid columns from the
// tile's first). A tile of packed rows stays inside one panel of 16 rows (tiles of 4 start at multiples of 4).
template <int MR, int NR, typename AOp, typename Word>
inline void tile(const AOp& A, const Word* Bp, int64_t KS, int64_t Kd, float beta, float* C, int64_t ldc,
                 int64_t cols) {
  using Ops = typename AOp::Ops;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  // one step of k: the A words of the tile's rows (word(i) for row i) against the NR panels' words at step p
  const auto step = [&](int64_t p, auto word) __attribute__((always_inline)) {
    typename Ops::Vec b[NR];
    for (int j = 0; j < NR; ++j) b[j] = Ops::load(Bp + (j * KS + p) * 16);
    for (int i = 0; i < MR; ++i) {
      const typename Ops::Vec a = Ops::bcast(word(i));
      for (int j = 0; j < NR; ++j) acc[i][j] = Ops::madd(acc[i][j], a, b[j]);
    }
  };
  const int64_t full = AOp::full(Kd);
  for (int64_t p = 0; p < full; ++p) step(p, [&](int i) { return A.word(i, p); });
  if (full < KS) step(full, [&](int i) { return A.last(i, Kd); });  // bf16 rows, odd Kd: (A[m][Kd-1], 0)
  const __m512 vbeta = _mm512_set1_ps(beta);
  for (int j = 0; j < NR; ++j) {
    const int64_t left = cols - 16 * j;
    const __mmask16 mask = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    for (int i = 0; i < MR; ++i) {
      float* c = C + i * ldc + 16 * j;
      __m512 r = acc[i][j];
      if (beta != 0.0f) r = _mm512_fmadd_ps(vbeta, _mm512_maskz_loadu_ps(mask, c), r);
      _mm512_mask_storeu_ps(c, mask, r);
    }
  }
}

template <int MR, typename AOp, typename Word>
inline void row_tile(int nr, const AOp& A, const Word* Bp, int64_t KS, int64_t Kd, float beta, float* C,
                     int64_t ldc, int64_t cols) {
  switch (nr) {
    case 4: return tile<MR, 4>(A, Bp, KS, Kd, beta, C, ldc, cols);
    case 3: return tile<MR, 3>(A, Bp, KS, Kd, beta, C, ldc, cols);
    case 2: return tile<MR, 2>(A, Bp, KS, Kd, beta, C, ldc, cols);
    default: return tile<MR, 1>(A, Bp, KS, Kd, beta, C, ldc, cols);
  }
}

// C (M x N, ldc) = A B + beta C over a packed B of KS steps; beta 0 never reads C.
template <typename AOp, typename Word>
void gemm_any(int64_t M, int64_t N, int64_t Kd, int64_t KS, const AOp& A, const Word* Bp, float beta, float* C,
              int64_t ldc) {
  const int64_t NB = (N + 15) / 16;
  for (int64_t q = 0; q < NB; q += 4) {  // a tile's panels (16-32 KB at Kd = 128) stay in cache over the rows
    const int nr = static_cast<int>(NB - q < 4 ? NB - q : 4);
    const int64_t cols = N - 16 * q;
    const Word* bq = Bp + q * KS * 16;
    for (int64_t m = 0; m < M; m += 4) {
      const AOp a = A.rows_from(m);
      float* c = C + m * ldc + 16 * q;
      switch (M - m < 4 ? M - m : 4) {
        case 4: row_tile<4>(nr, a, bq, KS, Kd, beta, c, ldc, cols); break;
        case 3: row_tile<3>(nr, a, bq, KS, Kd, beta, c, ldc, cols); break;
        case 2: row_tile<2>(nr, a, bq, KS, Kd, beta, c, ldc, cols); break;
        default: row_tile<1>(nr, a, bq, KS, Kd, beta, c, ldc, cols); break;
      }
    }
  }
}

// C (M x N, ldc) = A (M x Kd, bf16, lda) B + beta C, B packed by pack<Bf16Pairs>
inline void gemm_bf16(int64_t M, int64_t N, int64_t Kd, const c10::BFloat16* A, int64_t lda, const uint32_t* Bp,
                      float beta, float* C, int64_t ldc) {
  gemm_any(M, N, Kd, Bf16Pairs::steps(Kd), Bf16Rows{A, lda}, Bp, beta, C, ldc);
}

// C (M x N, ldc) = A B + beta C with A given as Ap = pack<Bf16Pairs>(A^T) (Kd x M): the weight gradients,
// dW = dgates^T h, whose dgates are stored (rows x gates).
inline void gemm_bf16_packed_lhs(int64_t M, int64_t N, int64_t Kd, const uint32_t* Ap, const uint32_t* Bp,
                                 float beta, float* C, int64_t ldc) {
  const int64_t KS = Bf16Pairs::steps(Kd);
  gemm_any(M, N, Kd, KS, Bf16PackedRows{Ap, KS, 0}, Bp, beta, C, ldc);
}

// C (M x N, ldc) = A (M x Kd, float32, lda) B + beta C, B packed by pack<F32>
inline void gemm_f32(int64_t M, int64_t N, int64_t Kd, const float* A, int64_t lda, const float* Bp, float beta,
                     float* C, int64_t ldc) {
  gemm_any(M, N, Kd, F32::steps(Kd), F32Rows{A, lda}, Bp, beta, C, ldc);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else  // no x86-64 vector code: never enabled, never called
inline void gemm_bf16(int64_t, int64_t, int64_t, const c10::BFloat16*, int64_t, const uint32_t*, float, float*,
                      int64_t) {}
inline void gemm_bf16_packed_lhs(int64_t, int64_t, int64_t, const uint32_t*, const uint32_t*, float, float*,
                                 int64_t) {}
inline void gemm_f32(int64_t, int64_t, int64_t, const float*, int64_t, const float*, float, float*, int64_t) {}
#endif

}  // namespace panel_gemm
}  // namespace emodarts
