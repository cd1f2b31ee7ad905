// The fused softmax + cross-entropy kernel (see softmax_xent.cu for the scheme) and its launch
// size, in a header of its own so that tests/emu/test_softmax_xent_emu.cpp can run this same
// source on the CPU through the SIMT emulation (tests/emu/simt_emu.h).
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
#include <cstring>
#include "backend/cuda/kernels/dtype_convert.cuh"

namespace mh::cuda {

namespace {

constexpr int kXentThreads = 512;
constexpr int kXentWarps = kXentThreads / 32;

// (m, s) ← merge of two online-softmax states: s = Σ exp(x − m). An empty state is (−inf, 0).
__device__ __forceinline__ void xent_merge(float& m, float& s, float m2, float s2) {
  if (m2 > m) {
    s = s * expf(m - m2) + s2;
    m = m2;
  } else if (m2 != -INFINITY) {
    s += s2 * expf(m2 - m);
  }
}

// Rows move in 16-byte vectors (8 bf16/fp16 or 4 fp32 per load and store; one 2-byte load per
// thread left the memory system mostly idle) when V is a multiple of the vector width and both
// buffers are 16-byte aligned, which makes every row aligned. Otherwise element by element.
template <typename T>
constexpr int kXentVec = 16 / static_cast<int>(sizeof(T));
template <typename T>
__host__ __device__ inline bool xent_vectorized(const void* logits, const void* dlogits, int v) {
  return v % kXentVec<T> == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(dlogits) % 16 == 0;
}
template <typename T>
__device__ __forceinline__ void xent_load(const T* p, float (&out)[kXentVec<T>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  T e[kXentVec<T>];
  memcpy(static_cast<void*>(e), &raw, sizeof(raw));  // (void*: T has no trivial ctor)
#pragma unroll
  for (int k = 0; k < kXentVec<T>; ++k) out[k] = to_f32(e[k]);
}
template <typename T>
__device__ __forceinline__ void xent_store(T* p, const float (&in)[kXentVec<T>]) {
  T e[kXentVec<T>];
#pragma unroll
  for (int k = 0; k < kXentVec<T>; ++k) e[k] = from_f32<T>(in[k]);
  uint4 raw;
  memcpy(&raw, e, sizeof(raw));
  *reinterpret_cast<uint4*>(p) = raw;
}

template <typename T>
__global__ void __launch_bounds__(kXentThreads)
    softmax_xent_kernel(const T* __restrict__ logits,        // [N, V]
                        const int32_t* __restrict__ labels,  // [N]
                        int64_t n, int v, int64_t pad_id, float eps, float grad_scale,
                        T* dlogits,      // [N, V] or nullptr
                        double* sums) {  // [3] +=
  __shared__ float sh_m[kXentWarps], sh_s[kXentWarps], sh_x[kXentWarps];
  __shared__ float row_m, row_s;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float on = 1.f - eps, off = eps / static_cast<float>(v);
  double loss_acc = 0, nll_acc = 0, tok_acc = 0;  // thread 0 only
  constexpr int kVec = kXentVec<T>;
  const bool vec = xent_vectorized<T>(logits, dlogits, v);

  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* x = logits + row * v;
    T* dx = dlogits ? dlogits + row * v : nullptr;
    const int32_t y = labels[row];
    if (y == pad_id || y < 0 || y >= v) {  // uniform over the block: no barrier is skipped
      if (dx && vec) {
        const float zeros[kVec] = {};
        for (int j = tid * kVec; j < v; j += kXentThreads * kVec) xent_store(dx + j, zeros);
      } else if (dx) {
        for (int j = tid; j < v; j += kXentThreads) dx[j] = from_f32<T>(0.f);
      }
      if (tid == 0 && y != pad_id) loss_acc = nll_acc = nan("");
      continue;
    }

    // Pass 1: online max / Σ exp and Σ x over this thread's strided elements.
    float m = -INFINITY, s = 0.f, sx = 0.f;
    if (vec) {
      // Per vector: its max first, so the running sum is rescaled once per vector, not per
      // element that raises the max.
      for (int j = tid * kVec; j < v; j += kXentThreads * kVec) {
        float xv[kVec];
        xent_load(x + j, xv);
        float vm = xv[0];
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          sx += xv[k];
          vm = fmaxf(vm, xv[k]);
        }
        if (vm > m) {
          s *= expf(m - vm);  // 0 while m is −inf (s is 0 then too)
          m = vm;
        }
        if (m != -INFINITY) {
#pragma unroll
          for (int k = 0; k < kVec; ++k) s += expf(xv[k] - m);
        }
      }
    } else {
      for (int j = tid; j < v; j += kXentThreads) {
        const float xj = to_f32(x[j]);
        sx += xj;
        if (xj > m) {
          s = s * expf(m - xj) + 1.f;
          m = xj;
        } else if (xj != -INFINITY) {
          s += expf(xj - m);
        }
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
      sx += __shfl_xor_sync(0xffffffffu, sx, o);
      xent_merge(m, s, m2, s2);
    }
    if (lane == 0) {
      sh_m[warp] = m;
      sh_s[warp] = s;
      sh_x[warp] = sx;
    }
    __syncthreads();
    if (warp == 0) {
      m = lane < kXentWarps ? sh_m[lane] : -INFINITY;
      s = lane < kXentWarps ? sh_s[lane] : 0.f;
      sx = lane < kXentWarps ? sh_x[lane] : 0.f;
      for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        sx += __shfl_xor_sync(0xffffffffu, sx, o);
        xent_merge(m, s, m2, s2);
      }
      if (lane == 0) {
        row_m = m;
        row_s = s;
        const double lse = static_cast<double>(m) + log(static_cast<double>(s));
        const double nll = lse - static_cast<double>(to_f32(x[y]));
        nll_acc += nll;
        loss_acc += static_cast<double>(on) * nll +
                    static_cast<double>(eps) * (lse - static_cast<double>(sx) / v);
        tok_acc += 1;
      }
    }
    __syncthreads();
    const float mx = row_m, sum = row_s;

    // Pass 2: d loss / d x_j = grad_scale · (softmax_j − target_j).
    if (dx) {
      const float a = grad_scale / sum, b = grad_scale * off, c = grad_scale * on;
      if (vec) {
        for (int j = tid * kVec; j < v; j += kXentThreads * kVec) {
          float xv[kVec];
          xent_load(x + j, xv);  // before the store: dx may be x
#pragma unroll
          for (int k = 0; k < kVec; ++k) {
            xv[k] = expf(xv[k] - mx) * a - b;
            if (j + k == y) xv[k] -= c;
          }
          xent_store(dx + j, xv);
        }
      } else {
        for (int j = tid; j < v; j += kXentThreads) {
          float d = expf(to_f32(x[j]) - mx) * a - b;
          if (j == y) d -= c;
          dx[j] = from_f32<T>(d);
        }
      }
    }
    __syncthreads();  // row_* and sh_* are rewritten by the next row
  }
  if (tid == 0 && (tok_acc > 0 || loss_acc != 0 || nll_acc != 0)) {
    atomicAdd(sums + 0, loss_acc);
    atomicAdd(sums + 1, nll_acc);
    atomicAdd(sums + 2, tok_acc);
  }
}

// Blocks for n rows: one resident wave (sms · per_sm blocks, per_sm from the occupancy API), fewer
// when there are fewer rows; every block loops over rows, so more blocks would only add a tail.
inline int xent_blocks(int64_t n, int sms, int per_sm) {
  const int64_t wave = static_cast<int64_t>(sms) * std::max(per_sm, 1);
  return static_cast<int>(std::min<int64_t>(n, wave));
}

}  // namespace

}  // namespace mh::cuda
