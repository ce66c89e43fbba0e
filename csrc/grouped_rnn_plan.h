// The plan (unit layout) and input checks of the grouped recurrent ops, shared by the CPU
// (csrc/grouped_rnn.cpp) and CUDA (csrc/cuda/grouped_rnn_cuda.cu) implementations. Included inside each
// file's anonymous namespace, after `using at::Tensor`.
#pragma once

struct Plan {
  int64_t K, KL, Kx, T, B, I, H, G;
  std::vector<int64_t> goff, gh;  // gate column offset and width of each unit
  std::vector<bool> rev;
};

// x: Kx inputs (T, B, I), one read by every unit (Kx = 1) or one per unit (Kx = K); w_ih[k] (g_k, I) and
// w_hh[k] (g_k, H): unit k's own parameters, g_k = 4H (LSTM) or H
inline Plan make_plan(at::TensorList xs, at::TensorList w_ih, at::TensorList w_hh, int64_t n_lstm,
                      at::IntArrayRef reverse) {
  TORCH_CHECK(!xs.empty(), "grouped_rnn: no input");
  const Tensor& x = xs[0];
  TORCH_CHECK(x.dim() == 3, "grouped_rnn: each x must be (T, B, I), got ", x.sizes());
  for (const auto& xk : xs)
    TORCH_CHECK(xk.sizes() == x.sizes(), "grouped_rnn: the inputs differ in shape: ", xk.sizes(), " and ", x.sizes());
  Plan p;
  p.K = static_cast<int64_t>(reverse.size());
  TORCH_CHECK(p.K >= 1, "grouped_rnn: needs at least one unit");
  TORCH_CHECK(static_cast<int64_t>(w_ih.size()) == p.K && static_cast<int64_t>(w_hh.size()) == p.K,
              "grouped_rnn: ", p.K, " units but ", w_ih.size(), " w_ih and ", w_hh.size(), " w_hh");
  TORCH_CHECK(w_hh[0].dim() == 2, "grouped_rnn: w_hh[0] must be 2-D, got ", w_hh[0].sizes());
  p.KL = n_lstm;
  p.Kx = static_cast<int64_t>(xs.size());
  p.T = x.size(0);
  p.B = x.size(1);
  p.I = x.size(2);
  p.H = w_hh[0].size(1);
  TORCH_CHECK(0 <= p.KL && p.KL <= p.K, "grouped_rnn: n_lstm = ", p.KL, " outside [0, ", p.K, "]");
  TORCH_CHECK(p.Kx == 1 || p.Kx == p.K, "grouped_rnn: x holds ", p.Kx, " inputs for ", p.K, " units");
  TORCH_CHECK(p.T >= 1 && p.B >= 1 && p.I >= 1 && p.H >= 1, "grouped_rnn: empty sizes are not supported");
  p.goff.resize(p.K);
  p.gh.resize(p.K);
  p.rev.resize(p.K);
  int64_t off = 0;
  for (int64_t k = 0; k < p.K; ++k) {
    p.gh[k] = (k < p.KL ? 4 : 1) * p.H;
    p.goff[k] = off;
    off += p.gh[k];
    p.rev[k] = reverse[k] != 0;
    TORCH_CHECK(w_ih[k].dim() == 2 && w_ih[k].size(0) == p.gh[k] && w_ih[k].size(1) == p.I, "grouped_rnn: w_ih[", k,
                "] must be (", p.gh[k], ", ", p.I, "), got ", w_ih[k].sizes());
    TORCH_CHECK(w_hh[k].dim() == 2 && w_hh[k].size(0) == p.gh[k] && w_hh[k].size(1) == p.H, "grouped_rnn: w_hh[", k,
                "] must be (", p.gh[k], ", ", p.H, "), got ", w_hh[k].sizes());
  }
  p.G = off;
  return p;
}

// The dtype of the weights, biases, cell states and gate workspace for inputs of x's dtype: x's own, or float32
// for bfloat16 inputs (the CPU kernel's bf16 products: bf16 operands, float32 weights, state and sums).
inline at::ScalarType param_dtype(const Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? at::kFloat : x.scalar_type();
}

inline void check_same(const Tensor& a, const Tensor& ref, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(a.scalar_type() == dtype, "grouped_rnn: ", name, " has dtype ", a.scalar_type(), ", expected ", dtype,
              " for x of dtype ", ref.scalar_type());
  TORCH_CHECK(a.device() == ref.device(), "grouped_rnn: ", name, " is on ", a.device(), ", x on ", ref.device());
}

// every tensor of a list on x's device and of x's dtype (inputs) or of param_dtype(x) (parameters)
inline void check_list(at::TensorList ts, const Tensor& ref, const char* name, bool param) {
  for (const auto& t : ts) check_same(t, ref, name, param ? param_dtype(ref) : ref.scalar_type());
}

// unit k's bias b_ih[k] + b_hh[k] (g_k,) each: the lists hold one tensor per unit
inline void check_biases(const Plan& p, at::TensorList b_ih, at::TensorList b_hh, const Tensor& x) {
  TORCH_CHECK(static_cast<int64_t>(b_ih.size()) == p.K && static_cast<int64_t>(b_hh.size()) == p.K,
              "grouped_rnn: one b_ih and one b_hh per unit");
  for (int64_t k = 0; k < p.K; ++k)
    TORCH_CHECK(b_ih[k].dim() == 1 && b_ih[k].size(0) == p.gh[k] && b_hh[k].dim() == 1 && b_hh[k].size(0) == p.gh[k],
                "grouped_rnn: b_ih[", k, "] and b_hh[", k, "] must be (", p.gh[k], ",)");
  check_list(b_ih, x, "b_ih", true);
  check_list(b_hh, x, "b_hh", true);
}

// backward: the output gradient, the weights and the state forward saved must match x and the plan
inline void check_saved(const Plan& p, at::TensorList xs, const Tensor& grad_hs_, at::TensorList w_ih_,
                        at::TensorList w_hh_, const Tensor& hs_, const Tensor& cs_, const Tensor& gates_) {
  const Tensor& x_ = xs[0];
  check_list(xs, x_, "x", false);
  check_list(w_ih_, x_, "w_ih", true);
  check_list(w_hh_, x_, "w_hh", true);
  check_same(grad_hs_, x_, "grad_hs", x_.scalar_type());
  check_same(hs_, x_, "hs", x_.scalar_type());
  check_same(cs_, x_, "cs", param_dtype(x_));
  check_same(gates_, x_, "gates", param_dtype(x_));
  TORCH_CHECK(grad_hs_.sizes() == hs_.sizes() && hs_.sizes() == at::IntArrayRef({p.K, p.T, p.B, p.H}),
              "grouped_rnn_backward: grad_hs and hs must be (K, T, B, H)");
  TORCH_CHECK(cs_.sizes() == at::IntArrayRef({p.KL, p.T, p.B, p.H}), "grouped_rnn_backward: bad cs shape");
  TORCH_CHECK(gates_.dim() == 1 && gates_.size(0) == p.T * p.B * p.G, "grouped_rnn_backward: bad gates shape");
}

// contiguous copies (no-ops for parameters) of a list
inline std::vector<Tensor> contiguous_all(at::TensorList ts) {
  std::vector<Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}
