// Optimizer kernels: multi-tensor Adam and the sum of squares behind the global gradient norm.
//
// adam_multi: for every tensor t of the list (params/grads/m/v F32, sizes[t] elements each), in
//   one launch over a (chunk, tensor) grid — blockIdx.y is the tensor, a grid-stride loop over its
//   elements along x:
//     g = grad·grad_scale;  m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²        (m, v =)
//     p −= (lr / bc1)·m / (sqrt(v)/sqrt(bc2) + eps) + lr·wd·p                 (p −=)
//   with bc1 = 1 − b1^step, bc2 = 1 − b2^step: CpuBackend::adam_step's formula and operation order,
//   in fp32 with the same host-computed constants. Where copies[t] is set, the new p is also
//   written there in bf16 or fp16 (the compute weights beside fp32 masters), in the same pass.
// sum_squares: out [1] F64 (+=) Σ x² over x (F32 | BF16 | F16): fp32 per thread and per block,
//   then one double atomicAdd per block. Non-finite inputs make the sum non-finite.
// sum_squares_multi: the same over a list of F32 tensors in one launch, in chunks of
// kSumSquaresChunk
//   elements per block (the gradient norm: one launch for hundreds of parameters).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"
#include "backend/cuda/kernels/optimizer_kernels.cuh"

namespace mh::cuda {

namespace {

template <typename T>
void launch_sum_squares(const Tensor& x, Tensor& out, cudaStream_t s) {
  const int64_t n = x.numel();
  const int blocks = sum_squares_blocks(n);
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
  const AdamConsts c = adam_consts(lr, beta1, beta2, eps, weight_decay, step, grad_scale);
  const dim3 grid = adam_grid(list.count, list.max_size);
  adam_multi_kernel<<<grid, kAdamThreads, 0, s>>>(list.params, list.grads, list.m, list.v,
                                                  list.sizes, list.copies, list.copies_bf16, c);
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

void sum_squares_multi(const SumSquaresList& list, Tensor& out, cudaStream_t s) {
  MH_CHECK(out.device() == Device::cuda && out.dtype() == DType::f64 && out.numel() == 1,
           "sum_squares_multi: out must be F64 [1] on the GPU");
  if (list.count == 0 || list.blocks == 0) return;
  MH_CHECK(list.xs && list.sizes && list.first_block, "sum_squares_multi: null list");
  MH_CHECK(list.blocks <= 0x7fffffff, "sum_squares_multi: ", list.blocks, " blocks");
  sum_squares_multi_kernel<<<static_cast<unsigned>(list.blocks), kSumThreads, 0, s>>>(
      list.xs, list.sizes, list.first_block, list.count, kSumSquaresChunk,
      static_cast<double*>(out.raw()));
  MH_CUDA_CHECK_LAUNCH();
}

}  // namespace mh::cuda
