// Register-blocked plane kernels of the multi-depthwise convolution for the search space's depthwise
// convolutions: kernel 3 or 5, dilation 1 or 2, stride 1 or 2 (mdw_fast, csrc/multi_dw_scratch.h). Included by
// csrc/multi_dw_kernels.h inside its namespace, so compiled once per instruction set (baseline and AVX2+FMA);
// EMODARTS_MDW_ROWS (EMODARTS_MDW_ROWS_BIG for more than 12 taps), EMODARTS_MDW_VECS and EMODARTS_MDW_WGROUP
// size the register blocks of the copy.
//
// Every pass is a correlation with a compile-time list of taps (TapList): out[i][j] (+)= sum_t w[t] *
// src[plane_t][i + ro_t][j + co_t], computed for a block of ROWS output rows x VECS vectors of kMdwLanes
// columns in registers, taps and rows unrolled, so each input vector is loaded once for every output row it
// feeds (the compiler merges the identical loads) and each output is stored once.
// - forward, stride 1: one pass on the zero-padded input (MdwScratch::x);
// - forward, stride 2: one pass on the input's four (row parity, column parity) phases: tap (kh, kw) reads
//   phase ((e + kh d) & 1, (e + kw d) & 1) at (oh + (e + kh d) / 2, ow + (e + kw d) / 2), e = kMdwPad - p,
//   contiguous columns;
// - input gradient, stride 1: the forward on the zero-padded output gradient, the kernel flipped;
// - input gradient, stride 2 (transposed convolution): per phase (pr, pc) of the input gradient, the taps with
//   (pr + p - kh d) and (pc + p - kw d) even, a stride-1 correlation on the padded output gradient
//   (dilation 2: only the even/even phase has taps); the phases go to MdwScratch::gx4 and are interleaved
//   into the gradient plane once per plane;
// - weight gradient: per group of taps, one vector accumulator per tap (kMdwLanes partial sums, or 2x that),
//   the output gradient's vector times the tap's input vector (the forward's addressing; the last partial
//   vector of a row masked); lanes summed in double at the end of the plane.

namespace blocked {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kMdwLanes * sizeof(float))));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kMdwLanes * sizeof(double))));
};

// integer vectors of the same size, for bit masks
template <typename T>
struct MaskOf;
template <>
struct MaskOf<float> {
  typedef int32_t type __attribute__((vector_size(kMdwLanes * sizeof(float))));
};
template <>
struct MaskOf<double> {
  typedef int64_t type __attribute__((vector_size(kMdwLanes * sizeof(double))));
};

template <typename V, typename T>
inline void vload(V& v, const T* p) {
  std::memcpy(&v, p, sizeof(V));
}
template <typename V, typename T>
inline void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <class F, int... I>
inline void unroll_seq(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
// f(integral_constant<int, i>) for i = 0 .. N-1, unrolled at compile time
template <int N, class F>
inline void unroll(F&& f) {
  unroll_seq(f, std::make_integer_sequence<int, N>{});
}

constexpr int kMaxTaps = 25;

struct TapList {
  int n;
  int plane[kMaxTaps], ro[kMaxTaps], co[kMaxTaps], w[kMaxTaps];
};

enum Mode { kForward = 0, kInputGrad1 = 1, kInputGrad2 = 2 };

// The taps of one pass. kForward (also the weight gradient): on MdwScratch::x, stride S. kInputGrad1: on the
// padded output gradient, stride 1. kInputGrad2: phase (PR, PC) of the stride-2 input gradient.
constexpr TapList make_taps(int K, int D, int S, int mode, int PR, int PC) {
  TapList t{0, {}, {}, {}, {}};
  const int P = kMdwPad, p = D * (K - 1) / 2, e = P - p;
  for (int kh = 0; kh < K; ++kh)
    for (int kw = 0; kw < K; ++kw) {
      int plane = 0, ro = 0, co = 0;
      if (mode == kForward) {
        const int qr = e + kh * D, qc = e + kw * D;
        if (S == 1) {
          ro = qr;
          co = qc;
        } else {
          plane = 2 * (qr & 1) + (qc & 1);
          ro = qr >> 1;
          co = qc >> 1;
        }
      } else if (mode == kInputGrad1) {
        ro = P + p - kh * D;
        co = P + p - kw * D;
      } else {
        const int nr = PR + p - kh * D, nc = PC + p - kw * D;
        if ((nr & 1) != 0 || (nc & 1) != 0) continue;
        ro = P + nr / 2;
        co = P + nc / 2;
      }
      t.plane[t.n] = plane;
      t.ro[t.n] = ro;
      t.co[t.n] = co;
      t.w[t.n] = kh * K + kw;
      ++t.n;
    }
  return t;
}

template <int K, int D, int S, int M, int PR = 0, int PC = 0>
struct Taps {
  static constexpr TapList value = make_taps(K, D, S, M, PR, PC);
};

// One block: ROWS x VECS output vectors at out (row stride ldo), `ncols` of its columns valid (the rest of
// the block is neither stored nor meaningful). src points at the block's (0, 0) in plane 0; plane q starts
// q * ps further. wv: the K*K weights, each broadcast to a vector.
template <typename T, class TP, int ROWS, int VECS, bool ACC>
inline void corr_block(const T* __restrict__ src, int64_t ld, int64_t ps, const typename VecOf<T>::type* wv,
                       T* __restrict__ out, int64_t ldo, int64_t ncols) {
  using Vec = typename VecOf<T>::type;
  Vec acc[ROWS][VECS];
  unroll<ROWS>([&](auto ic) {
    unroll<VECS>([&](auto uc) { acc[ic.value][uc.value] = Vec{}; });
  });
  unroll<TP::value.n>([&](auto tc) {
    constexpr int t = decltype(tc)::value;
    constexpr int plane = TP::value.plane[t], ro = TP::value.ro[t], co = TP::value.co[t], wi = TP::value.w[t];
    const T* p = src + plane * ps + co;
    unroll<ROWS>([&](auto ic) {
      constexpr int i = decltype(ic)::value;
      const T* q = p + (i + ro) * ld;
      unroll<VECS>([&](auto uc) {
        constexpr int u = decltype(uc)::value;
        Vec xv;
        vload(xv, q + u * kMdwLanes);
        acc[i][u] += xv * wv[wi];
      });
    });
  });
  unroll<ROWS>([&](auto ic) {
    constexpr int i = decltype(ic)::value;
    unroll<VECS>([&](auto uc) {
      constexpr int u = decltype(uc)::value;
      T* o = out + i * ldo + u * kMdwLanes;
      const int64_t nv = ncols - u * kMdwLanes;
      if (nv >= kMdwLanes) {
        Vec r = acc[i][u];
        if (ACC) {
          Vec old;
          vload(old, o);
          r = old + r;
        }
        vstore(o, r);
      } else if (nv > 0) {  // through a local copy: lane access here would keep every accumulator in memory
        T part[kMdwLanes];
        vstore(part, acc[i][u]);
        for (int64_t l = 0; l < nv; ++l) o[l] = ACC ? o[l] + part[l] : part[l];
      }
    });
  });
}

// out (rows x cols, row stride ldo) (+)= the correlation of TP's taps; src at output (0, 0) of plane 0
template <typename T, int K, class TP, bool ACC>
void corr_plane(const T* src, int64_t ld, int64_t ps, const T* w, T* out, int64_t ldo, int64_t rows,
                int64_t cols) {
  if constexpr (TP::value.n > 0) {
    using Vec = typename VecOf<T>::type;
    // rows per block: fewer for the 5x5 kernels, whose taps need more registers for addresses and inputs
    constexpr int R = TP::value.n > 12 ? EMODARTS_MDW_ROWS_BIG : EMODARTS_MDW_ROWS;
    constexpr int U = EMODARTS_MDW_VECS, BW = U * kMdwLanes;
    Vec wv[K * K];
    for (int t = 0; t < K * K; ++t)
      for (int l = 0; l < kMdwLanes; ++l) wv[t][l] = w[t];
    int64_t i = 0;
    for (; i + R <= rows; i += R)
      for (int64_t j = 0; j < cols; j += BW)
        corr_block<T, TP, R, U, ACC>(src + i * ld + j, ld, ps, wv, out + i * ldo + j, ldo, cols - j);
    for (; i < rows; ++i)
      for (int64_t j = 0; j < cols; j += BW)
        corr_block<T, TP, 1, U, ACC>(src + i * ld + j, ld, ps, wv, out + i * ldo + j, ldo, cols - j);
  }
}

// gw[tap] += sum over the plane of go * x at the tap, for taps [T0, T1) of TP; go rows (Ho x Wo, stride ldg)
// are zero right of Wo, so whole vectors may run past it
template <typename T, class TP, int T0, int T1, int VECS>
void wgrad_group(const T* __restrict__ src, int64_t ld, int64_t ps, const T* __restrict__ go, int64_t ldg,
                 int64_t Ho, int64_t Wo, double* __restrict__ gw) {
  using Vec = typename VecOf<T>::type;
  using Mask = typename MaskOf<T>::type;
  constexpr int G = T1 - T0, BW = VECS * kMdwLanes;
  Vec acc[G][VECS];
  unroll<G>([&](auto tc) {
    unroll<VECS>([&](auto uc) { acc[tc.value][uc.value] = Vec{}; });
  });
  // the columns right of Wo: the output gradient is zero there, and the input is masked to zero too, so that
  // an inf or nan the tap does not reach leaves no nan
  const int64_t whole = Wo / BW * BW;
  Mask tail[VECS];
  for (int u = 0; u < VECS; ++u)
    for (int l = 0; l < kMdwLanes; ++l) tail[u][l] = whole + u * kMdwLanes + l < Wo ? -1 : 0;
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const T* grow = go + oh * ldg;
    const T* xrow = src + oh * ld;
    auto block = [&](int64_t j, auto masked) {
      Vec gv[VECS];
      unroll<VECS>([&](auto uc) { vload(gv[uc.value], grow + j + uc.value * kMdwLanes); });
      unroll<G>([&](auto tc) {
        constexpr int t = T0 + decltype(tc)::value;
        constexpr int plane = TP::value.plane[t], ro = TP::value.ro[t], co = TP::value.co[t];
        const T* q = xrow + plane * ps + ro * ld + co + j;
        unroll<VECS>([&](auto uc) {
          constexpr int u = decltype(uc)::value;
          Vec xv;
          vload(xv, q + u * kMdwLanes);
          if constexpr (decltype(masked)::value) xv = (Vec)((Mask)xv & tail[u]);
          acc[tc.value][u] += gv[u] * xv;
        });
      });
    };
    for (int64_t j = 0; j < whole; j += BW) block(j, std::false_type{});
    if (whole < Wo) block(whole, std::true_type{});
  }
  unroll<G>([&](auto tc) {
    constexpr int t = T0 + decltype(tc)::value;
    double sum = 0.0;
    for (int u = 0; u < VECS; ++u)
      for (int l = 0; l < kMdwLanes; ++l) sum += static_cast<double>(acc[tc.value][u][l]);
    gw[TP::value.w[t]] += sum;
  });
}

template <typename T, class TP, int T0>
void wgrad_taps(const T* src, int64_t ld, int64_t ps, const T* go, int64_t ldg, int64_t Ho, int64_t Wo,
                double* gw) {
  constexpr int N = TP::value.n, G = EMODARTS_MDW_WGROUP;
  if constexpr (T0 < N) {
    constexpr int T1 = T0 + G < N ? T0 + G : N;
    constexpr int VECS = 2 * (T1 - T0) <= G ? 2 : 1;
    wgrad_group<T, TP, T0, T1, VECS>(src, ld, ps, go, ldg, Ho, Wo, gw);
    wgrad_taps<T, TP, T1>(src, ld, ps, go, ldg, Ho, Wo, gw);
  }
}

template <typename T, int K, int D, int S>
struct Conv {
  using Fwd = Taps<K, D, S, kForward>;

  static void forward(const MdwScratch<T>& sc, const T* w, T* out) {
    corr_plane<T, K, Fwd, false>(sc.x.data(), sc.ldx, sc.psx, w, out, sc.Wo, sc.Ho, sc.Wo);
  }

  static void input_grad(MdwScratch<T>& sc, const T* w, T* gx, bool store) {
    if constexpr (S == 1) {
      if (store)
        corr_plane<T, K, Taps<K, D, 1, kInputGrad1>, false>(sc.go.data(), sc.ldg, 0, w, gx, sc.W, sc.H, sc.W);
      else
        corr_plane<T, K, Taps<K, D, 1, kInputGrad1>, true>(sc.go.data(), sc.ldg, 0, w, gx, sc.W, sc.H, sc.W);
    } else {
      unroll<4>([&](auto phase) {
        constexpr int PR = decltype(phase)::value >> 1, PC = decltype(phase)::value & 1;
        corr_plane<T, K, Taps<K, D, 2, kInputGrad2, PR, PC>, true>(
            sc.go.data(), sc.ldg, 0, w, sc.gx4.data() + (2 * PR + PC) * sc.ps4, sc.ld4, (sc.H - PR + 1) / 2,
            (sc.W - PC + 1) / 2);
      });
    }
  }

  static void weight_grad(const MdwScratch<T>& sc, double* gw) {
    const T* go = sc.go.data() + kMdwPad * sc.ldg + kMdwPad;
    wgrad_taps<T, Fwd, 0>(sc.x.data(), sc.ldx, sc.psx, go, sc.ldg, sc.Ho, sc.Wo, gw);
  }
};

}  // namespace blocked

// The input plane (H x W) into the scratch: zero-padded (stride 1) or as its four padded phases (stride 2).
template <typename T>
void fast_load_x(MdwScratch<T>& sc, const T* __restrict__ x) {
  const int64_t P = kMdwPad;
  if (sc.s == 1) {
    for (int64_t ih = 0; ih < sc.H; ++ih)
      std::memcpy(sc.x.data() + (ih + P) * sc.ldx + P, x + ih * sc.W, sc.W * sizeof(T));
    return;
  }
  const int64_t half = sc.W / 2;
  for (int64_t ih = 0; ih < sc.H; ++ih) {
    const T* __restrict__ row = x + ih * sc.W;
    const int64_t off = (ih & 1) * 2 * sc.psx + (ih / 2 + P / 2) * sc.ldx + P / 2;
    T* __restrict__ even = sc.x.data() + off;
    T* __restrict__ odd = even + sc.psx;
    for (int64_t c = 0; c < half; ++c) {
      even[c] = row[2 * c];
      odd[c] = row[2 * c + 1];
    }
    if (sc.W & 1) even[half] = row[sc.W - 1];
  }
}

// The output-gradient plane (Ho x Wo) into the scratch, zero-padded.
template <typename T>
void fast_load_go(MdwScratch<T>& sc, const T* go) {
  const int64_t P = kMdwPad;
  for (int64_t oh = 0; oh < sc.Ho; ++oh)
    std::memcpy(sc.go.data() + (oh + P) * sc.ldg + P, go + oh * sc.Wo, sc.Wo * sizeof(T));
}

template <typename T, bool ACC>
void fast_gx4_interleave(const MdwScratch<T>& sc, T* __restrict__ gx) {
  const int64_t half = sc.W / 2;
  for (int64_t ih = 0; ih < sc.H; ++ih) {
    T* __restrict__ row = gx + ih * sc.W;
    const T* __restrict__ even = sc.gx4.data() + (ih & 1) * 2 * sc.ps4 + (ih / 2) * sc.ld4;
    const T* __restrict__ odd = even + sc.ps4;
    for (int64_t c = 0; c < half; ++c) {
      row[2 * c] = ACC ? row[2 * c] + even[c] : even[c];
      row[2 * c + 1] = ACC ? row[2 * c + 1] + odd[c] : odd[c];
    }
    if (sc.W & 1) row[sc.W - 1] = ACC ? row[sc.W - 1] + even[half] : even[half];
  }
}

template <typename T>
void fast_gx4_zero(MdwScratch<T>& sc) {
  std::fill(sc.gx4.begin(), sc.gx4.end(), T(0));
}

// gx (H x W) += (or, `store`, =) the input-gradient phases gathered in the scratch (stride 2)
template <typename T>
void fast_gx4_flush(const MdwScratch<T>& sc, T* __restrict__ gx, bool store) {
  if (store) {
    fast_gx4_interleave<T, false>(sc, gx);
  } else {
    fast_gx4_interleave<T, true>(sc, gx);
  }
}

#define EMODARTS_MDW_CASES(X) \
  X(3, 1, 1) X(3, 1, 2) X(3, 2, 1) X(3, 2, 2) X(5, 1, 1) X(5, 1, 2) X(5, 2, 1) X(5, 2, 2)
#define EMODARTS_MDW_CASE_ID(k, d, s) ((k) * 100 + (d) * 10 + (s))

// the forward of one candidate on the input loaded by fast_load_x (mdw_fast(k, d, sc.s) must hold)
template <typename T>
void fast_fwd(const MdwScratch<T>& sc, const T* w, int64_t k, int64_t d, T* out) {
  switch (EMODARTS_MDW_CASE_ID(k, d, sc.s)) {
#define EMODARTS_MDW_FWD(K, D, S) \
  case EMODARTS_MDW_CASE_ID(K, D, S): blocked::Conv<T, K, D, S>::forward(sc, w, out); break;
    EMODARTS_MDW_CASES(EMODARTS_MDW_FWD)
#undef EMODARTS_MDW_FWD
    default: break;
  }
}

// the backward of one candidate on the input (fast_load_x) and output gradient (fast_load_go) in the scratch:
// stride 1, gx += (or, `store`, =) its input gradient; stride 2, the scratch's input-gradient phases += it;
// gw += its weight gradient. gx == nullptr: no input gradient is wanted, gw == nullptr: no weight gradient.
template <typename T>
void fast_bwd(MdwScratch<T>& sc, const T* w, int64_t k, int64_t d, T* gx, double* gw, bool store) {
  switch (EMODARTS_MDW_CASE_ID(k, d, sc.s)) {
#define EMODARTS_MDW_BWD(K, D, S)                                         \
  case EMODARTS_MDW_CASE_ID(K, D, S):                                     \
    if (gx) blocked::Conv<T, K, D, S>::input_grad(sc, w, gx, store);     \
    if (gw) blocked::Conv<T, K, D, S>::weight_grad(sc, gw);              \
    break;
    EMODARTS_MDW_CASES(EMODARTS_MDW_BWD)
#undef EMODARTS_MDW_BWD
    default: break;
  }
}

#undef EMODARTS_MDW_CASE_ID
#undef EMODARTS_MDW_CASES
