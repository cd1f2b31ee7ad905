// The kernels of elementwise.cu and the host-side launch arithmetic they share with it, in a header
// of their own so that tests/emu/test_elementwise_emu.cpp can compile this same source for the
// CPU (tests/emu/simt_emu.h). See elementwise.cu for the ops, shapes and scheme.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#if defined(MH_SIMT_EMU)
#include "simt_emu.h"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include "backend/cuda/kernels/dtype_convert.cuh"

namespace mh::cuda {

namespace {

#if defined(MH_SIMT_EMU)
using std::min;  // the device's min(int64_t, int64_t), on the host
#endif

constexpr int kEwThreads = 256;
constexpr int kEwVec = 4;
constexpr int64_t kEwMaxBlocks = 1 << 16;

template <typename T, int V>
struct alignas(sizeof(T) * V) EwPack {
  T v[V];
};

// f[0..V) = p[0..V) in fp32; V > 1 is one aligned vector load.
template <int V, typename T>
__device__ __forceinline__ void ew_load(const T* p, float (&f)[V]) {
  if constexpr (V == 1) {
    f[0] = to_f32(*p);
  } else {
    const EwPack<T, V> pk = *reinterpret_cast<const EwPack<T, V>*>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = to_f32(pk.v[k]);
  }
}

template <int V, typename T>
__device__ __forceinline__ void ew_store(T* p, const float (&f)[V]) {
  if constexpr (V == 1) {
    *p = from_f32<T>(f[0]);
  } else {
    EwPack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = from_f32<T>(f[k]);
    *reinterpret_cast<EwPack<T, V>*>(p) = pk;
  }
}

// y = x Φ(x), Φ the standard normal CDF.
__device__ __forceinline__ float ew_gelu(float x) {
  return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
}
// d/dx [x Φ(x)] = Φ(x) + x φ(x)
__device__ __forceinline__ float ew_gelu_grad(float x) {
  const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
  const float pdf = expf(-0.5f * x * x) * 0.3989422804014327f;  // 1/√(2π)
  return cdf + x * pdf;
}

// Runs op.apply<V>(i) over elements [0, n): packs of kEwVec when `vec`, then the tail one by one.
template <typename Op>
__global__ void __launch_bounds__(kEwThreads) ew_map_kernel(Op op, int64_t n, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if (vec) {
    const int64_t packs = n / kEwVec;
    for (int64_t p = t; p < packs; p += stride) op.template apply<kEwVec>(p * kEwVec);
    scalar_begin = packs * kEwVec;
  }
  for (int64_t i = scalar_begin + t; i < n; i += stride) op.template apply<1>(i);
}

template <typename T, typename B>
struct AddBiasOp {
  T* y;           // [N, F] +=
  const B* bias;  // [F]
  int64_t f;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(y + i, v);
    const int64_t col = i % f;  // a pack never straddles rows (F % V == 0)
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] += to_f32(bias[col + k]);
    ew_store<V>(y + i, v);
  }
};

template <typename T>
struct AddOp {
  const T* a;  // may alias out: each element is read before it is written, by the same thread
  const T* b;
  T* out;
  template <int V>
  __device__ void apply(int64_t i) const {
    float va[V], vb[V];
    ew_load<V>(a + i, va);
    ew_load<V>(b + i, vb);
#pragma unroll
    for (int k = 0; k < V; ++k) va[k] += vb[k];
    ew_store<V>(out + i, va);
  }
};

template <typename T>
struct ScaleOp {
  T* x;
  float s;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(x + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] *= s;
    ew_store<V>(x + i, v);
  }
};

template <typename S, typename D>
struct CastOp {
  const S* src;
  D* dst;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(src + i, v);
    ew_store<V>(dst + i, v);
  }
};

template <typename T>
struct ActFwdOp {
  const T* x;
  T* y;
  bool gelu;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(x + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = gelu ? ew_gelu(v[k]) : (v[k] > 0.f ? v[k] : 0.f);
    ew_store<V>(y + i, v);
  }
};

template <typename T>
struct ActBwdOp {
  const T* dy;
  const T* x;
  T* dx;  // may alias dy
  bool gelu;
  template <int V>
  __device__ void apply(int64_t i) const {
    float g[V], v[V];
    ew_load<V>(dy + i, g);
    ew_load<V>(x + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) g[k] = gelu ? g[k] * ew_gelu_grad(v[k]) : (v[k] > 0.f ? g[k] : 0.f);
    ew_store<V>(dx + i, g);
  }
};

constexpr int kBgCols = 32;  // columns per block (one warp wide)
constexpr int kBgRows = 8;   // row lanes per block

// dbias[c] += Σ_{r in this block's chunk} dy[r, c]. Block (32, 8); grid (⌈F/32⌉, chunks).
template <typename T, typename G>
__global__ void __launch_bounds__(kBgCols* kBgRows)
    bias_grad_kernel(const T* __restrict__ dy,  // [N, F]
                     G* __restrict__ dbias,     // [F] +=
                     int64_t n, int64_t f, int64_t rows_per_chunk) {
  __shared__ float part[kBgRows][kBgCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBgCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(n, r0 + rows_per_chunk);
  float acc = 0.f;
  if (c < f)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kBgRows) acc += to_f32(dy[r * f + c]);
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || c >= f) return;
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < kBgRows; ++k) s += part[k][threadIdx.x];
  if constexpr (std::is_same_v<G, float>) {
    if (gridDim.y == 1)
      dbias[c] += s;
    else
      atomicAdd(dbias + c, s);
  } else {
    dbias[c] = from_f32<G>(to_f32(dbias[c]) + s);  // the launcher guarantees one chunk
  }
}

// The same sums for an F32 dbias, read by rows: each warp walks rows, each lane adds its
// 4-element chunks of a row (16 bytes of fp32, 8 of bf16/fp16, one vector load each, a warp
// reading whole 512- or 256-byte rows) into registers, the block's warps meet in shared memory,
// and the block adds each column with one atomicAdd (plain += with one block). Needs F % 4 == 0,
// F ≤ kBgRowMaxF and aligned rows. bias_grad_kernel reads 2-byte columns of 32 at a stride of a
// whole row instead: a Linear layer's bias gradient, after its weight gradient's GEMM, on every
// Linear of every step (`linear_bwd_params`).
constexpr int kBgRowWarps = 4;
constexpr int kBgRowChunks = 16;  // 4-element chunks per lane: F ≤ 4 · 32 · 16 = 2048 (d_ff)
constexpr int64_t kBgRowMaxF = 4 * 32 * kBgRowChunks;
constexpr int kBgRowBlocksPerSm = 4;

template <typename T>
__global__ void __launch_bounds__(32 * kBgRowWarps)
    bias_grad_rows_kernel(const T* __restrict__ dy,   // [N, F]
                          float* __restrict__ dbias,  // [F] +=
                          int64_t n, int64_t f) {
  __shared__ float4 part[kBgRowWarps][kBgRowMaxF / 4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float acc[kBgRowChunks][4] = {};
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kBgRowWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kBgRowWarps + warp; row < n; row += warps) {
#pragma unroll
    for (int i = 0; i < kBgRowChunks; ++i) {
      const int64_t j = 4 * lane + 128 * i;
      if (j >= f) break;
      float v[4];
      ew_load<4>(dy + row * f + j, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][k] += v[k];
    }
  }
#pragma unroll
  for (int i = 0; i < kBgRowChunks; ++i) {
    const int64_t j = 4 * lane + 128 * i;
    if (j >= f) break;
    part[warp][j / 4] = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < f; c += 32 * kBgRowWarps) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kBgRowWarps; ++w) s += reinterpret_cast<const float*>(part[w])[c];
    if (gridDim.x == 1)
      dbias[c] += s;
    else
      atomicAdd(dbias + c, s);
  }
}

// ---- host-side launch arithmetic (shared by the launchers and the emulation test) -------------

inline bool ew_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks of kEwThreads for ew_map_kernel over n elements (packs of kEwVec when vec).
inline unsigned ew_grid(int64_t n, bool vec) {
  const int64_t work = vec ? (n + kEwVec - 1) / kEwVec : n;
  return static_cast<unsigned>(
      std::min<int64_t>((work + kEwThreads - 1) / kEwThreads, kEwMaxBlocks));
}

// Whether bias_grad takes bias_grad_rows_kernel (an F32 dbias, F % 4 == 0 and ≤ kBgRowMaxF,
// `aligned`: dy's rows start on 4-element boundaries), and its blocks: kBgRowBlocksPerSm per
// SM, fewer when there are fewer rows' worth of warps.
struct BiasGradRows {
  bool use;
  unsigned blocks;
};
inline BiasGradRows bias_grad_rows_plan(int64_t n, int64_t f, bool f32_dbias, bool aligned,
                                        int sms) {
  const bool use = f32_dbias && aligned && f % 4 == 0 && f <= kBgRowMaxF;
  const int64_t cap = std::max<int64_t>(1, int64_t{kBgRowBlocksPerSm} * sms);
  const int64_t want = (n + kBgRowWarps - 1) / kBgRowWarps;
  return {use, static_cast<unsigned>(std::clamp<int64_t>(want, 1, cap))};
}

// bias_grad_kernel's grid (col_blocks, chunks) and rows per chunk for dy [n, f] (n, f > 0), on a
// GPU of `sms` multiprocessors. An F32 dbias is summed by chunks of rows with atomics; a BF16/F16
// dbias gets one chunk.
struct BiasGradGrid {
  int64_t col_blocks, chunks, rows_per_chunk;
};
inline BiasGradGrid bias_grad_grid(int64_t n, int64_t f, bool f32_dbias, int sms) {
  const int64_t col_blocks = (f + kBgCols - 1) / kBgCols;
  int64_t chunks = 1;
  if (f32_dbias) {
    // Enough blocks to fill the GPU a few times over, each summing at least 64 rows.
    const int64_t want = std::max<int64_t>(1, 4 * sms / col_blocks);
    chunks = std::clamp<int64_t>(want, 1, std::min<int64_t>((n + 63) / 64, 65535));
  }
  const int64_t rows_per_chunk = (n + chunks - 1) / chunks;
  chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
  return {col_blocks, chunks, rows_per_chunk};
}

}  // namespace

}  // namespace mh::cuda
