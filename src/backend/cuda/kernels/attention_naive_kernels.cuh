// The masked softmax kernels of the naive attention (see attention_naive.cu for what they
// compute), in a header of their own so that tests/emu/test_attention_naive_emu.cpp can run this
// same source on the CPU (simt_emu.h), with the launchers' own grid size (sm_blocks).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#if defined(MH_SIMT_EMU)
#include "simt_emu.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/kernels/dtype_convert.cuh"
#include "core/error.h"

namespace mh::cuda {

namespace {

#if defined(MH_SIMT_EMU)
using std::max;  // the device's integer min and max
using std::min;
#endif

constexpr int kSmThreads = 256;
constexpr int kSmRowsPerBlock = kSmThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kSmThreads)
    masked_softmax_fwd_kernel(T* scores,                            // [B, H, Lq, Lk] in place
                              const int32_t* __restrict__ key_len,  // [B]
                              int64_t rows, int64_t heads, int64_t lq, int lk, bool causal,
                              float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSmRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  const int64_t i = row % lq, b = row / (lq * heads);
  int n = min(max(key_len[b], 0), lk);
  if (causal && i + 1 < n) n = static_cast<int>(i + 1);
  T* x = scores + row * lk;
  float m = -INFINITY;
  for (int j = lane; j < n; j += 32) m = fmaxf(m, to_f32(x[j]) * scale);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float s = 0.f;
  for (int j = lane; j < n; j += 32) s += expf(to_f32(x[j]) * scale - m);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const float inv = n > 0 ? 1.f / s : 0.f;
  for (int j = lane; j < lk; j += 32)
    x[j] = from_f32<T>(j < n ? expf(to_f32(x[j]) * scale - m) * inv : 0.f);
}

template <typename T>
__global__ void __launch_bounds__(kSmThreads)
    masked_softmax_bwd_kernel(const T* __restrict__ probs,  // [B, H, Lq, Lk]
                              T* grad,                      // [B, H, Lq, Lk]: dP in, dS out
                              int64_t rows, int lk, float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSmRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const T* p = probs + row * lk;
  T* g = grad + row * lk;
  float dot = 0.f;  // Σ_j dP_j P_j
  for (int j = lane; j < lk; j += 32) {
    const float pj = to_f32(p[j]);
    if (pj != 0.f) dot += to_f32(g[j]) * pj;
  }
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  for (int j = lane; j < lk; j += 32) {
    const float pj = to_f32(p[j]);
    g[j] = from_f32<T>(pj != 0.f ? pj * (to_f32(g[j]) - dot) * scale : 0.f);
  }
}

// Blocks of kSmThreads (one warp per row) for `rows` rows (host code).
inline unsigned sm_blocks(int64_t rows) {
  const int64_t blocks = (rows + kSmRowsPerBlock - 1) / kSmRowsPerBlock;
  MH_CHECK(blocks <= 0x7fffffff, "masked softmax: ", rows, " rows");
  return static_cast<unsigned>(blocks);
}

}  // namespace

}  // namespace mh::cuda
