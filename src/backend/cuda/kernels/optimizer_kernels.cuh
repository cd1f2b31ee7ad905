// The optimizer kernels (see optimizer.cu for what they compute), in a header of their own so
// that tests/emu/test_optimizer_emu.cpp can run this same source on the CPU (simt_emu.h), with
// the launchers' own constants and grid sizes (adam_consts, adam_grid, sum_squares_blocks).
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

namespace mh::cuda {

namespace {

constexpr int kAdamThreads = 256;
constexpr int kAdamMaxChunks = 256;  // blocks per tensor (grid x), each grid-strides
constexpr int kSumThreads = 256;
constexpr int kSumMaxBlocks = 1024;

struct AdamConsts {
  float b1, b2, one_minus_b1, one_minus_b2, grad_scale, eps, wd, step_size, inv_sqrt_bc2, lr;
};

__global__ void __launch_bounds__(kAdamThreads)
    adam_multi_kernel(float* const* __restrict__ params,  // [count] → [sizes[t]]
                      float* const* __restrict__ grads, float* const* __restrict__ ms,
                      float* const* __restrict__ vs,
                      const int64_t* __restrict__ sizes,  // [count]
                      void* const* __restrict__ copies,   // [count] or null; entries may be null
                      bool copies_bf16,                   // else fp16
                      AdamConsts c) {
  const int t = blockIdx.y;
  void* const copy = copies ? copies[t] : nullptr;
  const int64_t size = sizes[t];
  float* __restrict__ p = params[t];
  const float* __restrict__ g = grads[t];
  float* __restrict__ m = ms[t];
  float* __restrict__ v = vs[t];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += stride) {
    const float gi = g[i] * c.grad_scale;
    const float mi = c.b1 * m[i] + c.one_minus_b1 * gi;
    const float vi = c.b2 * v[i] + c.one_minus_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i];
    const float np =
        pi - (c.step_size * mi / (sqrtf(vi) * c.inv_sqrt_bc2 + c.eps) + c.lr * c.wd * pi);
    p[i] = np;
    if (copy) {
      if (copies_bf16)
        static_cast<__nv_bfloat16*>(copy)[i] = from_f32<__nv_bfloat16>(np);
      else
        static_cast<__half*>(copy)[i] = from_f32<__half>(np);
    }
  }
}

// Adds the block's per-thread partial sums into *out: warp shuffles, one float per warp in
// shared memory, then one double atomicAdd per block (none when the block's sum is 0, as the
// blocks of short tensors in sum_squares_multi_kernel mostly are).
__device__ inline void block_sum_add(float acc, double* out) {
  __shared__ float partial[kSumThreads / 32];
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < kSumThreads / 32 ? partial[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0 && acc != 0.f) atomicAdd(out, static_cast<double>(acc));
  }
}

template <typename T>
__global__ void __launch_bounds__(kSumThreads) sum_squares_kernel(const T* __restrict__ x,  // [n]
                                                                  int64_t n,
                                                                  double* out) {  // [1] +=
  float acc = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float xi = to_f32(x[i]);
    acc += xi * xi;
  }
  block_sum_add(acc, out);
}

// Σ x² over a list of F32 tensors in one launch (the gradient norm over every parameter): block
// b sums chunk (b − first_block[t]) of tensor t, the t with first_block[t] <= b <
// first_block[t + 1] (a binary search over count entries). Chunks of `chunk` elements give every
// block the same work however unequal the tensors are (an embedding and a LayerNorm bias).
__global__ void __launch_bounds__(kSumThreads)
    sum_squares_multi_kernel(const float* const* __restrict__ xs,      // [count] → [sizes[t]]
                             const int64_t* __restrict__ sizes,        // [count]
                             const int64_t* __restrict__ first_block,  // [count + 1]
                             int count, int64_t chunk,
                             double* out) {  // [1] +=
  const int64_t b = blockIdx.x;
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first_block[mid] <= b)
      lo = mid;
    else
      hi = mid - 1;
  }
  const float* __restrict__ x = xs[lo];
  const int64_t begin = (b - first_block[lo]) * chunk;
  const int64_t end = begin + chunk < sizes[lo] ? begin + chunk : sizes[lo];
  float acc = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += x[i] * x[i];
  block_sum_add(acc, out);
}

// The kernel's constants, computed the same way as CpuBackend::adam_step (host code).
inline AdamConsts adam_consts(double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t step, double grad_scale) {
  const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
  AdamConsts c;
  c.b1 = static_cast<float>(beta1);
  c.b2 = static_cast<float>(beta2);
  c.one_minus_b1 = 1.f - c.b1;
  c.one_minus_b2 = 1.f - c.b2;
  c.grad_scale = static_cast<float>(grad_scale);
  c.eps = static_cast<float>(eps);
  c.wd = static_cast<float>(weight_decay);
  c.step_size = static_cast<float>(lr / bc1);
  c.inv_sqrt_bc2 = static_cast<float>(1 / std::sqrt(bc2));
  c.lr = static_cast<float>(lr);
  return c;
}

// adam_multi_kernel's grid: (chunks of the largest tensor, capped; tensors), kAdamThreads each.
inline dim3 adam_grid(int count, int64_t max_size) {
  const int64_t chunks = (max_size + kAdamThreads - 1) / kAdamThreads;
  return dim3(static_cast<unsigned>(std::min<int64_t>(chunks, kAdamMaxChunks)),
              static_cast<unsigned>(count));
}

// sum_squares_kernel's blocks for n elements, kSumThreads each.
inline int sum_squares_blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kSumThreads - 1) / kSumThreads, kSumMaxBlocks));
}

}  // namespace

}  // namespace mh::cuda
