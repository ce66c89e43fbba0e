// The plan (unit layout) and input checks of the grouped recurrent ops, shared by the CPU
// (csrc/grouped_rnn.cpp) and CUDA (csrc/cuda/grouped_rnn_cuda.cu) implementations. Included inside each
// file's anonymous namespace, after `using at::Tensor`.
#pragma once

struct Plan {
  int64_t K, KL, Kx, T, B, I, H, G;
  std::vector<int64_t> goff, gh;  // gate column offset and width of each unit
  std::vector<bool> rev;
};

inline Plan make_plan(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, int64_t n_lstm, at::IntArrayRef reverse) {
  TORCH_CHECK(x.dim() == 4, "grouped_rnn: x must be (Kx, T, B, I), got ", x.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == 2, "grouped_rnn: w_ih and w_hh must be 2-D");
  Plan p;
  p.K = static_cast<int64_t>(reverse.size());
  p.KL = n_lstm;
  p.Kx = x.size(0);
  p.T = x.size(1);
  p.B = x.size(2);
  p.I = x.size(3);
  p.H = w_hh.size(1);
  TORCH_CHECK(p.K >= 1, "grouped_rnn: needs at least one unit");
  TORCH_CHECK(0 <= p.KL && p.KL <= p.K, "grouped_rnn: n_lstm = ", p.KL, " outside [0, ", p.K, "]");
  TORCH_CHECK(p.Kx == 1 || p.Kx == p.K, "grouped_rnn: x holds ", p.Kx, " inputs for ", p.K, " units");
  TORCH_CHECK(p.T >= 1 && p.B >= 1 && p.I >= 1 && p.H >= 1, "grouped_rnn: empty sizes are not supported");
  p.G = (4 * p.KL + (p.K - p.KL)) * p.H;
  TORCH_CHECK(w_hh.size(0) == p.G, "grouped_rnn: w_hh has ", w_hh.size(0), " rows, expected ", p.G);
  TORCH_CHECK(w_ih.size(0) == p.G && w_ih.size(1) == p.I, "grouped_rnn: w_ih must be (", p.G, ", ", p.I,
              "), got ", w_ih.sizes());
  p.goff.resize(p.K);
  p.gh.resize(p.K);
  p.rev.resize(p.K);
  int64_t off = 0;
  for (int64_t k = 0; k < p.K; ++k) {
    p.gh[k] = (k < p.KL ? 4 : 1) * p.H;
    p.goff[k] = off;
    off += p.gh[k];
    p.rev[k] = reverse[k] != 0;
  }
  return p;
}

inline void check_same(const Tensor& a, const Tensor& ref, const char* name) {
  TORCH_CHECK(a.scalar_type() == ref.scalar_type(), "grouped_rnn: ", name, " has dtype ", a.scalar_type(),
              ", x has ", ref.scalar_type());
  TORCH_CHECK(a.device() == ref.device(), "grouped_rnn: ", name, " is on ", a.device(), ", x on ", ref.device());
}

// backward: the output gradient, the weights and the state forward saved must match x and the plan
inline void check_saved(const Plan& p, const Tensor& x_, const Tensor& grad_hs_, const Tensor& w_ih_,
                        const Tensor& w_hh_, const Tensor& hs_, const Tensor& cs_, const Tensor& gates_) {
  for (const auto& pr : {std::make_pair(&grad_hs_, "grad_hs"), std::make_pair(&w_ih_, "w_ih"),
                         std::make_pair(&w_hh_, "w_hh"), std::make_pair(&hs_, "hs"), std::make_pair(&cs_, "cs"),
                         std::make_pair(&gates_, "gates")})
    check_same(*pr.first, x_, pr.second);
  TORCH_CHECK(grad_hs_.sizes() == hs_.sizes() && hs_.sizes() == at::IntArrayRef({p.K, p.T, p.B, p.H}),
              "grouped_rnn_backward: grad_hs and hs must be (K, T, B, H)");
  TORCH_CHECK(cs_.sizes() == at::IntArrayRef({p.KL, p.T, p.B, p.H}), "grouped_rnn_backward: bad cs shape");
  TORCH_CHECK(gates_.dim() == 1 && gates_.size(0) == p.T * p.B * p.G, "grouped_rnn_backward: bad gates shape");
}
