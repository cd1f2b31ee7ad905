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
//
// The kernel lives in dropout_kernels.cuh (shared with the CPU emulation test).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/dropout_kernels.cuh"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

template <typename T>
void dropout_launch(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset,
                    cudaStream_t s) {
  if (n == 0) return;
  const DropoutArgs a = dropout_args(p);
  dropout_kernel<T><<<dropout_grid(n), kDropThreads, 0, s>>>(x, y, n, a.threshold, a.scale, seed,
                                                             offset, dropout_vec(x, y));
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
