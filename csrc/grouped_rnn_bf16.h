// The grouped recurrent layer's bf16 products (CPU): what csrc/grouped_rnn.cpp runs when x is bfloat16 (the
// search's --amp bf16, where the reference's nn.LSTM / nn.RNN also hand back bf16 sequences).
//
// Every GEMM reads bfloat16 operands and sums in float32. The products through a weight (input projections,
// recurrent steps, and in backward dh through W_hh and dx through W_ih) take it as a `Bf16Rhs`: packed once per
// call for our AVX512-BF16 kernel where that runs (csrc/panel_gemm.h: a CPU with the instruction that is not
// Intel's), else a bf16 copy for MKL's gemm_bf16bf16f32 (cpu_common::gemm_rm_bf16: AMX or AVX512-BF16 on
// Intel; float32 copies without MKL); on our kernel's path the weight gradients pack both of their operands
// (weight_grad_dot), else they take gemm_rm_bf16. What stays float32: the
// weights and biases (the modules' own parameters), the gate pre-activations and activations, the cell
// states, the epilogues (the same float32 kernels as the float32 op) and the weight gradients. What is bf16:
// the inputs x, the layer output hs (also the recurrent GEMMs' operand h_{t-1}), the input gradients, and in
// backward a bf16 copy of the d gates for the GEMMs. Each bf16 value is rounded once from its float32 result.
// Included inside csrc/grouped_rnn.cpp's anonymous namespace, after the float32 forward and backward (the file
// includes csrc/panel_gemm.h at its top).
#pragma once

using BF16 = c10::BFloat16;
using Pairs = panel_gemm::Bf16Pairs;
using cpu_common::gemm_rm_bf16;
using cpu_common::to_bf16;
using cpu_common::to_float;

// How this call runs its bf16 products through a weight (read once per call of an op).
struct Bf16Path {
  bool dot = panel_gemm::bf16_enabled();  // our AVX512-BF16 kernel on packed weights
  bool blas = cpu_common::bf16_blas();  // else MKL's bf16 GEMM (else float32 copies)
};

// A right-hand operand B (Kd x N) of the bf16 products taken from a float32 weight W: B = W^T (trans; W is
// N x Kd) or W (Kd x N), rounded once. Its storage is a slice of a buffer the call allocates per worker, of
// `words` 32-bit words: the packed pairs of panel_gemm, or a plain bf16 copy of W for gemm_rm_bf16.
class Bf16Rhs {
 public:
  static int64_t words(const Bf16Path& path, int64_t Kd, int64_t N) {
    return path.dot ? panel_gemm::packed_words<Pairs>(Kd, N) : (Kd * N + 1) / 2;
  }
  Bf16Rhs(const Bf16Path& path, uint32_t* packed, BF16* copy) : path_(path), packed_(packed), copy_(copy) {}
  // rounds W into the buffer (the weights are contiguous: ld Kd when trans, else N)
  void load(const float* W, bool trans, int64_t Kd, int64_t N) {
    trans_ = trans;
    Kd_ = Kd;
    N_ = N;
    if (path_.dot)
      panel_gemm::pack<Pairs>(W, trans ? Kd : N, trans, Kd, N, packed_);
    else
      to_bf16(W, copy_, Kd * N);
  }
  // C (M x N, ldc) = A (M x Kd, bf16, lda) B + beta C
  void gemm(int64_t M, const BF16* A, int64_t lda, float beta, float* C, int64_t ldc) const {
    if (path_.dot)
      panel_gemm::gemm_bf16(M, N_, Kd_, A, lda, packed_, beta, C, ldc);
    else
      gemm_rm_bf16(path_.blas, false, trans_, M, N_, Kd_, A, lda, copy_, trans_ ? Kd_ : N_, beta, C, ldc);
  }

 private:
  Bf16Path path_;
  uint32_t* packed_;
  BF16* copy_;
  bool trans_ = false;
  int64_t Kd_ = 0, N_ = 0;
};

// The buffers of a call's operands, one slot of sizes[i] words each: packed words or bf16 copies, by the path.
class Bf16RhsStore {
 public:
  Bf16RhsStore(const Bf16Path& path, const std::vector<int64_t>& sizes) : path_(path), offset_(sizes.size() + 1, 0) {
    for (size_t i = 0; i < sizes.size(); ++i) offset_[i + 1] = offset_[i] + sizes[i];
    packed_ = cpu_common::scratch_of<uint32_t>(path.dot ? offset_.back() : 0);
    copies_ = cpu_common::scratch_of<BF16>(path.dot ? 0 : 2 * offset_.back());
  }
  Bf16Rhs at(int64_t i) const {
    const int64_t at = offset_[i];
    return Bf16Rhs(path_, packed_.get() + (path_.dot ? at : 0), copies_.get() + (path_.dot ? 0 : 2 * at));
  }

 private:
  Bf16Path path_;
  std::vector<int64_t> offset_;
  std::unique_ptr<uint32_t[]> packed_;
  std::unique_ptr<BF16[]> copies_;
};

// Pointers of one call: inputs (bf16, Kx of them) and weights (float32), read in place.
struct Bf16Ptrs {
  std::vector<const BF16*> x;
  std::vector<const float*> w_ih, w_hh;
  Bf16Ptrs(const std::vector<Tensor>& xs, const std::vector<Tensor>& wi, const std::vector<Tensor>& wh) {
    for (const auto& t : xs) x.push_back(t.const_data_ptr<BF16>());
    for (const auto& t : wi) w_ih.push_back(t.const_data_ptr<float>());
    for (const auto& t : wh) w_hh.push_back(t.const_data_ptr<float>());
  }
  const BF16* input(const Plan& p, int64_t k) const { return x[p.Kx == 1 ? 0 : k]; }
};

void forward_bf16(const Plan& p, const Bf16Ptrs& w, const float* bias, BF16* hs, float* cs, float* gates) {
  const int64_t T_ = p.T, B = p.B, H = p.H, I = p.I, BH = B * H, TB = T_ * B;
  const Bf16Path path;
  const int64_t workers = n_workers(p.K), gmax = *std::max_element(p.gh.begin(), p.gh.end());
  const int64_t words = std::max(Bf16Rhs::words(path, I, gmax), Bf16Rhs::words(path, H, gmax));
  const Bf16RhsStore store(path, std::vector<int64_t>(2 * workers, words));  // each worker's W_ih^T and W_hh^T
  const auto hbuf = cpu_common::scratch_of<float>(workers * BH);  // each worker's float32 h_t, rounded into hs
  for_units(p.K, workers, [&](int64_t k, int64_t wk) {
    const int64_t go = p.goff[k], gh = p.gh[k];
    Bf16Rhs wi = store.at(2 * wk), wh = store.at(2 * wk + 1);
    wi.load(w.w_ih[k], true, I, gh);
    wh.load(w.w_hh[k], true, H, gh);
    const float* b = bias + go;
    float* gk = gates + TB * go;
    wi.gemm(TB, w.input(p, k), I, 0.0f, gk, gh);
    BF16* hk = hs + k * T_ * BH;
    float* ck = k < p.KL ? cs + k * T_ * BH : nullptr;
    float* h32 = hbuf.get() + wk * BH;
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = p.rev[k] ? T_ - 1 - s : s;
      const int64_t tp = p.rev[k] ? t + 1 : t - 1;
      float* gt = gk + t * B * gh;
      if (s > 0) wh.gemm(B, hk + tp * BH, H, 1.0f, gt, gh);
      if (k < p.KL)
        lstm_fwd(B, H, gt, gh, b, s > 0 ? ck + tp * BH : nullptr, ck + t * BH, h32);
      else
        rnn_fwd(B, H, gt, gh, b, h32);
      to_bf16(h32, hk + t * BH, BH);
    }
  });
}

// A weight gradient on the dot-product kernel: dW (g x n, float32) = dg^T v over `rows` rows, dg (rows x g) and
// v (rows x n) bf16, both packed into `buf` (weight_grad_words) as (rows x .) operands first.
inline int64_t weight_grad_words(int64_t g, int64_t n, int64_t rows) {
  return panel_gemm::packed_words<Pairs>(rows, g) + panel_gemm::packed_words<Pairs>(rows, n);
}
inline void weight_grad_dot(int64_t g, int64_t n, int64_t rows, const BF16* dg, const BF16* v, uint32_t* buf,
                            float* dw) {
  uint32_t* vp = buf + panel_gemm::packed_words<Pairs>(rows, g);
  panel_gemm::pack<Pairs>(dg, g, false, rows, g, buf);
  panel_gemm::pack<Pairs>(v, n, false, rows, n, vp);
  panel_gemm::gemm_bf16_packed_lhs(g, n, rows, buf, vp, 0.0f, dw, n);
}

// dx: Kx bf16 input gradients (empty: not wanted); d: the float32 weight and bias gradients, as the float32 op.
void backward_bf16(const Plan& p, const BF16* gh_all, const Bf16Ptrs& w, const BF16* hs, const float* cs,
                   const float* gates, const std::vector<BF16*>& dx, const UnitGrads<float>& d, float* dgates,
                   BF16* dgates16) {
  const int64_t T_ = p.T, B = p.B, H = p.H, I = p.I, BH = B * H, TB = T_ * B;
  const Bf16Path path;
  const bool blas = path.blas;  // the weight gradients' GEMMs
  const int64_t workers = n_workers(p.K);
  const bool own_dx = !dx.empty() && p.Kx != 1;
  const int64_t gmax = *std::max_element(p.gh.begin(), p.gh.end());
  // each worker's W_hh, then every unit's W_ih (kept for the shared input's gradient after the loop)
  std::vector<int64_t> sizes(workers, Bf16Rhs::words(path, gmax, H));
  for (int64_t k = 0; k < p.K; ++k) sizes.push_back(dx.empty() ? 0 : Bf16Rhs::words(path, p.gh[k], I));
  const Bf16RhsStore store(path, sizes);
  std::vector<Bf16Rhs> wih;
  for (int64_t k = 0; k < p.K; ++k) wih.push_back(store.at(workers + k));
  const auto fbuf = cpu_common::scratch_of<float>(workers * 4 * BH);  // dhr, dc, dL/dh_t and h_t in float32
  const auto dxbuf = cpu_common::scratch_of<float>(own_dx ? workers * TB * I : 0);  // own input gradients, unrounded
  const bool wgrads = path.dot && !(d.dw_hh.empty() && d.dw_ih.empty());
  const int64_t wgrad_words = wgrads ? weight_grad_words(gmax, std::max(H, I), TB) : 0;
  const auto wgrad = cpu_common::scratch_of<uint32_t>(workers * wgrad_words);  // each worker's packed operands
  for_units(p.K, workers, [&](int64_t k, int64_t wk) {
    const int64_t go = p.goff[k], gh = p.gh[k];
    const bool rev = p.rev[k];
    Bf16Rhs wh = store.at(wk);
    wh.load(w.w_hh[k], false, gh, H);
    if (!dx.empty()) wih[k].load(w.w_ih[k], false, gh, I);
    const BF16* hk = hs + k * T_ * BH;
    const float* ck = k < p.KL ? cs + k * T_ * BH : nullptr;
    const BF16* ghk = gh_all + k * T_ * BH;
    const float* ak = gates + TB * go;
    float* dgk = dgates + TB * go;
    BF16* dgk16 = dgates16 + TB * go;
    float* dhr = fbuf.get() + wk * 4 * BH;
    float* dc = dhr + BH;
    float* g32 = dc + BH;
    float* h32 = g32 + BH;
    for (int64_t s = T_ - 1; s >= 0; --s) {
      const int64_t t = rev ? T_ - 1 - s : s;
      const int64_t tp = rev ? t + 1 : t - 1;
      const int64_t tn = rev ? t - 1 : t + 1;
      const bool last = s == T_ - 1;
      if (!last) wh.gemm(B, dgk16 + tn * B * gh, gh, 0.0f, dhr, H);
      to_float(ghk + t * BH, g32, BH);
      float* dg = dgk + t * B * gh;
      if (k < p.KL) {
        lstm_bwd(B, H, ak + t * B * gh, gh, ck + t * BH, s > 0 ? ck + tp * BH : nullptr, g32, last ? nullptr : dhr,
                 dc, dg, last);
      } else {
        to_float(hk + t * BH, h32, BH);
        rnn_bwd(B, H, h32, g32, last ? nullptr : dhr, dg, gh);
      }
      to_bf16(dg, dgk16 + t * B * gh, B * gh);
    }
    const int64_t rows = (T_ - 1) * B;
    if (!d.dw_hh.empty()) {
      const BF16* dg_rows = dgk16 + (rev ? 0 : B * gh);  // steps with a previous h, against those h
      const BF16* h_rows = hk + (rev ? BH : 0);
      if (rows == 0)
        std::fill(d.dw_hh[k], d.dw_hh[k] + gh * H, 0.0f);
      else if (path.dot)
        weight_grad_dot(gh, H, rows, dg_rows, h_rows, wgrad.get() + wk * wgrad_words, d.dw_hh[k]);
      else
        gemm_rm_bf16(blas, true, false, gh, H, rows, dg_rows, gh, h_rows, H, 0.0f, d.dw_hh[k], H);
    }
    if (!d.dw_ih.empty()) {
      if (path.dot)
        weight_grad_dot(gh, I, TB, dgk16, w.input(p, k), wgrad.get() + wk * wgrad_words, d.dw_ih[k]);
      else
        gemm_rm_bf16(blas, true, false, gh, I, TB, dgk16, gh, w.input(p, k), I, 0.0f, d.dw_ih[k], I);
    }
    if (own_dx) {
      float* dx32 = dxbuf.get() + wk * TB * I;
      wih[k].gemm(TB, dgk16, gh, 0.0f, dx32, I);
      to_bf16(dx32, dx[k], TB * I);
    }
    if (!d.db.empty()) column_sums(dgk, TB, gh, d.db[k]);
  });
  if (!dx.empty() && p.Kx == 1) {  // the shared input's gradient, summed in float32 in unit order, rounded once
    const auto dx32 = cpu_common::scratch_of<float>(TB * I);
    for (int64_t k = 0; k < p.K; ++k)
      wih[k].gemm(TB, dgates16 + TB * p.goff[k], p.gh[k], k == 0 ? 0.0f : 1.0f, dx32.get(), I);
    to_bf16(dx32.get(), dx[0], TB * I);
  }
}
