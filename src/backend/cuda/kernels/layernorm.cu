// LayerNorm over the last dimension, forward and backward (CpuBackend::layernorm_fwd / _bwd).
//
//   layernorm_fwd  x [N, D] T, weight/bias [D] W  ->  y [N, D] T  =  (x − μ) · r ∘ weight + bias
//                  mean [N] F32 = μ,  rstd [N] F32 = r = 1 / sqrt(var + eps)  (biased variance)
//   layernorm_bwd  dx [N, D] T  =  r (ĝ − mean(ĝ) − x̂ mean(ĝ ∘ x̂)),  x̂ = (x − μ) r, ĝ = dy ∘ w
//                  dweight [D] F32 += Σ_n dy ∘ x̂;   dbias [D] F32 += Σ_n dy
//   residual_layernorm_fwd  sum = x + dropout(body), then layernorm_fwd of sum
// T is F32, BF16 or F16; W (weight, bias) is F32 or T. All statistics and sums in fp32.
// dx must not alias dy or x.
//
// Row kernels: one warp per row (rows grid-strided over warps), any D; the row is read in two
// passes for the statistics (mean, then the centred variance, as the CPU reference does) and once
// more for the output; the re-reads hit L1. 4-element vector loads when D % 4 == 0 and every
// pointer is aligned. The backward computes dx and the column sums (dweight, dbias) in one pass
// over dy and x where it can (vector loads, D ≤ 1024: a Transformer's d_model): each lane sums
// its columns in registers, the block in shared memory, then one atomicAdd per column per block.
// Otherwise the column sums come from a second kernel: blocks of 32 columns × a chunk of rows
// reduce in shared memory and atomicAdd into the F32 outputs. (The fused kernel reads dy and x
// once instead of twice. The two-kernel form took 32 us per call at 12288 × 512 in bf16 on an
// H200 in `bench train --profile`, where its memory traffic needs about 13 us.) The fused kernel
// (nvcc 13.0 -Xptxas -v): 102-114 registers, no spills, 32 KiB of shared memory: four blocks of
// 4 warps per SM, as it is launched (kLnBwdBlocksPerSm).
//
// residual_layernorm_fwd: a post-LN residual's x + dropout(body) and its LayerNorm in one pass
// (rows as the fused backward's: D % 4 == 0, D ≤ 1024, aligned; otherwise it declines and the
// backend composes dropout_fwd, add and layernorm_fwd). The composition wrote the dropped body
// and the sum and read them back; this reads x and body once and writes the sum (for backward)
// and y. The sum is the composition's bit for bit (same mask, same roundings). 64-92 registers,
// no spills.
//
// The kernels and their launch geometry are in layernorm_kernels.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/dropout_kernels.cuh"  // dropout_args: the same mask
#include "backend/cuda/kernels/kernels.h"
#include "backend/cuda/kernels/layernorm_kernels.cuh"

namespace mh::cuda {

namespace {

template <typename T>
struct LnTag {
  using type = T;
};

template <typename Fn>
void ln_dispatch(DType t, const char* what, Fn&& fn) {
  switch (t) {
    case DType::f32:
      return fn(LnTag<float>{});
    case DType::bf16:
      return fn(LnTag<__nv_bfloat16>{});
    case DType::f16:
      return fn(LnTag<__half>{});
    default:
      MH_CHECK(false, what, ": dtype ", dtype_name(t), " is not F32, BF16 or F16");
  }
}

void ln_on_device(const Tensor& t, const char* what) {
  MH_CHECK(t.device() == Device::cuda, what, ": tensor ", shape_str(t.shape()),
           " is not on the GPU");
}

int ln_sm_count() {
  int dev = 0, sms = 0;
  MH_CUDA_CHECK(cudaGetDevice(&dev));
  MH_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

}  // namespace

void layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                   Tensor& mean, Tensor& rstd, cudaStream_t s) {
  const int64_t n = x.rows2d(), d = x.cols2d();
  MH_CHECK(x.shape() == y.shape() && x.dtype() == y.dtype(), "layernorm_fwd: x ",
           shape_str(x.shape()), dtype_name(x.dtype()), " y ", shape_str(y.shape()),
           dtype_name(y.dtype()));
  MH_CHECK(weight.numel() == d && bias.numel() == d && mean.numel() == n && rstd.numel() == n,
           "layernorm_fwd shapes: x ", shape_str(x.shape()), " weight ", shape_str(weight.shape()),
           " bias ", shape_str(bias.shape()), " mean ", shape_str(mean.shape()), " rstd ",
           shape_str(rstd.shape()));
  MH_CHECK(weight.dtype() == bias.dtype() &&
               (weight.dtype() == DType::f32 || weight.dtype() == x.dtype()),
           "layernorm_fwd: weight ", dtype_name(weight.dtype()), " bias ", dtype_name(bias.dtype()),
           " x ", dtype_name(x.dtype()));
  MH_CHECK(mean.dtype() == DType::f32 && rstd.dtype() == DType::f32,
           "layernorm_fwd: statistics must be F32");
  for (const Tensor* t : {&x, &weight, &bias, static_cast<const Tensor*>(&y),
                          static_cast<const Tensor*>(&mean), static_cast<const Tensor*>(&rstd)})
    ln_on_device(*t, "layernorm_fwd");
  if (n == 0 || d == 0) return;
  ln_dispatch(x.dtype(), "layernorm_fwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = static_cast<const T*>(x.raw());
    T* yp = static_cast<T*>(y.raw());
    const bool vec = d % 4 == 0 && ln_aligned(xp, 4 * sizeof(T)) && ln_aligned(yp, 4 * sizeof(T));
    float* mp = static_cast<float*>(mean.raw());
    float* rp = static_cast<float*>(rstd.raw());
    if (weight.dtype() == DType::f32)
      layernorm_fwd_kernel<T, float><<<ln_row_grid(n), kLnThreads, 0, s>>>(
          xp, static_cast<const float*>(weight.raw()), static_cast<const float*>(bias.raw()), yp,
          mp, rp, n, d, static_cast<float>(eps), vec);
    else if constexpr (!std::is_same_v<T, float>)
      layernorm_fwd_kernel<T, T><<<ln_row_grid(n), kLnThreads, 0, s>>>(
          xp, static_cast<const T*>(weight.raw()), static_cast<const T*>(bias.raw()), yp, mp, rp, n,
          d, static_cast<float>(eps), vec);
    MH_CUDA_CHECK_LAUNCH();
  });
}

bool residual_layernorm_fwd(const Tensor& x, const Tensor& body, double p, uint64_t seed,
                            uint64_t offset, const Tensor& weight, const Tensor& bias, double eps,
                            Tensor& sum, Tensor& y, Tensor& mean, Tensor& rstd, cudaStream_t s) {
  const int64_t n = x.rows2d(), d = x.cols2d();
  for (const Tensor* t : {&body, static_cast<const Tensor*>(&sum), static_cast<const Tensor*>(&y)})
    MH_CHECK(t->shape() == x.shape() && t->dtype() == x.dtype(), "residual_layernorm_fwd: x ",
             shape_str(x.shape()), dtype_name(x.dtype()), " and ", shape_str(t->shape()),
             dtype_name(t->dtype()), ": expected the same shape and dtype");
  MH_CHECK(weight.numel() == d && bias.numel() == d && mean.numel() == n && rstd.numel() == n,
           "residual_layernorm_fwd shapes: x ", shape_str(x.shape()), " weight ",
           shape_str(weight.shape()), " bias ", shape_str(bias.shape()), " mean ",
           shape_str(mean.shape()), " rstd ", shape_str(rstd.shape()));
  MH_CHECK(weight.dtype() == bias.dtype() &&
               (weight.dtype() == DType::f32 || weight.dtype() == x.dtype()),
           "residual_layernorm_fwd: weight ", dtype_name(weight.dtype()), " bias ",
           dtype_name(bias.dtype()), " x ", dtype_name(x.dtype()));
  MH_CHECK(mean.dtype() == DType::f32 && rstd.dtype() == DType::f32,
           "residual_layernorm_fwd: statistics must be F32");
  MH_CHECK(p >= 0 && p < 1, "residual_layernorm_fwd: dropout p = ", p);
  for (const Tensor* t :
       {&x, &body, &weight, &bias, static_cast<const Tensor*>(&sum), static_cast<const Tensor*>(&y),
        static_cast<const Tensor*>(&mean), static_cast<const Tensor*>(&rstd)})
    ln_on_device(*t, "residual_layernorm_fwd");
  if (n == 0 || d == 0) return true;
  bool launched = false;
  ln_dispatch(x.dtype(), "residual_layernorm_fwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *xp = static_cast<const T*>(x.raw()), *bp = static_cast<const T*>(body.raw());
    T *sp = static_cast<T*>(sum.raw()), *yp = static_cast<T*>(y.raw());
    const size_t al = 4 * sizeof(T);
    if (!ln_residual_fusable(d, ln_aligned(xp, al) && ln_aligned(bp, al) && ln_aligned(sp, al) &&
                                    ln_aligned(yp, al)))
      return;
    const DropoutArgs da = dropout_args(p);
    float* mp = static_cast<float*>(mean.raw());
    float* rp = static_cast<float*>(rstd.raw());
    if (weight.dtype() == DType::f32)
      residual_layernorm_fwd_kernel<T, float><<<ln_row_grid(n), kLnThreads, 0, s>>>(
          xp, bp, static_cast<const float*>(weight.raw()), static_cast<const float*>(bias.raw()),
          sp, yp, mp, rp, n, d, static_cast<float>(eps), p > 0, da.threshold, da.scale, seed,
          offset);
    else if constexpr (!std::is_same_v<T, float>)
      residual_layernorm_fwd_kernel<T, T><<<ln_row_grid(n), kLnThreads, 0, s>>>(
          xp, bp, static_cast<const T*>(weight.raw()), static_cast<const T*>(bias.raw()), sp, yp,
          mp, rp, n, d, static_cast<float>(eps), p > 0, da.threshold, da.scale, seed, offset);
    MH_CUDA_CHECK_LAUNCH();
    launched = true;
  });
  return launched;
}

void layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                   const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias, cudaStream_t s) {
  const int64_t n = x.rows2d(), d = x.cols2d();
  MH_CHECK(dy.shape() == x.shape() && dx.shape() == x.shape() && dy.dtype() == x.dtype() &&
               dx.dtype() == x.dtype(),
           "layernorm_bwd: dy ", shape_str(dy.shape()), dtype_name(dy.dtype()), " x ",
           shape_str(x.shape()), dtype_name(x.dtype()), " dx ", shape_str(dx.shape()),
           dtype_name(dx.dtype()));
  MH_CHECK(weight.numel() == d && dweight.numel() == d && dbias.numel() == d && mean.numel() == n &&
               rstd.numel() == n,
           "layernorm_bwd shapes");
  MH_CHECK(weight.dtype() == DType::f32 || weight.dtype() == x.dtype(), "layernorm_bwd: weight ",
           dtype_name(weight.dtype()), " x ", dtype_name(x.dtype()));
  MH_CHECK(mean.dtype() == DType::f32 && rstd.dtype() == DType::f32 &&
               dweight.dtype() == DType::f32 && dbias.dtype() == DType::f32,
           "layernorm_bwd: statistics and parameter gradients must be F32");
  for (const Tensor* t : {&dy, &x, &weight, &mean, &rstd, static_cast<const Tensor*>(&dx),
                          static_cast<const Tensor*>(&dweight), static_cast<const Tensor*>(&dbias)})
    ln_on_device(*t, "layernorm_bwd");
  if (n == 0 || d == 0) return;

  const int sms = ln_sm_count();
  const LnColChunks cc = ln_col_chunks(n, d, sms);
  const int64_t col_blocks = cc.col_blocks, chunks = cc.chunks, rows_per_chunk = cc.rows_per_chunk;
  MH_CHECK(col_blocks < (int64_t{1} << 31), "layernorm_bwd: ", d, " columns");

  ln_dispatch(x.dtype(), "layernorm_bwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *gp = static_cast<const T*>(dy.raw()), *xp = static_cast<const T*>(x.raw());
    T* dxp = static_cast<T*>(dx.raw());
    const float *mp = static_cast<const float*>(mean.raw()),
                *rp = static_cast<const float*>(rstd.raw());
    float *dwp = static_cast<float*>(dweight.raw()), *dbp = static_cast<float*>(dbias.raw());
    const size_t al = 4 * sizeof(T);
    const bool vec = d % 4 == 0 && ln_aligned(gp, al) && ln_aligned(xp, al) && ln_aligned(dxp, al);
    const LnBwdPlan plan = ln_bwd_plan(n, d, vec, sms);
    if (plan.fused) {
      if (weight.dtype() == DType::f32)
        layernorm_bwd_fused_kernel<T, float><<<plan.blocks, kLnThreads, 0, s>>>(
            gp, xp, static_cast<const float*>(weight.raw()), mp, rp, dxp, dwp, dbp, n, d);
      else if constexpr (!std::is_same_v<T, float>)
        layernorm_bwd_fused_kernel<T, T><<<plan.blocks, kLnThreads, 0, s>>>(
            gp, xp, static_cast<const T*>(weight.raw()), mp, rp, dxp, dwp, dbp, n, d);
      MH_CUDA_CHECK_LAUNCH();
      return;
    }
    layernorm_bwd_cols_kernel<T>
        <<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks)),
           dim3(kLnCols, kLnRows), 0, s>>>(gp, xp, mp, rp, dwp, dbp, n, d, rows_per_chunk);
    MH_CUDA_CHECK_LAUNCH();
    if (weight.dtype() == DType::f32)
      layernorm_bwd_dx_kernel<T, float><<<ln_row_grid(n), kLnThreads, 0, s>>>(
          gp, xp, static_cast<const float*>(weight.raw()), mp, rp, dxp, n, d, vec);
    else if constexpr (!std::is_same_v<T, float>)
      layernorm_bwd_dx_kernel<T, T><<<ln_row_grid(n), kLnThreads, 0, s>>>(
          gp, xp, static_cast<const T*>(weight.raw()), mp, rp, dxp, n, d, vec);
    MH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mh::cuda
