// The kernels of embedding.cu and the host-side launch arithmetic they share with it, in a header
// of their own so that tests/emu/test_embedding_emu.cpp can compile this same source for the CPU
// (tests/emu/simt_emu.h). See embedding.cu for the shapes and the handling of bad ids.
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

constexpr int kEmbThreads = 128;
constexpr int64_t kEmbMaxBlocks = 1 << 16;

template <typename T>
struct alignas(sizeof(T) * 4) EmbPack {
  T v[4];
};

template <typename T>
__global__ void __launch_bounds__(kEmbThreads)
    embed_fwd_kernel(const int32_t* __restrict__ ids,  // [B, L]
                     const T* __restrict__ table,      // [V, D]
                     const T* __restrict__ pe,         // [max_len, D]
                     T* __restrict__ y,                // [B, L, D] =
                     int64_t rows, int64_t len, int64_t vocab, int64_t d, float scale, bool vec) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int32_t tok = ids[row];
    T* out = y + row * d;
    if (tok < 0 || tok >= vocab) {  // see the file comment
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
        out[j] = from_f32<T>(__int_as_float(0x7fc00000));
      continue;
    }
    const T* src = table + tok * d;
    const T* pos = pe + (row % len) * d;
    if (vec) {
      for (int64_t j = 4 * threadIdx.x; j < d; j += 4 * blockDim.x) {
        const EmbPack<T> a = *reinterpret_cast<const EmbPack<T>*>(src + j);
        const EmbPack<T> p = *reinterpret_cast<const EmbPack<T>*>(pos + j);
        EmbPack<T> o;
#pragma unroll
        for (int k = 0; k < 4; ++k) o.v[k] = from_f32<T>(to_f32(a.v[k]) * scale + to_f32(p.v[k]));
        *reinterpret_cast<EmbPack<T>*>(out + j) = o;
      }
    } else {
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
        out[j] = from_f32<T>(to_f32(src[j]) * scale + to_f32(pos[j]));
    }
  }
}

template <typename T, typename G>
__global__ void __launch_bounds__(kEmbThreads)
    embed_bwd_kernel(const int32_t* __restrict__ ids,  // [B, L]
                     const T* __restrict__ dy,         // [B, L, D]
                     G* __restrict__ dtable,           // [V, D] +=
                     int64_t rows, int64_t vocab, int64_t d, float scale) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int32_t tok = ids[row];
    if (tok < 0 || tok >= vocab) continue;  // see the file comment
    const T* g = dy + row * d;
    G* dst = dtable + tok * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float v = scale * to_f32(g[j]);  // dtable[id] += scale · dy
      if constexpr (std::is_same_v<G, float>)
        atomicAdd(dst + j, v);
      else
        atomicAdd(dst + j, from_f32<G>(v));
    }
  }
}

// ---- host-side launch arithmetic (shared by the launchers and the emulation test) -------------

inline bool emb_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Whether embed_fwd_kernel may take the 4-element vector path.
template <typename T>
bool emb_vec(int64_t d, const T* table, const T* pe, const T* y) {
  const size_t al = 4 * sizeof(T);
  return d % 4 == 0 && emb_aligned(table, al) && emb_aligned(pe, al) && emb_aligned(y, al);
}

// Blocks of kEmbThreads: one per token row, rows grid-strided past kEmbMaxBlocks.
inline unsigned emb_grid(int64_t rows) {
  return static_cast<unsigned>(std::min<int64_t>(rows, kEmbMaxBlocks));
}

}  // namespace

}  // namespace mh::cuda
