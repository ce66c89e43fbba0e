// bf16 products on the CPU's AVX512-BF16 dot-product instruction (vdpbf16ps): C (M x N, float32) = A B + beta C
// with A bfloat16 rows in place and B a float32 matrix rounded once to bf16 and packed by `pack_bf16_rhs`.
//
// Why our own: MKL's gemm_bf16bf16f32 uses a CPU's bf16 units only on Intel; elsewhere (an AMD EPYC with
// AVX512-BF16: `perf` shows MKL converting both operands and running its float32 kernel) it is slower than a
// float32 product, and at the grouped layer's small per-step products (16 x 128 by 128 x 512) it repacks the
// weight at every call. Here a weight is packed once per call of the op and every time step reuses it.
//
// Packed layout of B (Kd x N): panels of 16 columns; in a panel, for each pair of rows (2p, 2p+1), 16 words of
// two bf16 each, word j = (B[2p][16 q + j], B[2p + 1][16 q + j]) (low half first): what vdpbf16ps multiplies
// with a broadcast word (A[m][2p], A[m][2p + 1]) and adds, pairwise, into 16 float32 sums. An odd last row and
// the columns past N are zeros. The products of bf16 numbers are exact in float32; the sums run in float32
// (k in pairs, in order), so the result differs from MKL's or a float32 product of the same bf16 operands only
// in the order of the sums.
//
// The kernel tiles C by up to 4 rows x 4 panels (16 accumulators); one call runs on the calling thread (the
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
namespace bf16_dot {

// words of a packed Kd x N operand
inline int64_t packed_words(int64_t Kd, int64_t N) { return ((Kd + 1) / 2) * ((N + 15) / 16) * 16; }

// Whether the CPU runs vdpbf16ps and the products take this path: a CPU with AVX512-BF16 that is not Intel's
// (on Intel, MKL's bf16 GEMM runs on the bf16 units or AMX itself). EMODARTS_BF16_GEMM=dot or =mkl picks either
// wherever it can run (read per call, like EMODARTS_GROUPED_GEMM).
inline bool cpu_has_dot() {
#ifdef EMODARTS_CPU_HAVE_AVX2
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
#else
  return false;
#endif
}

inline bool enabled() {
  if (!cpu_has_dot()) return false;
  const char* e = std::getenv("EMODARTS_BF16_GEMM");
  if (e != nullptr && std::strcmp(e, "dot") == 0) return true;
  if (e != nullptr && std::strcmp(e, "mkl") == 0) return false;
#ifdef EMODARTS_CPU_HAVE_AVX2
  static const bool not_intel = !__builtin_cpu_is("intel");
  return not_intel;
#else
  return false;
#endif
}

#ifdef EMODARTS_CPU_HAVE_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")
#endif

// c10's rounding to bf16 (nearest even; NaN to the quiet NaN 0x7FC0) without branches, so loops vectorise
inline uint32_t bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return v != v ? 0x7FC0u : r;
}
inline uint32_t bf16_bits(c10::BFloat16 v) { return v.x; }

// B (Kd x N) from W of float32 (rounded) or bf16: B[k][n] = W[n * ldw + k] (trans: W is N x Kd) or W[k * ldw + n].
// Also the layout of a packed left operand (`gemm_packed_lhs`): A^T packed as a Kd x M right operand.
template <typename S>
void pack_bf16_rhs(const S* W, int64_t ldw, bool trans, int64_t Kd, int64_t N, uint32_t* dst) {
  const int64_t KP = (Kd + 1) / 2, NB = (N + 15) / 16, full = Kd / 2;
  if (N % 16 != 0)  // the columns past N: zeros in the last panel
    for (int64_t p = 0; p < KP; ++p)
      for (int64_t j = N % 16; j < 16; ++j) dst[((NB - 1) * KP + p) * 16 + j] = 0;
  if (trans) {  // a row of W holds a column of B: its pairs are contiguous
    for (int64_t n = 0; n < N; ++n) {
      const S* w = W + n * ldw;
      uint32_t* out = dst + (n / 16) * KP * 16 + n % 16;
      for (int64_t p = 0; p < full; ++p) out[p * 16] = bf16_bits(w[2 * p]) | bf16_bits(w[2 * p + 1]) << 16;
      if (Kd & 1) out[full * 16] = bf16_bits(w[Kd - 1]);
    }
    return;
  }
  for (int64_t p = 0; p < KP; ++p) {  // two rows of W interleave into a pair's words
    const S* r0 = W + 2 * p * ldw;
    const S* r1 = r0 + ldw;
    const bool pair = 2 * p + 1 < Kd;
    for (int64_t q = 0; q < NB; ++q) {
      uint32_t* out = dst + (q * KP + p) * 16;
      const int64_t n0 = q * 16, cols = N - n0 < 16 ? N - n0 : 16;
      if (pair)
        for (int64_t j = 0; j < cols; ++j) out[j] = bf16_bits(r0[n0 + j]) | bf16_bits(r1[n0 + j]) << 16;
      else
        for (int64_t j = 0; j < cols; ++j) out[j] = bf16_bits(r0[n0 + j]);
    }
  }
}

// The left operand's pair words: (A[m][2p], A[m][2p + 1]) of bf16 rows in place (the last, odd k with a zero)...
struct RowsA {
  const c10::BFloat16* a;
  int64_t lda;
  uint32_t word(int i, int64_t p) const {
    uint32_t w;
    std::memcpy(&w, a + i * lda + 2 * p, sizeof w);
    return w;
  }
  uint32_t last(int i, int64_t Kd) const { return a[i * lda + Kd - 1].x; }
  RowsA rows_from(int64_t m) const { return {a + m * lda, lda}; }
};

// ... or packed by pack_bf16_rhs as a Kd x M operand (panels of 16 rows of A, the odd k already zero-padded)
struct PackedA {
  const uint32_t* panel;  // the panel holding row `row` at pair 0
  int64_t KP, row;
  uint32_t word(int i, int64_t p) const { return panel[p * 16 + row + i]; }
  uint32_t last(int i, int64_t Kd) const { return word(i, Kd / 2); }
  PackedA rows_from(int64_t m) const { return {panel + (m / 16) * KP * 16, KP, m % 16}; }
};

// One tile: rows [0, MR) of A and C, panels [0, NR) of Bp (`cols` valid columns from the tile's first). A tile
// of a packed A stays inside one panel of 16 rows (tiles of 4 start at multiples of 4).
template <int MR, int NR, typename AOp>
inline void tile(const AOp& A, const uint32_t* Bp, int64_t KP, int64_t Kd, float beta, float* C, int64_t ldc,
                 int64_t cols) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  // one pair of k: the A words of the tile's rows (word(i) for row i) against the NR panels' words at pair p
  const auto step = [&](int64_t p, auto word) __attribute__((always_inline)) {
    __m512i b[NR];
    for (int j = 0; j < NR; ++j) b[j] = _mm512_loadu_si512(Bp + (j * KP + p) * 16);
    for (int i = 0; i < MR; ++i) {
      const __m512i a = _mm512_set1_epi32(static_cast<int>(word(i)));
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)b[j]);
    }
  };
  const int64_t full = Kd / 2;
  for (int64_t p = 0; p < full; ++p) step(p, [&](int i) { return A.word(i, p); });
  if (Kd & 1) step(full, [&](int i) { return A.last(i, Kd); });  // (A[m][Kd-1], 0) against a zero-padded pair
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

template <int MR, typename AOp>
inline void row_tile(int nr, const AOp& A, const uint32_t* Bp, int64_t KP, int64_t Kd, float beta, float* C,
                     int64_t ldc, int64_t cols) {
  switch (nr) {
    case 4: return tile<MR, 4>(A, Bp, KP, Kd, beta, C, ldc, cols);
    case 3: return tile<MR, 3>(A, Bp, KP, Kd, beta, C, ldc, cols);
    case 2: return tile<MR, 2>(A, Bp, KP, Kd, beta, C, ldc, cols);
    default: return tile<MR, 1>(A, Bp, KP, Kd, beta, C, ldc, cols);
  }
}

template <typename AOp>
void gemm_any(int64_t M, int64_t N, int64_t Kd, const AOp& A, const uint32_t* Bp, float beta, float* C, int64_t ldc) {
  const int64_t KP = (Kd + 1) / 2, NB = (N + 15) / 16;
  for (int64_t q = 0; q < NB; q += 4) {  // a tile's panels (up to 16 KB at Kd = 128) stay in cache over the rows
    const int nr = static_cast<int>(NB - q < 4 ? NB - q : 4);
    const int64_t cols = N - 16 * q;
    const uint32_t* bq = Bp + q * KP * 16;
    for (int64_t m = 0; m < M; m += 4) {
      const AOp a = A.rows_from(m);
      float* c = C + m * ldc + 16 * q;
      switch (M - m < 4 ? M - m : 4) {
        case 4: row_tile<4>(nr, a, bq, KP, Kd, beta, c, ldc, cols); break;
        case 3: row_tile<3>(nr, a, bq, KP, Kd, beta, c, ldc, cols); break;
        case 2: row_tile<2>(nr, a, bq, KP, Kd, beta, c, ldc, cols); break;
        default: row_tile<1>(nr, a, bq, KP, Kd, beta, c, ldc, cols); break;
      }
    }
  }
}

// C (M x N, ldc) = A (M x Kd, bf16, lda) B + beta C, B packed by pack_bf16_rhs; beta 0 never reads C.
inline void gemm(int64_t M, int64_t N, int64_t Kd, const c10::BFloat16* A, int64_t lda, const uint32_t* Bp,
                 float beta, float* C, int64_t ldc) {
  gemm_any(M, N, Kd, RowsA{A, lda}, Bp, beta, C, ldc);
}

// C (M x N, ldc) = A B + beta C with A given as Ap = pack_bf16_rhs(A^T) (Kd x M): the weight gradients,
// dW = dgates^T h, whose dgates are stored (rows x gates).
inline void gemm_packed_lhs(int64_t M, int64_t N, int64_t Kd, const uint32_t* Ap, const uint32_t* Bp, float beta,
                            float* C, int64_t ldc) {
  gemm_any(M, N, Kd, PackedA{Ap, (Kd + 1) / 2, 0}, Bp, beta, C, ldc);
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else   // no x86-64 vector code: never enabled(), never called
inline void gemm(int64_t, int64_t, int64_t, const c10::BFloat16*, int64_t, const uint32_t*, float, float*, int64_t) {}
inline void gemm_packed_lhs(int64_t, int64_t, int64_t, const uint32_t*, const uint32_t*, float, float*, int64_t) {}
template <typename S>
void pack_bf16_rhs(const S*, int64_t, bool, int64_t, int64_t, uint32_t*) {}
#endif

}  // namespace bf16_dot
}  // namespace emodarts
