// The grouped recurrent layer's bf16 products (CPU): what csrc/grouped_rnn.cpp runs when x is bfloat16 (the
// search's --amp bf16, where the reference's nn.LSTM / nn.RNN also hand back bf16 sequences).
//
// Every GEMM reads bfloat16 operands and sums in float32 (cpu_common::gemm_rm_bf16: MKL's gemm_bf16bf16f32,
// on AMX or AVX512-BF16 where the CPU has them). What stays float32: the weights and biases (the modules'
// own parameters; each task takes a bf16 copy of its unit's weights per call), the gate pre-activations
// and activations, the cell states, the epilogues (the same float32 kernels as the float32 op) and the weight
// gradients. What is bf16: the inputs x, the layer output hs (also the recurrent GEMMs' operand h_{t-1}),
// the input gradients, and in backward a bf16 copy of the d gates for the GEMMs. Each bf16 value is rounded
// once from its float32 result.
// Included inside csrc/grouped_rnn.cpp's anonymous namespace, after the float32 forward and backward.
#pragma once

using BF16 = c10::BFloat16;
using cpu_common::gemm_rm_bf16;
using cpu_common::to_bf16;
using cpu_common::to_float;

// the most gate rows of a unit, times `cols`: the size of a worker's bf16 copy of one unit's weights
inline int64_t max_unit_rows(const Plan& p, int64_t cols) {
  return *std::max_element(p.gh.begin(), p.gh.end()) * cols;
}

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
  const bool blas = cpu_common::bf16_blas();
  const int64_t workers = n_workers(p.K), wmax = max_unit_rows(p, p.I + p.H);
  const auto wbuf = cpu_common::scratch_of<BF16>(workers * wmax);  // each worker's bf16 W_ih, then W_hh
  const auto hbuf = cpu_common::scratch_of<float>(workers * BH);   // each worker's float32 h_t, rounded into hs
  for_units(p.K, workers, [&](int64_t k, int64_t wk) {
    const int64_t go = p.goff[k], gh = p.gh[k];
    BF16* wi = wbuf.get() + wk * wmax;
    BF16* wh = wi + gh * I;
    to_bf16(w.w_ih[k], wi, gh * I);
    to_bf16(w.w_hh[k], wh, gh * H);
    const float* b = bias + go;
    float* gk = gates + TB * go;
    gemm_rm_bf16(blas, false, true, TB, gh, I, w.input(p, k), I, wi, I, 0.0f, gk, gh);
    BF16* hk = hs + k * T_ * BH;
    float* ck = k < p.KL ? cs + k * T_ * BH : nullptr;
    float* h32 = hbuf.get() + wk * BH;
    for (int64_t s = 0; s < T_; ++s) {
      const int64_t t = p.rev[k] ? T_ - 1 - s : s;
      const int64_t tp = p.rev[k] ? t + 1 : t - 1;
      float* gt = gk + t * B * gh;
      if (s > 0) gemm_rm_bf16(blas, false, true, B, gh, H, hk + tp * BH, H, wh, H, 1.0f, gt, gh);
      if (k < p.KL)
        lstm_fwd(B, H, gt, gh, b, s > 0 ? ck + tp * BH : nullptr, ck + t * BH, h32);
      else
        rnn_fwd(B, H, gt, gh, b, h32);
      to_bf16(h32, hk + t * BH, BH);
    }
  });
}

// dx: Kx bf16 input gradients (empty: not wanted); d: the float32 weight and bias gradients, as the float32 op.
void backward_bf16(const Plan& p, const BF16* gh_all, const Bf16Ptrs& w, const BF16* hs, const float* cs,
                   const float* gates, const std::vector<BF16*>& dx, const UnitGrads<float>& d, float* dgates,
                   BF16* dgates16) {
  const int64_t T_ = p.T, B = p.B, H = p.H, I = p.I, BH = B * H, TB = T_ * B;
  const bool blas = cpu_common::bf16_blas();
  const int64_t workers = n_workers(p.K), wmax = max_unit_rows(p, p.H);
  const bool own_dx = !dx.empty() && p.Kx != 1;
  const auto wbuf = cpu_common::scratch_of<BF16>(workers * wmax);  // each worker's bf16 copy of its unit's W_hh
  // every unit's W_ih in bf16 at its gate rows (G, I), converted in the unit's task: the input gradients' GEMMs
  const auto wih16 = cpu_common::scratch_of<BF16>(dx.empty() ? 0 : p.G * I);
  const auto fbuf = cpu_common::scratch_of<float>(workers * 4 * BH);  // dhr, dc, dL/dh_t and h_t in float32
  const auto dxbuf = cpu_common::scratch_of<float>(own_dx ? workers * TB * I : 0);  // own input gradients, unrounded
  for_units(p.K, workers, [&](int64_t k, int64_t wk) {
    const int64_t go = p.goff[k], gh = p.gh[k];
    const bool rev = p.rev[k];
    BF16* wh = wbuf.get() + wk * wmax;
    to_bf16(w.w_hh[k], wh, gh * H);
    BF16* wi = dx.empty() ? nullptr : wih16.get() + go * I;
    if (wi != nullptr) to_bf16(w.w_ih[k], wi, gh * I);
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
      if (!last) gemm_rm_bf16(blas, false, false, B, H, gh, dgk16 + tn * B * gh, gh, wh, H, 0.0f, dhr, H);
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
      if (rows > 0)
        gemm_rm_bf16(blas, true, false, gh, H, rows, dgk16 + (rev ? 0 : B * gh), gh, hk + (rev ? BH : 0), H, 0.0f,
                     d.dw_hh[k], H);
      else
        std::fill(d.dw_hh[k], d.dw_hh[k] + gh * H, 0.0f);
    }
    if (!d.dw_ih.empty()) gemm_rm_bf16(blas, true, false, gh, I, TB, dgk16, gh, w.input(p, k), I, 0.0f, d.dw_ih[k], I);
    if (own_dx) {
      float* dx32 = dxbuf.get() + wk * TB * I;
      gemm_rm_bf16(blas, false, false, TB, I, gh, dgk16, gh, wi, I, 0.0f, dx32, I);
      to_bf16(dx32, dx[k], TB * I);
    }
    if (!d.db.empty()) column_sums(dgk, TB, gh, d.db[k]);
  });
  if (!dx.empty() && p.Kx == 1) {  // the shared input's gradient, summed in float32 in unit order, rounded once
    const auto dx32 = cpu_common::scratch_of<float>(TB * I);
    for (int64_t k = 0; k < p.K; ++k)
      gemm_rm_bf16(blas, false, false, TB, I, p.gh[k], dgates16 + TB * p.goff[k], p.gh[k],
                   wih16.get() + p.goff[k] * I, I, k == 0 ? 0.0f : 1.0f, dx32.get(), I);
    to_bf16(dx32.get(), dx[0], TB * I);
  }
}
