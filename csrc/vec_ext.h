// V<T>: a GCC/Clang vector of T, VB bytes wide, with unaligned loads and stores (memcpy), a broadcast and a
// lane total in double. Included on purpose inside each instruction-set namespace of a kernel header
// (csrc/multi_bn_kernels.h, csrc/pointwise_kernels.h), after `constexpr int VB` is defined there, so each
// copy is compiled for that namespace's target (no include guard).

template <typename T>
struct V {
  typedef T v __attribute__((vector_size(VB)));
  static constexpr int n = VB / static_cast<int>(sizeof(T));
  static v load(const T* p) {
    v r;
    std::memcpy(&r, p, sizeof(v));
    return r;
  }
  static void store(T* p, v x) { std::memcpy(p, &x, sizeof(v)); }
  // c in every lane: one broadcast instruction (a loop over the lanes compiled to a chain of lane inserts, which
  // took more time than the FMAs in the pointwise kernel); adding c to -0.0 leaves it as it is, sign of zero too
  static v splat(T c) { return -v{} + c; }
  static double total(v x) {
    double s = 0.0;
    for (int l = 0; l < n; ++l) s += static_cast<double>(x[l]);
    return s;
  }
};
