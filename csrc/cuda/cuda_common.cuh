// Helpers shared by the CUDA kernels of the extension (csrc/cuda/grouped_rnn_cuda.cu, darts_rnn_cuda.cu):
// the logistic function and the launch geometry of their element-wise kernels (grid-stride loops, so the
// grid is capped and any size is covered).
#pragma once

#include <algorithm>
#include <cstdint>

namespace emodarts {
namespace cuda_common {

template <typename T>
__device__ __forceinline__ T sigm(T x) {
  return T(1) / (T(1) + exp(-x));
}

constexpr int kThreads = 256;  // threads per block of the element-wise kernels

// blocks for n elements at kThreads per block, at least 1 and at most 65535 * 8 (the kernels loop over the rest)
inline int64_t blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(b, 65535 * 8));
}

}  // namespace cuda_common
}  // namespace emodarts
