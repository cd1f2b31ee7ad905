// fp32 to and from the kernels' element types (F32, BF16, F16), rounding to nearest even: one
// definition for every kernel family (each computes in fp32 and stores in its tensors' dtype).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mh::cuda {
namespace {

__device__ __forceinline__ float to_f32(float x) {
  return x;
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float to_f32(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half(x);
}

}  // namespace
}  // namespace mh::cuda
