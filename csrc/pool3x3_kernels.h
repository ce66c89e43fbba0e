// Plane kernels of the 3x3 pool pair (csrc/pool3x3.cpp), written once for any vector width and compiled
// once per instruction set (no include guard: it is included on purpose twice).
//
// Before including, define EMODARTS_PKNS (the namespace to fill) and EMODARTS_PVB (bytes per vector: 16 for
// the SSE2 / NEON baseline, 32 for AVX2), and declare Compute<T> (the type T is computed in) in the enclosing
// namespace. Vectors are GCC/Clang vector extensions: the compiler emits the instructions of the target the
// copy is compiled for.
//
// Every result is computed with ATen's own arithmetic, element by element, so that the AVX2 copy, the
// baseline copy and ATen's CPU kernels (float32 and float64) agree bit for bit:
// - max: scan the in-bounds window row by row, column by column, from -inf; take an element when
//   `v > max || v != v` (ties: the first maximum in scan order; a NaN wins, the last NaN in scan order);
//   the argmax starts at the window's first in-bounds element (what an all -inf window routes to).
// - avg: sum = +0, then += each in-bounds element in the same scan order; out = sum / count.
// - backward: grad_x starts at +0 and receives, in the raster order of the outputs (oh, then ow), each
//   contribution ATen's backward kernels scatter: g_max[o] where the recomputed argmax of window o is that
//   element, and g_avg[o] / count[o] for every window o that holds it. Here it is gathered per input element
//   (vectorised along W) instead of scattered, adding +0 for the windows that do not route to it (which
//   changes no bits: a running sum that starts at +0 is never -0). With both gradients, grad_x = max part +
//   avg part, as autograd adds the two ops' gradients.
// No multiply-add pattern exists in these kernels, so FMA contraction (the AVX2 copy's target has FMA)
// cannot change a result.
//
// Layout: each input row is copied (converted to the compute type) into a zero-padded row buffer, P[j] =
// x[j - 1] (stride 2: split into its even and odd entries), so that every output column, edges included,
// runs in the same vector loop: the zero pads add nothing to the sums, and per-column masks keep pads out of
// the max in the first and last blocks. Partial blocks at the right end are stored lane by lane.

namespace EMODARTS_PKNS {

constexpr int VB = EMODARTS_PVB;

template <typename C>
struct VT;
template <>
struct VT<float> {
  typedef float v __attribute__((vector_size(VB)));
  typedef int32_t m __attribute__((vector_size(VB)));
  typedef int32_t mask_t;
  static constexpr int n = VB / 4;
};
template <>
struct VT<double> {
  typedef double v __attribute__((vector_size(VB)));
  typedef int64_t m __attribute__((vector_size(VB)));
  typedef int64_t mask_t;
  static constexpr int n = VB / 8;
};

template <typename V, typename C, size_t... I>
inline V splat_(C c, std::index_sequence<I...>) {
  return V{((void)I, c)...};
}
template <typename C>
inline typename VT<C>::v splat(C c) {
  return splat_<typename VT<C>::v>(c, std::make_index_sequence<VT<C>::n>());
}

// ---- loads and stores (T in memory, C in registers)

inline VT<float>::v loadv(const float* p) {
  VT<float>::v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline VT<double>::v loadv(const double* p) {
  VT<double>::v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline VT<float>::v loadv(const c10::BFloat16* p) {
  typedef uint16_t vh __attribute__((vector_size(VB / 2)));
  typedef uint32_t vu __attribute__((vector_size(VB)));
  vh h;
  std::memcpy(&h, p, sizeof h);
  const vu u = __builtin_convertvector(h, vu) << 16;
  return (VT<float>::v)u;  // same-size vector cast: a bit cast
}
template <typename C>
inline typename VT<C>::m loadm(const typename VT<C>::mask_t* p) {
  typename VT<C>::m v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void storev(float* p, VT<float>::v v) { std::memcpy(p, &v, sizeof v); }
inline void storev(double* p, VT<double>::v v) { std::memcpy(p, &v, sizeof v); }
inline void storev(c10::BFloat16* p, VT<float>::v v) {
  // as c10::BFloat16(float): round to nearest even, NaN -> 0x7FC0
  typedef uint16_t vh __attribute__((vector_size(VB / 2)));
  typedef uint32_t vu __attribute__((vector_size(VB)));
  const vu u = (vu)v;
  vu r = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  const vu nan = (vu)(v != v);
  r = (r & ~nan) | (0x7FC0u & nan);
  const vh h = __builtin_convertvector(r, vh);
  std::memcpy(p, &h, sizeof h);
}
// the first `n` lanes only (n <= lanes)
template <typename T, typename V>
inline void store_n(T* p, V v, int64_t n) {
  constexpr int64_t N = sizeof(V) / sizeof(v[0]);
  if (n >= N) {
    storev(p, v);
    return;
  }
  T tmp[N];
  storev(tmp, v);
  std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(T));
}

// the first `n` entries at p (n may be less than the lanes: the rest read as 0, nothing past p + n is read)
template <typename C, typename T>
inline typename VT<C>::v load_n(const T* p, int64_t n) {
  constexpr int64_t N = VT<C>::n;
  if (n >= N) return loadv(p);
  T tmp[N] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(T));
  return loadv(tmp);
}

inline float to_c(float v) { return v; }
inline double to_c(double v) { return v; }
inline float to_c(c10::BFloat16 v) { return static_cast<float>(v); }

// ---- lane shuffles (stride-2 backward): interleave two vectors

template <typename V, size_t... I>
inline V zip_lo_(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2) * sizeof...(I) + I / 2)...);
}
template <typename V, size_t... I>
inline V zip_hi_(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2) * sizeof...(I) + sizeof...(I) / 2 + I / 2)...);
}
template <typename C>
inline typename VT<C>::v zip_lo(typename VT<C>::v a, typename VT<C>::v b) {
  return zip_lo_(a, b, std::make_index_sequence<VT<C>::n>());
}
template <typename C>
inline typename VT<C>::v zip_hi(typename VT<C>::v a, typename VT<C>::v b) {
  return zip_hi_(a, b, std::make_index_sequence<VT<C>::n>());
}

// ---- per-call geometry of the output columns (padded to whole vectors)

template <typename C, int S>
struct Columns {
  using M = typename VT<C>::mask_t;
  static constexpr int N = VT<C>::n;
  int64_t Wo, Wv;             // outputs per row; Wo rounded up to whole vectors
  int64_t last_full;          // outputs 1 .. last_full have all three window columns in bounds
  std::vector<C> cnt;         // in-bounds columns of output ow (1 past Wo)
  std::vector<C> first;       // offset of its first in-bounds column (0, 1 or 2)
  std::vector<M> valid[3];    // all ones where window column dw of output ow is in bounds

  Columns(int64_t W, int64_t Wo_) : Wo(Wo_), Wv((Wo_ + N - 1) / N * N), last_full(W >= 2 ? (W - 2) / S : 0) {
    cnt.assign(static_cast<size_t>(Wv), C(1));
    first.assign(static_cast<size_t>(Wv), C(0));
    for (auto& v : valid) v.assign(static_cast<size_t>(Wv), M(0));
    for (int64_t ow = 0; ow < Wo; ++ow) {
      int n = 0, f = -1;
      for (int d = 0; d < 3; ++d) {
        const int64_t c = ow * S - 1 + d;
        const bool in = c >= 0 && c < W;
        valid[d][ow] = in ? M(-1) : M(0);
        if (in) {
          ++n;
          if (f < 0) f = d;
        }
      }
      cnt[ow] = static_cast<C>(n);
      first[ow] = static_cast<C>(f);
    }
  }
  // whether the block of outputs ow0 .. ow0 + N - 1 has every window column in bounds
  bool interior(int64_t ow0) const { return ow0 >= 1 && ow0 + N - 1 <= last_full; }
};

// Zero-padded copies of the (up to 3) input rows the current output row reads, P[j] = x[j - 1] in the
// compute type (stride 2: stored as E[k] = P[2k] and O[k] = P[2k + 1]), and, when asked, each row's own
// max over the three window columns of every output column with its argmax column (row max / row code).
// Slot r % 3 holds row r.
//
// Row maxima are exact to combine: scanning a window row by row with ATen's rule (take v when v > max or
// v is NaN) ends where combining the rows' own results in order with the same rule ends (a row's result is
// its last NaN if it has one, else its first maximum, and a later row displaces an earlier result exactly
// when the element-wise scan would), so each input row is scanned once for all output rows that read it.
template <typename T, int S>
struct RowCache {
  using C = typename Compute<T>::type;
  using V = typename VT<C>::v;
  using Mv = typename VT<C>::m;
  static constexpr int N = VT<C>::n;
  const Columns<C, S>& cols;
  const bool want_max, want_code;
  std::vector<C> buf, rmax, rcode;
  int64_t len, W;
  int64_t held[3] = {-1, -1, -1};
  const T* x = nullptr;
  V kc[3];

  RowCache(const Columns<C, S>& cols_, int64_t W_, bool max_, bool code_)
      : cols(cols_), want_max(max_), want_code(code_), len(S == 1 ? cols_.Wv + 2 : 2 * (cols_.Wv + 1)), W(W_) {
    buf.assign(static_cast<size_t>(3 * len), C(0));  // pads stay zero: fills touch only the data entries
    if (want_max) rmax.assign(static_cast<size_t>(3 * cols.Wv), C(0));
    if (want_code) rcode.assign(static_cast<size_t>(3 * cols.Wv), C(0));
    for (int d = 0; d < 3; ++d) kc[d] = splat<C>(static_cast<C>(d));
  }
  void plane(const T* x_) {
    x = x_;
    held[0] = held[1] = held[2] = -1;
  }
  // the three taps (window columns dw = 0, 1, 2) of outputs ow0 .. ow0 + N - 1 from a padded row
  inline void taps(const C* b, int64_t ow0, V t[3]) const {
    if constexpr (S == 1) {
      t[0] = loadv(b + ow0);
      t[1] = loadv(b + ow0 + 1);
      t[2] = loadv(b + ow0 + 2);
    } else {
      const C* e = b;
      const C* o = b + len / 2;
      t[0] = loadv(e + ow0);      // x[2 ow - 1]
      t[1] = loadv(o + ow0);      // x[2 ow]
      t[2] = loadv(e + ow0 + 1);  // x[2 ow + 1]
    }
  }
  template <bool EDGE>
  inline void row_max_block(const C* b, int64_t ow0, C* m_out, C* c_out) const {
    V t[3];
    taps(b, ow0, t);
    V m = splat<C>(-std::numeric_limits<C>::infinity());
    V c = EDGE ? loadv(cols.first.data() + ow0) : kc[0];  // nothing taken: the first in-bounds column
    for (int d = 0; d < 3; ++d) {
      Mv take = (t[d] > m) | (t[d] != t[d]);
      if (EDGE) take &= loadm<C>(cols.valid[d].data() + ow0);
      m = take ? t[d] : m;
      if (want_code) c = take ? kc[d] : c;
    }
    storev(m_out + ow0, m);
    if (want_code) storev(c_out + ow0, c);
  }
  // the slot of row r, filled if needed
  int slot(int64_t r) {
    const int s = static_cast<int>(r % 3);
    if (held[s] == r) return s;
    C* b = buf.data() + s * len;
    const T* src = x + r * W;
    if constexpr (S == 1) {
      if constexpr (std::is_same<T, C>::value) {
        std::memcpy(b + 1, src, static_cast<size_t>(W) * sizeof(C));
      } else {
        for (int64_t j = 0; j < W; ++j) b[1 + j] = to_c(src[j]);
      }
    } else {
      C* e = b;            // E[k] = P[2k] = x[2k - 1]
      C* o = b + len / 2;  // O[k] = P[2k + 1] = x[2k]
      for (int64_t k = 0; 2 * k < W; ++k) o[k] = to_c(src[2 * k]);
      for (int64_t k = 1; 2 * k - 1 < W; ++k) e[k] = to_c(src[2 * k - 1]);
    }
    if (want_max) {
      C* m = rmax.data() + s * cols.Wv;
      C* c = want_code ? rcode.data() + s * cols.Wv : nullptr;
      for (int64_t ow0 = 0; ow0 < cols.Wv; ow0 += N) {
        if (cols.interior(ow0)) row_max_block<false>(b, ow0, m, c);
        else row_max_block<true>(b, ow0, m, c);
      }
    }
    held[s] = r;
    return s;
  }
  const C* padded(int s) const { return buf.data() + s * len; }
  const C* row_max(int s) const { return rmax.data() + s * cols.Wv; }
  const C* row_code(int s) const { return rcode.data() + s * cols.Wv; }
};

// One block of N outputs in output row oh (window rows rb .. re, the first at r0): the max and its argmax
// code (dh * 3 + dw, the offsets inside the 3x3 window) combined from the rows' own maxima, and / or the
// sum, element by element in ATen's order. kc[k] = splat(k), k = 0 .. 8.
template <typename T, int S, bool MAX, bool CODE, bool SUM>
inline void window_block(RowCache<T, S>& rows, const typename VT<typename Compute<T>::type>::v* kc,
                         const int* slots, int64_t r0, int64_t rb, int64_t re, int64_t ow0,
                         typename VT<typename Compute<T>::type>::v& mx, typename VT<typename Compute<T>::type>::v& code,
                         typename VT<typename Compute<T>::type>::v& sum) {
  using C = typename Compute<T>::type;
  using V = typename VT<C>::v;
  using Mv = typename VT<C>::m;
  if (SUM) {
    sum = splat<C>(C(0));
    for (int64_t r = rb; r <= re; ++r) {
      V t[3];
      rows.taps(rows.padded(slots[r - rb]), ow0, t);
      sum += t[0];
      sum += t[1];
      sum += t[2];
    }
  }
  if (MAX) {
    mx = loadv(rows.row_max(slots[0]) + ow0);  // the first row from -inf: its own result
    if (CODE) code = kc[(rb - r0) * 3] + loadv(rows.row_code(slots[0]) + ow0);
    for (int64_t r = rb + 1; r <= re; ++r) {
      const V m = loadv(rows.row_max(slots[r - rb]) + ow0);
      const Mv take = (m > mx) | (m != m);
      mx = take ? m : mx;
      if (CODE) code = take ? kc[(r - r0) * 3] + loadv(rows.row_code(slots[r - rb]) + ow0) : code;
    }
  }
}

// ---- forward: planes [p0, p1) of x -> max and avg planes (Ho, Wo)

template <typename T, int S>
void fwd_range(const T* x, T* mo, T* ao, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t p0, int64_t p1) {
  using C = typename Compute<T>::type;
  using V = typename VT<C>::v;
  constexpr int N = VT<C>::n;
  const Columns<C, S> cols(W, Wo);
  RowCache<T, S> rows(cols, W, true, false);
  V kc[9];
  for (int k = 0; k < 9; ++k) kc[k] = splat<C>(static_cast<C>(k));
  for (int64_t p = p0; p < p1; ++p) {
    rows.plane(x + p * H * W);
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const int64_t r0 = oh * S - 1;
      const int64_t rb = std::max<int64_t>(r0, 0), re = std::min<int64_t>(r0 + 2, H - 1);
      int slots[3];
      for (int64_t r = rb; r <= re; ++r) slots[r - rb] = rows.slot(r);
      const V cnt_r = splat<C>(static_cast<C>(re - rb + 1));
      T* mrow = mo + (p * Ho + oh) * Wo;
      T* arow = ao + (p * Ho + oh) * Wo;
      for (int64_t ow0 = 0; ow0 < Wo; ow0 += N) {
        V mx, code, sum;
        window_block<T, S, true, false, true>(rows, kc, slots, r0, rb, re, ow0, mx, code, sum);
        const V avg = sum / (cnt_r * loadv(cols.cnt.data() + ow0));
        store_n(mrow + ow0, mx, Wo - ow0);
        store_n(arow + ow0, avg, Wo - ow0);
      }
    }
  }
}

// ---- backward

// Padded scratch of one plane, (Ho + 2) x Wp (output (oh, ow) at (oh + 1) * Wp + ow + 1, Wp >= Wo + 2 with
// room for whole vectors): argmax codes (-1 outside the outputs: never a match), the max gradient, and the
// avg gradient divided by its window's count (0 outside the outputs). Only the outputs' entries are ever
// written, so the rest keeps its initial values.
template <typename C>
struct Scratch {
  std::vector<C> buf;
  C* code;
  C* gm;
  C* d;
  int64_t Wp;

  Scratch(int64_t Ho, int64_t Wo, int64_t W, int N) {
    Wp = std::max<int64_t>(Wo, (W + N - 1) / N * N) + 2 + N;
    const int64_t n = (Ho + 2) * Wp;
    buf.assign(static_cast<size_t>(3 * n), C(0));
    std::fill(buf.begin(), buf.begin() + n, C(-1));
    code = buf.data();
    gm = code + n;
    d = gm + n;
  }
};

// Pass A: codes and gradients of one plane's outputs into the scratch.
template <typename T, int S>
void bwd_prepare(RowCache<T, S>& rows, const Columns<typename Compute<T>::type, S>& cols, const T* gmax,
                 const T* gavg, Scratch<typename Compute<T>::type>& s, int64_t H, int64_t Ho, int64_t Wo) {
  using C = typename Compute<T>::type;
  using V = typename VT<C>::v;
  constexpr int N = VT<C>::n;
  V kc[9];
  for (int k = 0; k < 9; ++k) kc[k] = splat<C>(static_cast<C>(k));
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const int64_t r0 = oh * S - 1;
    const int64_t rb = std::max<int64_t>(r0, 0), re = std::min<int64_t>(r0 + 2, H - 1);
    const V cnt_r = splat<C>(static_cast<C>(re - rb + 1));
    const int64_t at = (oh + 1) * s.Wp + 1;
    int slots[3];
    if (gmax != nullptr) {
      for (int64_t r = rb; r <= re; ++r) slots[r - rb] = rows.slot(r);
    }
    for (int64_t ow0 = 0; ow0 < Wo; ow0 += N) {
      const int64_t n = Wo - ow0;
      if (gavg != nullptr) {
        store_n(s.d + at + ow0, load_n<C>(gavg + oh * Wo + ow0, n) / (cnt_r * loadv(cols.cnt.data() + ow0)), n);
      }
      if (gmax != nullptr) {
        V mx, code, sum;
        window_block<T, S, true, true, false>(rows, kc, slots, r0, rb, re, ow0, mx, code, sum);
        store_n(s.code + at + ow0, code, n);
        store_n(s.gm + at + ow0, load_n<C>(gmax + oh * Wo + ow0, n), n);
      }
    }
  }
}

// The windows that hold input row (or column) i, in raster order: padded index and offset inside the
// window. Stride 1: outputs i - 1, i, i + 1 (offsets 2, 1, 0); stride 2: i = 2k: output k (offset 1),
// i = 2k + 1: outputs k, k + 1 (offsets 2, 0). Padded indices are output index + 1.
template <int S>
inline int holders(int64_t i, int64_t* pidx, int* off) {
  if constexpr (S == 1) {
    pidx[0] = i, pidx[1] = i + 1, pidx[2] = i + 2;
    off[0] = 2, off[1] = 1, off[2] = 0;
    return 3;
  } else {
    const int64_t k = i >> 1;
    if ((i & 1) == 0) {
      pidx[0] = k + 1, off[0] = 1;
      return 1;
    }
    pidx[0] = k + 1, pidx[1] = k + 2;
    off[0] = 2, off[1] = 0;
    return 2;
  }
}

// Pass B: grad_x of one plane from the scratch, element by element in ATen's order (see the top).
template <typename T, int S>
void bwd_gather(const Scratch<typename Compute<T>::type>& s, bool hm, bool ha, T* gx, int64_t H, int64_t W) {
  using C = typename Compute<T>::type;
  using V = typename VT<C>::v;
  constexpr int N = VT<C>::n;
  const int64_t Wp = s.Wp;
  const V zero = splat<C>(C(0));
  V kc[9];  // the codes, splatted once
  for (int k = 0; k < 9; ++k) kc[k] = splat<C>(static_cast<C>(k));
  for (int64_t ih = 0; ih < H; ++ih) {
    int64_t prow[3];
    int dh[3];
    const int nr = holders<S>(ih, prow, dh);
    T* out = gx + ih * W;
    // lanes whose windows sit at padded columns pc + pcol[j], offsets dw[j] inside them, j < nc
    auto accumulate = [&](int64_t pc, const int64_t* pcol, const int* dw, int nc, V& am, V& aa) {
      for (int i = 0; i < nr; ++i) {
        const int64_t base = prow[i] * Wp + pc;
        for (int j = 0; j < nc; ++j) {
          const int64_t at = base + pcol[j];
          if (hm) {
            const V code = loadv(s.code + at);
            am += (code == kc[dh[i] * 3 + dw[j]]) ? loadv(s.gm + at) : zero;
          }
          if (ha) aa += loadv(s.d + at);
        }
      }
    };
    if constexpr (S == 1) {
      const int64_t pcol[3] = {0, 1, 2};
      const int dw[3] = {2, 1, 0};
      for (int64_t iw = 0; iw < W; iw += N) {
        V am = zero, aa = zero;
        accumulate(iw, pcol, dw, 3, am, aa);
        store_n(out + iw, hm && ha ? am + aa : (hm ? am : aa), W - iw);
      }
    } else {
      // N even input columns 2k and N odd ones 2k + 1 (k = k0 ..), interleaved on the store
      const int64_t pe[1] = {1}, po[2] = {1, 2};
      const int de[1] = {1}, dodd[2] = {2, 0};
      for (int64_t iw = 0; iw < W; iw += 2 * N) {
        const int64_t k0 = iw >> 1;
        V ame = zero, aae = zero, amo = zero, aao = zero;
        accumulate(k0, pe, de, 1, ame, aae);
        accumulate(k0, po, dodd, 2, amo, aao);
        const V e = hm && ha ? ame + aae : (hm ? ame : aae);
        const V o = hm && ha ? amo + aao : (hm ? amo : aao);
        const int64_t rem = W - iw;
        store_n(out + iw, zip_lo<C>(e, o), rem);
        if (rem > N) store_n(out + iw + N, zip_hi<C>(e, o), rem - N);
      }
    }
  }
}

// planes [p0, p1): grad_x from x and the gradients present (null: absent)
template <typename T, int S>
void bwd_range(const T* x, const T* gmax, const T* gavg, T* gx, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
               int64_t p0, int64_t p1) {
  using C = typename Compute<T>::type;
  constexpr int N = VT<C>::n;
  const Columns<C, S> cols(W, Wo);
  RowCache<T, S> rows(cols, W, gmax != nullptr, true);
  Scratch<C> scratch(Ho, Wo, W, N);
  for (int64_t p = p0; p < p1; ++p) {
    rows.plane(x + p * H * W);
    bwd_prepare<T, S>(rows, cols, gmax ? gmax + p * Ho * Wo : nullptr, gavg ? gavg + p * Ho * Wo : nullptr,
                      scratch, H, Ho, Wo);
    bwd_gather<T, S>(scratch, gmax != nullptr, gavg != nullptr, gx + p * H * W, H, W);
  }
}

}  // namespace EMODARTS_PKNS
