// Per-thread scratch planes of the register-blocked multi-depthwise kernels (csrc/multi_dw_blocked.h), shared
// by the baseline and AVX2 copies of those kernels (csrc/multi_depthwise.cpp).
//
// x: the input plane with kMdwPad zero rows/columns around it (stride 1), or, at stride 2, the four
//    (row parity, column parity) phases of that padded plane, each (Ho + kMdwPad + 2) x ldx, so that every tap
//    of a stride-2 convolution reads contiguous columns of one phase;
// go: the output-gradient plane with kMdwPad zeros around it (the transposed convolution reads it like the
//    forward reads x);
// gx4: stride 2, the input gradient's four phases, summed over the candidates of a plane, then interleaved
//    into the gradient plane.
// Borders and the columns right of a row stay zero: a plane only ever overwrites the interior, and every call
// of one op has one geometry. Rows end in at least kMdwSlack spare columns, so a block of kMdwSlack outputs
// never reads past a row's end.
#pragma once

#include <cstdint>
#include <vector>

namespace emodarts {
namespace multi_dw_cpu {

constexpr int kMdwPad = 4;     // the largest padding of the fast kernels: dilation 2, 5x5
constexpr int kMdwLanes = 8;   // elements per vector (8 floats: one AVX2 register; 8 doubles: two)
constexpr int kMdwSlack = 16;  // the widest column block: 2 vectors

inline int64_t mdw_round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename T>
struct MdwScratch {
  int64_t H, W, Ho, Wo, s;
  int64_t ldx = 0, psx = 0, ldg = 0, ld4 = 0, ps4 = 0;
  std::vector<T> x, go, gx4;

  MdwScratch(int64_t H_, int64_t W_, int64_t s_, bool backward) : H(H_), W(W_), s(s_) {
    Ho = (H - 1) / s + 1;
    Wo = (W - 1) / s + 1;
    const int64_t P = kMdwPad;
    if (s == 1) {
      ldx = mdw_round_up(W, kMdwSlack) + 2 * P + kMdwSlack;
      psx = (H + 2 * P + 1) * ldx;
      x.assign(psx, T(0));
    } else {
      ldx = mdw_round_up(Wo, kMdwSlack) + P + kMdwSlack;
      psx = (Ho + P + 2) * ldx;
      x.assign(4 * psx, T(0));
    }
    if (backward) {
      ldg = mdw_round_up(Wo, kMdwSlack) + 2 * P + kMdwSlack;
      go.assign((Ho + 2 * P + 1) * ldg, T(0));
      if (s == 2) {
        ld4 = mdw_round_up(Wo, kMdwSlack);
        ps4 = Ho * ld4;
        gx4.assign(4 * ps4, T(0));
      }
    }
  }
};

// the (kernel, dilation, stride) the register-blocked kernels are specialised for
inline bool mdw_fast(int64_t k, int64_t d, int64_t s) {
  return (k == 3 || k == 5) && (d == 1 || d == 2) && (s == 1 || s == 2);
}

}  // namespace multi_dw_cpu
}  // namespace emodarts
