// Optimizer kernels: multi-tensor Adam and the sum of squares behind the global gradient norm.
//
// adam_multi: for every tensor t of the list (params/grads/m/v F32, sizes[t] elements each), in
//   one launch over a (chunk, tensor) grid — blockIdx.y is the tensor, a grid-stride loop over its
//   elements along x:
//     g = grad·grad_scale;  m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²        (m, v =)
//     p −= (lr / bc1)·m / (sqrt(v)/sqrt(bc2) + eps) + lr·wd·p                 (p −=)
//   with bc1 = 1 − b1^step, bc2 = 1 − b2^step: CpuBackend::adam_step's formula and operation order,
//   in fp32 with the same host-computed constants.
// sum_squares: out [1] F64 (+=) Σ x² over x (F32 | BF16 | F16): fp32 per thread and per block,
//   then one double atomicAdd per block. Non-finite inputs make the sum non-finite.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

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
                      AdamConsts c) {
  const int t = blockIdx.y;
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
    p[i] = pi - (c.step_size * mi / (sqrtf(vi) * c.inv_sqrt_bc2 + c.eps) + c.lr * c.wd * pi);
  }
}

__device__ __forceinline__ float sq_load(float x) {
  return x;
}
__device__ __forceinline__ float sq_load(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float sq_load(__half x) {
  return __half2float(x);
}

template <typename T>
__global__ void __launch_bounds__(kSumThreads) sum_squares_kernel(const T* __restrict__ x,  // [n]
                                                                  int64_t n,
                                                                  double* out) {  // [1] +=
  __shared__ float partial[kSumThreads / 32];
  float acc = 0.f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float xi = sq_load(x[i]);
    acc += xi * xi;
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < kSumThreads / 32 ? partial[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) atomicAdd(out, static_cast<double>(acc));
  }
}

template <typename T>
void launch_sum_squares(const Tensor& x, Tensor& out, cudaStream_t s) {
  const int64_t n = x.numel();
  const int blocks =
      static_cast<int>(std::min<int64_t>((n + kSumThreads - 1) / kSumThreads, kSumMaxBlocks));
  sum_squares_kernel<T><<<blocks, kSumThreads, 0, s>>>(static_cast<const T*>(x.raw()), n,
                                                       static_cast<double*>(out.raw()));
  MH_CUDA_CHECK_LAUNCH();
}

}  // namespace

void adam_multi(const AdamTensorList& list, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, double grad_scale, cudaStream_t s) {
  MH_CHECK(step >= 1, "adam step ", step);
  MH_CHECK(list.count >= 0 && list.count <= 65535, "adam_multi: ", list.count,
           " tensors (grid y holds at most 65535)");
  if (list.count == 0 || list.max_size <= 0) return;
  MH_CHECK(list.params && list.grads && list.m && list.v && list.sizes,
           "adam_multi: null pointer list");
  // The same constants, computed the same way, as CpuBackend::adam_step.
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
  const int64_t chunks = (list.max_size + kAdamThreads - 1) / kAdamThreads;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(chunks, kAdamMaxChunks)),
                  static_cast<unsigned>(list.count));
  adam_multi_kernel<<<grid, kAdamThreads, 0, s>>>(list.params, list.grads, list.m, list.v,
                                                  list.sizes, c);
  MH_CUDA_CHECK_LAUNCH();
}

void sum_squares(const Tensor& x,  // any shape, F32 | BF16 | F16
                 Tensor& out,      // [1] F64 (+=)
                 cudaStream_t s) {
  MH_CHECK(x.device() == Device::cuda && out.device() == Device::cuda,
           "sum_squares: tensors must be on the GPU");
  MH_CHECK(out.dtype() == DType::f64 && out.numel() == 1, "sum_squares: out must be F64 [1]");
  if (x.numel() == 0) return;
  switch (x.dtype()) {
    case DType::f32:
      return launch_sum_squares<float>(x, out, s);
    case DType::bf16:
      return launch_sum_squares<__nv_bfloat16>(x, out, s);
    case DType::f16:
      return launch_sum_squares<__half>(x, out, s);
    default:
      MH_CHECK(false, "sum_squares: x must be F32, BF16 or F16, not ", dtype_name(x.dtype()));
  }
}

}  // namespace mh::cuda
