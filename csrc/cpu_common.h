// Shared CPU helpers of the extension's kernels: row-major GEMMs through the BLAS that PyTorch links (or ATen)
// for the recurrent and pointwise kernels, the run-time AVX2 / AVX-512 switches, and the CNN kernels' one rule for
// spreading a call over threads (parallel_grain_bytes).
//
// GEMMs call MKL's sgemm_/dgemm_ (exported by libtorch_cpu) directly: ATen's per-call overhead is several
// microseconds, as much as a whole tiny-preset step. When those symbols are absent (another BLAS build), or
// with EMODARTS_GROUPED_GEMM=aten (read at every call), the same GEMMs go through ATen (at::mm_out / addmm_
// on strided views of the same buffers).
// The float32 epilogues are compiled twice (baseline and AVX2+FMA, see the *_kernels.h files); the AVX2 copy
// runs when the CPU has AVX2 and FMA, unless EMODARTS_GROUPED_NO_AVX2 is set to a non-zero value (read once
// per process).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

extern "C" {
// Fortran BLAS (LP64), resolved at load time from libtorch_cpu when it exports them; null otherwise.
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's bfloat16 GEMM (bf16 A and B, float32 C; the products exact, the sums in float32): AMX or AVX512-BF16
// where the CPU has them
void gemm_bf16bf16f32_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const uint16_t* a, const int* lda, const uint16_t* b, const int* ldb, const float* beta,
                       float* c, const int* ldc) __attribute__((weak));
// MKL's packed sgemm (CBLAS, LP64): one operand packed once, many products with it
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EMODARTS_CPU_HAVE_AVX2 1
// Code between these two is compiled for AVX2 + FMA: the second copy of a kernel header, whose functions
// run only when avx2_enabled() says so.
#if defined(__clang__)
#define EMODARTS_BEGIN_AVX2_FMA \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define EMODARTS_END_AVX2_FMA _Pragma("clang attribute pop")
#else
#define EMODARTS_BEGIN_AVX2_FMA _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")
#define EMODARTS_END_AVX2_FMA _Pragma("GCC pop_options")
#endif
// ... and for AVX-512 (F, with the AVX2/FMA it implies): the third copy, run only when avx512_enabled() says so
#if defined(__clang__)
#define EMODARTS_BEGIN_AVX512 \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx2,fma\"))), apply_to = function)")
#define EMODARTS_END_AVX512 _Pragma("clang attribute pop")
#else
#define EMODARTS_BEGIN_AVX512 _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx2,fma\")")
#define EMODARTS_END_AVX512 _Pragma("GCC pop_options")
#endif
#endif

namespace emodarts {
namespace cpu_common {

inline bool use_blas() {
  const char* e = std::getenv("EMODARTS_GROUPED_GEMM");
  if (e != nullptr && std::strcmp(e, "aten") == 0) return false;
  return sgemm_ != nullptr && dgemm_ != nullptr;
}

inline bool fits_int(int64_t v) { return v >= 0 && v <= INT32_MAX; }

inline void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                      int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda,
                      const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// the row-major (rows x cols, ld) matrix at p as a tensor (no copy), transposed when `trans`
template <typename T>
at::Tensor view_rm(const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor t = at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
  return trans ? t.t() : t;
}

// GEMM on row-major matrices: C (M x N, ldc) = alpha * op(A) op(B) + beta * C, op(A) M x Kd, op(B) Kd x N.
template <typename T>
void gemm_rm(bool blas, bool ta, bool tb, int64_t M, int64_t N, int64_t Kd, T alpha, const T* A, int64_t lda,
             const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (Kd <= 0) {  // C = beta * C
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (blas && fits_int(M) && fits_int(N) && fits_int(Kd) && fits_int(lda) && fits_int(ldb) && fits_int(ldc)) {
    // column-major view: C^T (N x M) = op(B)^T (N x Kd) op(A)^T (Kd x M)
    blas_gemm(tb ? 'T' : 'N', ta ? 'T' : 'N', static_cast<int>(N), static_cast<int>(M), static_cast<int>(Kd),
              alpha, B, static_cast<int>(ldb), A, static_cast<int>(lda), beta, C, static_cast<int>(ldc));
    return;
  }
  at::Tensor a = ta ? view_rm(A, Kd, M, lda, true) : view_rm(A, M, Kd, lda, false);
  at::Tensor b = tb ? view_rm(B, N, Kd, ldb, true) : view_rm(B, Kd, N, ldb, false);
  at::Tensor c = view_rm(static_cast<const T*>(C), M, N, ldc, false);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

// a buffer of n Ts, not zeroed (a std::vector would write every element first: measured as 10 % of the grouped
// layer's forward when a packed operand's buffer was a vector)
template <typename T>
std::unique_ptr<T[]> scratch_of(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

// bfloat16 <-> float32, c10's conversions (round to nearest even) as loops the compiler vectorises
inline void to_bf16(const float* src, c10::BFloat16* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = c10::BFloat16(src[i]);
}
inline void to_float(const c10::BFloat16* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// Whether bf16 GEMMs run on MKL's gemm_bf16bf16f32 (else on float32 copies of the operands); like use_blas, read
// once per call of an op and handed to gemm_rm_bf16.
inline bool bf16_blas() { return use_blas() && gemm_bf16bf16f32_ != nullptr; }

// C (M x N, float32, ldc) = op(A) op(B) + beta * C with bfloat16 A and B, row-major as gemm_rm; blas: bf16_blas().
// The products of bf16 numbers are exact in float32, so either path computes the same sums up to their order.
inline void gemm_rm_bf16(bool blas, bool ta, bool tb, int64_t M, int64_t N, int64_t Kd, const c10::BFloat16* A,
                         int64_t lda, const c10::BFloat16* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (Kd > 0 && blas && fits_int(M) && fits_int(N) && fits_int(Kd) && fits_int(lda) && fits_int(ldb) &&
      fits_int(ldc)) {
    const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(Kd), la = static_cast<int>(ldb),
              lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const float one = 1.0f;
    // column-major view, as gemm_rm: C^T = op(B)^T op(A)^T
    gemm_bf16bf16f32_(&cb, &ca, &m, &n, &k, &one, &B->x, &la, &A->x, &lb, &beta, C, &lc);
    return;
  }
  const at::Tensor a = view_rm(A, ta ? Kd : M, ta ? M : Kd, lda, false).to(at::kFloat);
  const at::Tensor b = view_rm(B, tb ? N : Kd, tb ? Kd : N, ldb, false).to(at::kFloat);
  gemm_rm<float>(blas, ta, tb, M, N, Kd, 1.0f, a.const_data_ptr<float>(), a.size(1), b.const_data_ptr<float>(),
                 b.size(1), beta, C, ldc);
}

// whether the AVX2+FMA copies of the float32 epilogues run (read once per process)
// Whether the environment variable `name` switches something off (set, non-empty, not "0").
inline bool switched_off(const char* name) {
  const char* e = std::getenv(name);
  return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0;
}

inline bool avx2_enabled() {
#ifdef EMODARTS_CPU_HAVE_AVX2
  static const bool ok = [] {
    __builtin_cpu_init();
    return !switched_off("EMODARTS_GROUPED_NO_AVX2") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

// The AVX-512 copy of the grouped layer's epilogues: on a CPU with AVX-512F where the AVX2 copy runs, unless
// EMODARTS_GROUPED_NO_AVX512=1.
inline bool avx512_enabled() {
#ifdef EMODARTS_CPU_HAVE_AVX2
  static const bool ok = avx2_enabled() && !switched_off("EMODARTS_GROUPED_NO_AVX512") &&
                         __builtin_cpu_supports("avx512f");
  return ok;
#else
  return false;
#endif
}

// Whether the CPU is Intel's: where MKL's packed and bf16 GEMMs pay (packed_gemm_pays), and where our own
// packed-panel kernels (csrc/panel_gemm.h) stand aside for them.
inline bool cpu_is_intel() {
#ifdef EMODARTS_CPU_HAVE_AVX2
  static const bool intel = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return intel;
#else
  return false;
#endif
}

// C (M x N, ldc) += A (M x Kd, lda) W^T with W (N x Kd) packed once by MKL (cblas_sgemm_pack): the grouped
// layer's per-step recurrent product h_{t-1} W_hh^T. Only where it pays (packed_gemm_pays); null symbols: never.
class PackedRhsT {
 public:
  PackedRhsT(int64_t M, int64_t N, int64_t Kd, const float* W, int64_t ldw)
      : M_(static_cast<int>(M)), N_(static_cast<int>(N)), K_(static_cast<int>(Kd)) {
    buf_ = scratch_of<float>(cblas_sgemm_pack_get_size(kB, M_, N_, K_) / sizeof(float) + 1);
    cblas_sgemm_pack(kRowMajor, kB, kTrans, M_, N_, K_, 1.0f, W, static_cast<int>(ldw), buf_.get());
  }
  void accumulate(const float* A, int64_t lda, float* C, int64_t ldc) const {
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, M_, N_, K_, A, static_cast<int>(lda), buf_.get(), K_, 1.0f,
                        C, static_cast<int>(ldc));
  }

 private:
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kB = 162, kPacked = 151;  // CBLAS enums
  int M_, N_, K_;
  std::unique_ptr<float[]> buf_;
};

// Whether the recurrent product packs W_hh once per call: measured (this Xeon with AVX-512 and AMX, one thread)
// 18 against 25-28 us per (16 x 128) x (128 x 512) product, the paper preset's LSTM step, but slower for
// smaller weights (0.6-1.0x at 128 x 128 and below), on the backward's (16 x 512) x (512 x 128), and on an AMD
// EPYC in an earlier measurement: so on Intel CPUs with AVX-512, for weights of at least 512 x 128, unless
// EMODARTS_GROUPED_NO_PACK=1. The caller asks only on its BLAS path (use_blas()).
inline bool packed_gemm_pays(int64_t rows, int64_t cols) {
#ifdef EMODARTS_CPU_HAVE_AVX2
  static const bool ok = cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
                         cblas_sgemm_compute != nullptr && cpu_is_intel() &&
                         __builtin_cpu_supports("avx512f") && !switched_off("EMODARTS_GROUPED_NO_PACK");
  return ok && rows >= 512 && cols >= 128 && fits_int(rows * cols);
#else
  (void)rows;
  (void)cols;
  return false;
#endif
}

// How much a call must move (bytes read and written) before at::parallel_for spreads it over the intra-op threads;
// every CNN kernel of the extension (pointwise, multi batch norm, multi-depthwise, pools, mixed sum, offset grids)
// asks here. (The recurrent kernels spread whole units or batch rows by their own work measure.) Measured on a 2-core
// Xeon VM with OpenMP's default wait policy: a fork costs about 3 us while the workers still spin from the last
// parallel region (they do between the ops of a step), and a 120k-element add ran 16.4 us on one thread against 9.3
// us on two; a sleeping worker (OMP_WAIT_POLICY=PASSIVE, or after a long pause) costs 10-150 us.
// EMODARTS_CPU_GRAIN_BYTES overrides the default (read once per process), e.g. 4194304 where workers sleep between
// calls.
inline int64_t parallel_grain_bytes() {
  static const int64_t bytes = [] {
    const char* e = std::getenv("EMODARTS_CPU_GRAIN_BYTES");
    const long long v = e != nullptr ? std::atoll(e) : 0;
    return v > 0 ? static_cast<int64_t>(v) : int64_t(1) << 18;
  }();
  return bytes;
}

// The grain, in items, of a parallel_for over items that each move `bytes_per_item` bytes
inline int64_t grain_items(int64_t bytes_per_item) {
  return std::max<int64_t>(1, parallel_grain_bytes() / std::max<int64_t>(1, bytes_per_item));
}

// What a call runs here, for the benchmarks' records: the kernel copy and how work is spread over threads
inline std::string cpu_info(bool avx2) {
  std::string s = avx2 ? "isa=avx2" : "isa=baseline";
#if defined(_OPENMP)
  s += " threads=openmp";
#elif AT_PARALLEL_NATIVE
  s += " threads=aten-native";
#else
  s += " threads=single";
#endif
  return s + " max_threads=" + std::to_string(at::get_num_threads()) +
         " grain_bytes=" + std::to_string(parallel_grain_bytes());
}

// The data of a gradient a backward was asked for, or nullptr for one it was not (output_mask false: the
// tensor is undefined and the kernel skips its work).
template <typename T>
inline T* ptr_or_null(at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The gradients of a list a backward was asked for, in order (the masked ones left out: a Tensor[] result
// holds no undefined tensors); Python spreads them back over the inputs (emodarts/ops/grad_need.py).
inline std::vector<at::Tensor> wanted_only(const std::vector<at::Tensor>& grads, const std::vector<bool>& need) {
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < grads.size(); ++i)
    if (need[i]) out.push_back(grads[i]);
  return out;
}

}  // namespace cpu_common
}  // namespace emodarts
