// The LayerNorm kernels (see layernorm.cu for the scheme) and the host-side sizes their launchers
// use, in a header of their own so that tests/emu/test_layernorm_emu.cpp can run this same source
// on the CPU through the SIMT emulation (tests/emu/simt_emu.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#if defined(MH_SIMT_EMU)
#include "simt_emu.h"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include "backend/cuda/kernels/dtype_convert.cuh"
#include "core/philox.h"

namespace mh::cuda {

namespace {

constexpr int kLnWarps = 4;  // rows per block in the row kernels
constexpr int kLnThreads = 32 * kLnWarps;
constexpr int64_t kLnMaxBlocks = 1 << 16;
constexpr int kLnCols = 32;  // column kernel: columns per block
constexpr int kLnRows = 8;   // column kernel: row lanes per block
// The fused backward (layernorm_bwd_fused_kernel): 4-element chunks per lane kept in registers,
// so rows of up to 4 · 32 · 8 = 1024 elements; blocks per SM it is launched with.
constexpr int kLnBwdChunks = 8;
constexpr int64_t kLnBwdFusedMaxD = 4 * 32 * kLnBwdChunks;
constexpr int kLnBwdBlocksPerSm = 4;

template <typename T>
struct alignas(sizeof(T) * 4) LnPack {
  T v[4];
};

template <typename T>
__device__ __forceinline__ void ln_load4(const T* p, float (&f)[4]) {
  const LnPack<T> pk = *reinterpret_cast<const LnPack<T>*>(p);
#pragma unroll
  for (int k = 0; k < 4; ++k) f[k] = to_f32(pk.v[k]);
}

template <typename T>
__device__ __forceinline__ void ln_store4(T* p, const float (&f)[4]) {
  LnPack<T> pk;
#pragma unroll
  for (int k = 0; k < 4; ++k) pk.v[k] = from_f32<T>(f[k]);
  *reinterpret_cast<LnPack<T>*>(p) = pk;
}

__device__ __forceinline__ float ln_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// fn(j, x[j]) for this lane's share of a row of d elements.
template <typename T, typename Fn>
__device__ __forceinline__ void ln_row_each(const T* row, int64_t d, bool vec, int lane, Fn&& fn) {
  if (vec) {
    for (int64_t j = 4 * lane; j < d; j += 4 * 32) {
      float v[4];
      ln_load4(row + j, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) fn(j + k, v[k]);
    }
  } else {
    for (int64_t j = lane; j < d; j += 32) fn(j, to_f32(row[j]));
  }
}

// fn(i, j) for this lane's 4-element chunks of a row of d (d % 4 == 0, at most kLnBwdChunks
// chunks): chunk i starts at column j = 4·lane + 128·i. Unrolled, so that fn can index register
// arrays by i.
template <typename Fn>
__device__ __forceinline__ void ln_chunks(int64_t d, int lane, Fn&& fn) {
#pragma unroll
  for (int i = 0; i < kLnBwdChunks; ++i) {
    const int64_t j = 4 * lane + 128 * i;
    if (j >= d) break;
    fn(i, j);
  }
}

template <typename T, typename W>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_fwd_kernel(const T* __restrict__ x,       // [N, D]
                         const W* __restrict__ weight,  // [D]
                         const W* __restrict__ bias,    // [D]
                         T* __restrict__ y,             // [N, D] =
                         float* __restrict__ mean,      // [N] =
                         float* __restrict__ rstd,      // [N] =
                         int64_t n, int64_t d, float eps, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kLnWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kLnWarps + threadIdx.x / 32; row < n;
       row += warps) {
    const T* xr = x + row * d;
    float s = 0.f;
    ln_row_each(xr, d, vec, lane, [&](int64_t, float v) { s += v; });
    const float mu = ln_warp_sum(s) / static_cast<float>(d);
    float q = 0.f;
    ln_row_each(xr, d, vec, lane, [&](int64_t, float v) { q += (v - mu) * (v - mu); });
    const float r = 1.f / sqrtf(ln_warp_sum(q) / static_cast<float>(d) + eps);
    if (lane == 0) {
      mean[row] = mu;
      rstd[row] = r;
    }
    T* yr = y + row * d;
    if (vec) {
      for (int64_t j = 4 * lane; j < d; j += 4 * 32) {
        float v[4];
        ln_load4(xr + j, v);
#pragma unroll
        for (int k = 0; k < 4; ++k)
          v[k] = (v[k] - mu) * r * to_f32(weight[j + k]) + to_f32(bias[j + k]);
        ln_store4(yr + j, v);
      }
    } else {
      for (int64_t j = lane; j < d; j += 32)
        yr[j] = from_f32<T>((to_f32(xr[j]) - mu) * r * to_f32(weight[j]) + to_f32(bias[j]));
    }
  }
}

// A post-LN residual's end in one pass (Backend::residual_layernorm_fwd): sum = x + dropout(body),
// y = layernorm(sum). Each lane keeps its columns of the row's sum in registers (rows of up to
// kLnBwdFusedMaxD, D % 4 == 0, 16-byte aligned), so x and body are read once and neither the
// dropped body nor a re-read of the sum goes through memory. Rounding as the composed kernels
// round: the dropped value to T (dropout_kernel), the sum to T (the add kernel), and the
// statistics from the rounded sum (layernorm_fwd_kernel), so `sum` is what they would write.
// The mask is dropout_kernel's: element e keeps iff lane e % 4 of Philox block e / 4 of
// (seed, offset), shifted right by 8, is >= threshold.
template <typename T, typename W>
__global__ void __launch_bounds__(kLnThreads)
    residual_layernorm_fwd_kernel(const T* __restrict__ x,       // [N, D]
                                  const T* __restrict__ body,    // [N, D]
                                  const W* __restrict__ weight,  // [D]
                                  const W* __restrict__ bias,    // [D]
                                  T* __restrict__ sum,           // [N, D] =
                                  T* __restrict__ y,             // [N, D] =
                                  float* __restrict__ mean,      // [N] =
                                  float* __restrict__ rstd,      // [N] =
                                  int64_t n, int64_t d, float eps, bool dropout, uint32_t threshold,
                                  float scale, uint64_t seed, uint64_t offset) {
  const int lane = threadIdx.x & 31;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kLnWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kLnWarps + threadIdx.x / 32; row < n;
       row += warps) {
    float s[kLnBwdChunks][4];
    float acc = 0.f;
    ln_chunks(d, lane, [&](int i, int64_t j) {
      float xv[4], bv[4];
      ln_load4(x + row * d + j, xv);
      ln_load4(body + row * d + j, bv);
      if (dropout) {
        const uint64_t block = static_cast<uint64_t>(row * d + j) / 4;
        const Philox4 r = philox4x32(static_cast<uint32_t>(block),
                                     static_cast<uint32_t>(block >> 32), c2, c3, k0, k1);
#pragma unroll
        for (int k = 0; k < 4; ++k)
          bv[k] = (r.v[k] >> 8) >= threshold ? to_f32(from_f32<T>(bv[k] * scale)) : 0.f;
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        s[i][k] = to_f32(from_f32<T>(xv[k] + bv[k]));
        acc += s[i][k];
      }
      ln_store4(sum + row * d + j, s[i]);
    });
    const float mu = ln_warp_sum(acc) / static_cast<float>(d);
    float q = 0.f;
    ln_chunks(d, lane, [&](int i, int64_t) {
#pragma unroll
      for (int k = 0; k < 4; ++k) q += (s[i][k] - mu) * (s[i][k] - mu);
    });
    const float r = 1.f / sqrtf(ln_warp_sum(q) / static_cast<float>(d) + eps);
    if (lane == 0) {
      mean[row] = mu;
      rstd[row] = r;
    }
    ln_chunks(d, lane, [&](int i, int64_t j) {
      float v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k)
        v[k] = (s[i][k] - mu) * r * to_f32(weight[j + k]) + to_f32(bias[j + k]);
      ln_store4(y + row * d + j, v);
    });
  }
}

// dx only; the column sums are layernorm_bwd_cols_kernel's.
template <typename T, typename W>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_bwd_dx_kernel(const T* __restrict__ dy,        // [N, D]
                            const T* __restrict__ x,         // [N, D]
                            const W* __restrict__ weight,    // [D]
                            const float* __restrict__ mean,  // [N]
                            const float* __restrict__ rstd,  // [N]
                            T* __restrict__ dx,              // [N, D] =
                            int64_t n, int64_t d, bool vec) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kLnWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kLnWarps + threadIdx.x / 32; row < n;
       row += warps) {
    const T *gr = dy + row * d, *xr = x + row * d;
    const float mu = mean[row], r = rstd[row];
    // Σ ĝ and Σ ĝ ∘ x̂ over the row
    float sg = 0.f, sgx = 0.f;
    if (vec) {
      for (int64_t j = 4 * lane; j < d; j += 4 * 32) {
        float g[4], v[4];
        ln_load4(gr + j, g);
        ln_load4(xr + j, v);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float gh = g[k] * to_f32(weight[j + k]);
          sg += gh;
          sgx += gh * (v[k] - mu) * r;
        }
      }
    } else {
      for (int64_t j = lane; j < d; j += 32) {
        const float gh = to_f32(gr[j]) * to_f32(weight[j]);
        sg += gh;
        sgx += gh * (to_f32(xr[j]) - mu) * r;
      }
    }
    const float mg = ln_warp_sum(sg) / static_cast<float>(d);
    const float mgx = ln_warp_sum(sgx) / static_cast<float>(d);
    T* dr = dx + row * d;
    if (vec) {
      for (int64_t j = 4 * lane; j < d; j += 4 * 32) {
        float g[4], v[4];
        ln_load4(gr + j, g);
        ln_load4(xr + j, v);
#pragma unroll
        for (int k = 0; k < 4; ++k)
          g[k] = r * (g[k] * to_f32(weight[j + k]) - mg - (v[k] - mu) * r * mgx);
        ln_store4(dr + j, g);
      }
    } else {
      for (int64_t j = lane; j < d; j += 32) {
        const float xh = (to_f32(xr[j]) - mu) * r;
        dr[j] = from_f32<T>(r * (to_f32(gr[j]) * to_f32(weight[j]) - mg - xh * mgx));
      }
    }
  }
}

// dx as layernorm_bwd_dx_kernel's vector path, and the column sums in the same pass over dy and x
// (which the separate column kernel reads a second time): each lane keeps dweight's and dbias's
// partial sums of its columns in registers over the rows its warp walks, the block's warps meet
// in shared memory, and the block adds its sums to dweight / dbias, with atomicAdd when
// there are several blocks. Needs D % 4 == 0, D ≤ kLnBwdFusedMaxD and 16-byte aligned rows.
template <typename T, typename W>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_bwd_fused_kernel(const T* __restrict__ dy,        // [N, D]
                               const T* __restrict__ x,         // [N, D]
                               const W* __restrict__ weight,    // [D]
                               const float* __restrict__ mean,  // [N]
                               const float* __restrict__ rstd,  // [N]
                               T* __restrict__ dx,              // [N, D] =
                               float* __restrict__ dweight,     // [D] +=
                               float* __restrict__ dbias,       // [D] +=
                               int64_t n, int64_t d) {
  // Each warp's sums, as float4 so that a warp's stores are conflict-free 512-byte rows.
  __shared__ float4 part_w[kLnWarps][kLnBwdFusedMaxD / 4], part_b[kLnWarps][kLnBwdFusedMaxD / 4];
  const int lane = threadIdx.x & 31;
  float pw[kLnBwdChunks][4] = {}, pb[kLnBwdChunks][4] = {};
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kLnWarps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kLnWarps + threadIdx.x / 32; row < n;
       row += warps) {
    const T *gr = dy + row * d, *xr = x + row * d;
    const float mu = mean[row], r = rstd[row];
    float sg = 0.f, sgx = 0.f;
    ln_chunks(d, lane, [&](int, int64_t j) {
      float g[4], v[4];
      ln_load4(gr + j, g);
      ln_load4(xr + j, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float gh = g[k] * to_f32(weight[j + k]);
        sg += gh;
        sgx += gh * (v[k] - mu) * r;
      }
    });
    const float mg = ln_warp_sum(sg) / static_cast<float>(d);
    const float mgx = ln_warp_sum(sgx) / static_cast<float>(d);
    T* dr = dx + row * d;
    ln_chunks(d, lane, [&](int i, int64_t j) {
      float g[4], v[4];
      ln_load4(gr + j, g);
      ln_load4(xr + j, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float xh = (v[k] - mu) * r;
        pw[i][k] += g[k] * xh;  // dweight += dy ∘ x̂
        pb[i][k] += g[k];       // dbias += dy
        g[k] = r * (g[k] * to_f32(weight[j + k]) - mg - xh * mgx);
      }
      ln_store4(dr + j, g);
    });
  }
  const int warp = threadIdx.x / 32;
  ln_chunks(d, lane, [&](int i, int64_t j) {
    part_w[warp][j / 4] = make_float4(pw[i][0], pw[i][1], pw[i][2], pw[i][3]);
    part_b[warp][j / 4] = make_float4(pb[i][0], pb[i][1], pb[i][2], pb[i][3]);
  });
  __syncthreads();
  for (int64_t c = threadIdx.x; c < d; c += kLnThreads) {
    float sw = 0.f, sb = 0.f;
#pragma unroll
    for (int w = 0; w < kLnWarps; ++w) {
      sw += reinterpret_cast<const float*>(part_w[w])[c];
      sb += reinterpret_cast<const float*>(part_b[w])[c];
    }
    if (gridDim.x == 1) {
      dweight[c] += sw;
      dbias[c] += sb;
    } else {
      atomicAdd(dweight + c, sw);
      atomicAdd(dbias + c, sb);
    }
  }
}

// dweight[c] += Σ dy[r, c] x̂[r, c], dbias[c] += Σ dy[r, c] over this block's chunk of rows.
// Block (32, 8); grid (⌈D/32⌉, chunks). One chunk writes without atomics.
template <typename T>
__global__ void __launch_bounds__(kLnCols* kLnRows)
    layernorm_bwd_cols_kernel(const T* __restrict__ dy,        // [N, D]
                              const T* __restrict__ x,         // [N, D]
                              const float* __restrict__ mean,  // [N]
                              const float* __restrict__ rstd,  // [N]
                              float* __restrict__ dweight,     // [D] +=
                              float* __restrict__ dbias,       // [D] +=
                              int64_t n, int64_t d, int64_t rows_per_chunk) {
  __shared__ float part_w[kLnRows][kLnCols + 1], part_b[kLnRows][kLnCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kLnCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = n < r0 + rows_per_chunk ? n : r0 + rows_per_chunk;  // min (host-portable)
  float aw = 0.f, ab = 0.f;
  if (c < d)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kLnRows) {
      const float g = to_f32(dy[r * d + c]);
      aw += g * (to_f32(x[r * d + c]) - mean[r]) * rstd[r];  // dw += dy ∘ x̂
      ab += g;                                               // db += dy
    }
  part_w[threadIdx.y][threadIdx.x] = aw;
  part_b[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y != 0 || c >= d) return;
  float sw = 0.f, sb = 0.f;
#pragma unroll
  for (int k = 0; k < kLnRows; ++k) {
    sw += part_w[k][threadIdx.x];
    sb += part_b[k][threadIdx.x];
  }
  if (gridDim.y == 1) {
    dweight[c] += sw;
    dbias[c] += sb;
  } else {
    atomicAdd(dweight + c, sw);
    atomicAdd(dbias + c, sb);
  }
}

// ---- host side: launch geometry (shared by the launchers and the emulation test) ---------------

inline bool ln_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks for the row kernels: one warp per row, at most kLnMaxBlocks (rows grid-strided beyond).
inline unsigned ln_row_grid(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kLnWarps - 1) / kLnWarps, kLnMaxBlocks));
}

// Whether residual_layernorm_fwd_kernel can run: D % 4 == 0, rows short enough for its registers,
// every row 16-byte aligned.
inline bool ln_residual_fusable(int64_t d, bool aligned) {
  return aligned && d % 4 == 0 && d <= kLnBwdFusedMaxD;
}

// Whether layernorm_bwd takes the fused kernel (vector loads possible and rows short enough),
// and its blocks: kLnBwdBlocksPerSm per SM, fewer when there are fewer rows' worth of warps.
struct LnBwdPlan {
  bool fused;
  unsigned blocks;
};
inline LnBwdPlan ln_bwd_plan(int64_t n, int64_t d, bool vec, int sms) {
  const bool fused = vec && d <= kLnBwdFusedMaxD;
  const int64_t cap = std::max<int64_t>(1, int64_t{kLnBwdBlocksPerSm} * sms);
  return {fused, static_cast<unsigned>(std::min<int64_t>(ln_row_grid(n), cap))};
}

// The column kernel's row chunks for an [N, D] problem on a GPU of `sms` multiprocessors: about
// four blocks per SM, each chunk at least 64 rows. chunks · rows_per_chunk ≥ n > (chunks − 1) ·
// rows_per_chunk.
struct LnColChunks {
  int64_t col_blocks, chunks, rows_per_chunk;
};
inline LnColChunks ln_col_chunks(int64_t n, int64_t d, int sms) {
  const int64_t col_blocks = (d + kLnCols - 1) / kLnCols;
  const int64_t want = std::max<int64_t>(1, 4 * sms / col_blocks);
  int64_t chunks = std::clamp<int64_t>(want, 1, std::min<int64_t>((n + 63) / 64, 65535));
  const int64_t rows_per_chunk = (n + chunks - 1) / chunks;
  chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
  return {col_blocks, chunks, rows_per_chunk};
}

}  // namespace

}  // namespace mh::cuda
