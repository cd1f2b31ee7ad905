// Inverted dropout with the CPU backend's exact mask (CpuBackend::dropout_fwd, core/philox.h).
//
//   dropout_fwd  y  [any] T  =  x  ∘ keep / (1 − p)
//   dropout_bwd  dx [any] T  =  dy ∘ keep / (1 − p)      (the same mask, regenerated)
// T is F32, BF16 or F16; x/y (dy/dx) share shape and dtype and may alias.
//
// keep_i = philox_uniform_at(seed, offset, i) >= p, evaluated in integers as the CPU does:
// (bits_i >> 8) >= ⌈p · 2^24⌉, where bits_i is lane i % 4 of Philox4x32-10 at counter
// (i / 4, offset) under key seed. Each thread makes one Philox call and handles its 4 elements
// (one 4-element vector load/store when aligned). The kept value is x · float(1/(1−p)) rounded to
// T, so F32 results are bit-identical to the CPU backend's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"
#include "core/philox.h"

namespace mh::cuda {

namespace {

constexpr int kDropThreads = 256;
constexpr int64_t kDropMaxBlocks = 1 << 16;

__device__ __forceinline__ float drop_to_f(float x) {
  return x;
}
__device__ __forceinline__ float drop_to_f(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float drop_to_f(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T drop_from_f(float x);
template <>
__device__ __forceinline__ float drop_from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 drop_from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half drop_from_f<__half>(float x) {
  return __float2half(x);
}

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
        pk.v[l] = (r.v[l] >> 8) >= threshold ? drop_from_f<T>(drop_to_f(pk.v[l]) * scale)
                                             : drop_from_f<T>(0.f);
      *reinterpret_cast<DropPack<T>*>(y + base) = pk;
    } else {
      const int count = n - base < 4 ? static_cast<int>(n - base) : 4;
      for (int l = 0; l < count; ++l)
        y[base + l] = (r.v[l] >> 8) >= threshold ? drop_from_f<T>(drop_to_f(x[base + l]) * scale)
                                                 : drop_from_f<T>(0.f);
    }
  }
}

template <typename T>
void dropout_launch(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset,
                    cudaStream_t s) {
  if (n == 0) return;
  // The CPU's threshold and scale, computed the same way (CpuBackend dropout_apply).
  const uint32_t threshold = static_cast<uint32_t>(std::ceil(static_cast<float>(p) * 16777216.0f));
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const bool vec = reinterpret_cast<uintptr_t>(x) % (4 * sizeof(T)) == 0 &&
                   reinterpret_cast<uintptr_t>(y) % (4 * sizeof(T)) == 0;
  const int64_t threads = (n + 3) / 4;
  const int64_t grid =
      std::min<int64_t>((threads + kDropThreads - 1) / kDropThreads, kDropMaxBlocks);
  dropout_kernel<T><<<static_cast<unsigned>(grid), kDropThreads, 0, s>>>(x, y, n, threshold, scale,
                                                                         seed, offset, vec);
  MH_CUDA_CHECK_LAUNCH();
}

void dropout_any(const char* what, const Tensor& x, double p, uint64_t seed, uint64_t offset,
                 Tensor& y, cudaStream_t s) {
  MH_CHECK(x.shape() == y.shape() && x.dtype() == y.dtype(), what, ": ", shape_str(x.shape()),
           dtype_name(x.dtype()), " vs ", shape_str(y.shape()), dtype_name(y.dtype()));
  MH_CHECK(x.device() == Device::cuda && y.device() == Device::cuda, what, ": not on the GPU");
  MH_CHECK(p >= 0 && p < 1, what, ": p = ", p);
  switch (x.dtype()) {
    case DType::f32:
      return dropout_launch(static_cast<const float*>(x.raw()), static_cast<float*>(y.raw()),
                            x.numel(), p, seed, offset, s);
    case DType::bf16:
      return dropout_launch(static_cast<const __nv_bfloat16*>(x.raw()),
                            static_cast<__nv_bfloat16*>(y.raw()), x.numel(), p, seed, offset, s);
    case DType::f16:
      return dropout_launch(static_cast<const __half*>(x.raw()), static_cast<__half*>(y.raw()),
                            x.numel(), p, seed, offset, s);
    default:
      MH_CHECK(false, what, ": dtype ", dtype_name(x.dtype()), " is not F32, BF16 or F16");
  }
}

}  // namespace

void dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y,
                 cudaStream_t s) {
  dropout_any("dropout_fwd", x, p, seed, offset, y, s);
}

void dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset, Tensor& dx,
                 cudaStream_t s) {
  dropout_any("dropout_bwd", dy, p, seed, offset, dx, s);  // the same mask and scale
}

}  // namespace mh::cuda
