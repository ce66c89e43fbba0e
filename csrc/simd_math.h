// Vector math of the CPU epilogues (csrc/grouped_rnn_kernels.h, csrc/darts_rnn_kernels.h): 8-lane (and, for
// the AVX-512 copy of the grouped layer, 16-lane) float vectors (GCC/Clang vector extensions; the compiler
// emits the instructions of the target the including namespace is compiled for) and 1-lane double, with Cephes-style exp / sigmoid / tanh for float (max. rel.
// error ~2e-7) and std::exp / std::tanh for double.
// No include guard, on purpose: it is included *inside* each kernel namespace (baseline, avx2) of each
// kernel header, so that every copy is compiled for its own instruction set. The including file provides
// <cmath>, <cstdint> and EMO_INLINE.

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));  // unaligned access
// 16 lanes: instantiated only in a copy compiled for AVX-512 (csrc/grouped_rnn.cpp)
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4), may_alias));

template <typename V>
struct Lanes;
template <>
struct Lanes<v8f> {
  static constexpr int n = 8;
  using scalar = float;
  using mask = v8i;
};
template <>
struct Lanes<v16f> {
  static constexpr int n = 16;
  using scalar = float;
  using mask = v16i;
};
template <>
struct Lanes<double> {
  static constexpr int n = 1;
  using scalar = double;
};

EMO_INLINE v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }  // (a loop here gives insertps chains)
template <typename VF>
EMO_INLINE VF splat_as(float x) {
  return VF{} + x;  // a vector of x in every lane
}
template <typename VF, typename VI>
EMO_INLINE VF vsel(VI m, VF a, VF b) {
  return (VF)((m & (VI)a) | (~m & (VI)b));
}
template <typename VF>
EMO_INLINE VF vmin(VF a, VF b) {
  return vsel(a < b, a, b);
}
template <typename VF>
EMO_INLINE VF vmax(VF a, VF b) {
  return vsel(a > b, a, b);
}

EMO_INLINE void load(v8f& v, const float* p) { v = *reinterpret_cast<const v8f_u*>(p); }
EMO_INLINE void store(float* p, const v8f& v) { *reinterpret_cast<v8f_u*>(p) = v; }
EMO_INLINE void load(v16f& v, const float* p) { v = *reinterpret_cast<const v16f_u*>(p); }
EMO_INLINE void store(float* p, const v16f& v) { *reinterpret_cast<v16f_u*>(p) = v; }
EMO_INLINE void load(double& v, const double* p) { v = *p; }
EMO_INLINE void store(double* p, const double& v) { *p = v; }

// Cephes expf: exp(x) = 2^n exp(r), |r| <= ln2/2, degree-6 polynomial; x clamped to +-88.376.
template <typename VF>
EMO_INLINE VF vexp(VF x) {
  using VI = typename Lanes<VF>::mask;
  x = vmin(x, splat_as<VF>(88.3762626647949f));
  x = vmax(x, splat_as<VF>(-88.3762626647949f));
  VF fx = x * 1.44269504088896341f + 0.5f;
  VI ix = __builtin_convertvector(fx, VI);  // truncation; floor below
  VF tf = __builtin_convertvector(ix, VF);
  VI up = tf > fx;  // -1 where truncation went up (negative fx)
  ix = ix + up;
  tf = __builtin_convertvector(ix, VF);
  x = x - tf * 0.693359375f;
  x = x - tf * -2.12194440e-4f;
  VF z = x * x;
  VF y = splat_as<VF>(1.9875691500E-4f);
  y = y * x + 1.3981999507E-3f;
  y = y * x + 8.3334519073E-3f;
  y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f;
  y = y * x + 5.0000001201E-1f;
  y = y * z + x + 1.0f;
  VI pow2n = (ix + 127) << 23;
  return y * (VF)pow2n;
}
template <typename VF>
EMO_INLINE VF vsigmoid(VF x) {
  return 1.0f / (1.0f + vexp(-x));
}
template <typename VF>
EMO_INLINE VF vtanh(VF x) {
  // |x| < 0.625: Cephes tanhf polynomial; else 1 - 2 / (exp(2x) + 1)
  VF z = x * x;
  VF p = splat_as<VF>(-5.70498872745E-3f);
  p = p * z + 2.06390887954E-2f;
  p = p * z - 5.37397155531E-2f;
  p = p * z + 1.33314422036E-1f;
  p = p * z - 3.33332819422E-1f;
  VF small = p * z * x + x;
  VF big = 1.0f - 2.0f / (vexp(x + x) + 1.0f);
  VF ax = vsel(x < 0.0f, -x, x);
  return vsel(ax < 0.625f, small, big);
}
EMO_INLINE double vsigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
EMO_INLINE double vtanh(double x) { return std::tanh(x); }

