// The kernel of dropout.cu and the host-side launch arithmetic it shares with it, in a header of
// its own so that tests/emu/test_dropout_emu.cpp can compile this same source for the CPU
// (tests/emu/simt_emu.h). See dropout.cu for the mask and the scheme.
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
#include "core/philox.h"

namespace mh::cuda {

namespace {

constexpr int kDropThreads = 256;
constexpr int64_t kDropMaxBlocks = 1 << 16;

template <typename T>
struct alignas(sizeof(T) * 4) DropPack {
  T v[4];
};

// Thread j (grid-strided) draws Philox block j and writes elements [4j, 4j + 4) ∩ [0, n).
template <typename T>
__global__ void __launch_bounds__(kDropThreads)
    dropout_kernel(const T* x,  // [n]
                   T* y,        // [n] = (may alias x)
                   int64_t n, uint32_t threshold, float scale, uint64_t seed, uint64_t offset,
                   bool vec) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  const int64_t blocks = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < blocks;
       j += stride) {
    const uint64_t block = static_cast<uint64_t>(j);
    const Philox4 r = philox4x32(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                 c2, c3, k0, k1);
    const int64_t base = 4 * j;
    if (vec && base + 4 <= n) {
      DropPack<T> pk = *reinterpret_cast<const DropPack<T>*>(x + base);
#pragma unroll
      for (int l = 0; l < 4; ++l)
        pk.v[l] =
            (r.v[l] >> 8) >= threshold ? from_f32<T>(to_f32(pk.v[l]) * scale) : from_f32<T>(0.f);
      *reinterpret_cast<DropPack<T>*>(y + base) = pk;
    } else {
      const int count = n - base < 4 ? static_cast<int>(n - base) : 4;
      for (int l = 0; l < count; ++l)
        y[base + l] = (r.v[l] >> 8) >= threshold ? from_f32<T>(to_f32(x[base + l]) * scale)
                                                 : from_f32<T>(0.f);
    }
  }
}

// ---- host-side launch arithmetic (shared by the launcher and the emulation test) --------------

// keep iff (bits >> 8) >= threshold; kept values × scale.
struct DropoutArgs {
  uint32_t threshold;
  float scale;
};
// The CPU's threshold and scale, computed the same way (CpuBackend dropout_apply).
inline DropoutArgs dropout_args(double p) {
  return {static_cast<uint32_t>(std::ceil(static_cast<float>(p) * 16777216.0f)),
          static_cast<float>(1.0 / (1.0 - p))};
}

// Whether x and y allow the 4-element vector path.
template <typename T>
bool dropout_vec(const T* x, const T* y) {
  return reinterpret_cast<uintptr_t>(x) % (4 * sizeof(T)) == 0 &&
         reinterpret_cast<uintptr_t>(y) % (4 * sizeof(T)) == 0;
}

// Blocks of kDropThreads for n elements (one thread per 4).
inline unsigned dropout_grid(int64_t n) {
  const int64_t threads = (n + 3) / 4;
  return static_cast<unsigned>(
      std::min<int64_t>((threads + kDropThreads - 1) / kDropThreads, kDropMaxBlocks));
}

}  // namespace

}  // namespace mh::cuda
