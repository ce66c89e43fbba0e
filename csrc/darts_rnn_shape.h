// Shapes and checks of the DARTS-cell ops, shared by the CPU (csrc/darts_rnn.cpp) and CUDA
// (csrc/cuda/darts_rnn_cuda.cu) implementations. Included inside each file's anonymous namespace.
#pragma once

struct Dims {
  int64_t T, B, H, S, E;
};

inline void check_same(const Tensor& a, const Tensor& ref, const char* name) {
  TORCH_CHECK(a.scalar_type() == ref.scalar_type(), "darts_rnn: ", name, " has dtype ", a.scalar_type(),
              ", x_proj has ", ref.scalar_type());
  TORCH_CHECK(a.device() == ref.device(), "darts_rnn: ", name, " is on ", a.device(), ", x_proj on ", ref.device());
}

// shapes of x_proj (T, B, 2H) (or, in backward, of hs (T, B, H): half = true), h0, w0h, ws, probs
inline Dims check_dims(const Tensor& seq, bool half, const Tensor& h0, const Tensor& w0h, const Tensor& ws,
               const Tensor& probs) {
  TORCH_CHECK(seq.dim() == 3, "darts_rnn: ", half ? "hs" : "x_proj", " must be 3-D, got ", seq.sizes());
  TORCH_CHECK(h0.dim() == 2, "darts_rnn: h0 must be (B, H), got ", h0.sizes());
  TORCH_CHECK(ws.dim() == 3, "darts_rnn: ws must be (S, H, 2H), got ", ws.sizes());
  Dims d;
  d.T = seq.size(0);
  d.B = seq.size(1);
  d.H = h0.size(1);
  d.S = ws.size(0);
  d.E = d.S * (d.S + 1) / 2;
  TORCH_CHECK(d.T >= 1 && d.B >= 1 && d.H >= 1 && d.S >= 1, "darts_rnn: empty sizes are not supported (T = ", d.T,
              ", B = ", d.B, ", H = ", d.H, ", S = ", d.S, ")");
  TORCH_CHECK(seq.size(2) == (half ? d.H : 2 * d.H), "darts_rnn: ", half ? "hs" : "x_proj", " has ", seq.size(2),
              " features, expected ", half ? d.H : 2 * d.H);
  TORCH_CHECK(h0.size(0) == d.B, "darts_rnn: h0 has ", h0.size(0), " rows, batch is ", d.B);
  TORCH_CHECK(w0h.dim() == 2 && w0h.size(0) == d.H && w0h.size(1) == 2 * d.H, "darts_rnn: w0h must be (", d.H,
              ", ", 2 * d.H, "), got ", w0h.sizes());
  TORCH_CHECK(ws.size(1) == d.H && ws.size(2) == 2 * d.H, "darts_rnn: ws must be (S, ", d.H, ", ", 2 * d.H,
              "), got ", ws.sizes());
  TORCH_CHECK(probs.dim() == 2 && probs.size(0) == d.E && probs.size(1) == 4, "darts_rnn: probs must be (", d.E,
              ", 4) for ", d.S, " nodes, got ", probs.sizes());
  check_same(h0, seq, "h0");
  check_same(w0h, seq, "w0h");
  check_same(ws, seq, "ws");
  check_same(probs, seq, "probs");
  return d;
}

// backward: the output gradient and the state forward saved must match hs and the dims
inline void check_saved(const Dims& d, const Tensor& grad_hs_, const Tensor& hs_, const Tensor& states_,
                        const Tensor& pre0_, const Tensor& pre_) {
  check_same(grad_hs_, hs_, "grad_hs");
  check_same(states_, hs_, "states");
  check_same(pre0_, hs_, "pre0");
  check_same(pre_, hs_, "pre");
  TORCH_CHECK(grad_hs_.sizes() == hs_.sizes(), "darts_rnn_backward: grad_hs must be (T, B, H) like hs");
  TORCH_CHECK(states_.sizes() == at::IntArrayRef({d.T, d.S + 1, d.B, d.H}), "darts_rnn_backward: bad states shape ",
              states_.sizes());
  TORCH_CHECK(pre0_.sizes() == at::IntArrayRef({d.T, d.B, 2 * d.H}), "darts_rnn_backward: bad pre0 shape ",
              pre0_.sizes());
  TORCH_CHECK(pre_.sizes() == at::IntArrayRef({d.T, d.E, d.B, 2 * d.H}), "darts_rnn_backward: bad pre shape ",
              pre_.sizes());
}
