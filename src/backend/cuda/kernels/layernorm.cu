// LayerNorm over the last dimension, forward and backward (CpuBackend::layernorm_fwd / _bwd).
//
//   layernorm_fwd  x [N, D] T, weight/bias [D] W  ->  y [N, D] T  =  (x − μ) · r ∘ weight + bias
//                  mean [N] F32 = μ,  rstd [N] F32 = r = 1 / sqrt(var + eps)  (biased variance)
//   layernorm_bwd  dx [N, D] T  =  r (ĝ − mean(ĝ) − x̂ mean(ĝ ∘ x̂)),  x̂ = (x − μ) r, ĝ = dy ∘ w
//                  dweight [D] F32 += Σ_n dy ∘ x̂;   dbias [D] F32 += Σ_n dy
// T is F32, BF16 or F16; W (weight, bias) is F32 or T. All statistics and sums in fp32.
// dx must not alias dy or x.
//
// Row kernels: one warp per row (rows grid-strided over warps), any D; the row is read in two
// passes for the statistics (mean, then the centred variance, as the CPU reference does) and once
// more for the output; the re-reads hit L1. 4-element vector loads when D % 4 == 0 and every
// pointer is aligned. Column sums (dweight, dbias) come from a second kernel: blocks of 32 columns
// × a chunk of rows reduce in shared memory and atomicAdd into the F32 outputs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

constexpr int kLnWarps = 4;  // rows per block in the row kernels
constexpr int kLnThreads = 32 * kLnWarps;
constexpr int64_t kLnMaxBlocks = 1 << 16;
constexpr int kLnCols = 32;  // column kernel: columns per block
constexpr int kLnRows = 8;   // column kernel: row lanes per block

__device__ __forceinline__ float ln_to_f(float x) {
  return x;
}
__device__ __forceinline__ float ln_to_f(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float ln_to_f(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T ln_from_f(float x);
template <>
__device__ __forceinline__ float ln_from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 ln_from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half ln_from_f<__half>(float x) {
  return __float2half(x);
}

template <typename T>
struct alignas(sizeof(T) * 4) LnPack {
  T v[4];
};

template <typename T>
__device__ __forceinline__ void ln_load4(const T* p, float (&f)[4]) {
  const LnPack<T> pk = *reinterpret_cast<const LnPack<T>*>(p);
#pragma unroll
  for (int k = 0; k < 4; ++k) f[k] = ln_to_f(pk.v[k]);
}

template <typename T>
__device__ __forceinline__ void ln_store4(T* p, const float (&f)[4]) {
  LnPack<T> pk;
#pragma unroll
  for (int k = 0; k < 4; ++k) pk.v[k] = ln_from_f<T>(f[k]);
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
    for (int64_t j = lane; j < d; j += 32) fn(j, ln_to_f(row[j]));
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
          v[k] = (v[k] - mu) * r * ln_to_f(weight[j + k]) + ln_to_f(bias[j + k]);
        ln_store4(yr + j, v);
      }
    } else {
      for (int64_t j = lane; j < d; j += 32)
        yr[j] = ln_from_f<T>((ln_to_f(xr[j]) - mu) * r * ln_to_f(weight[j]) + ln_to_f(bias[j]));
    }
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
          const float gh = g[k] * ln_to_f(weight[j + k]);
          sg += gh;
          sgx += gh * (v[k] - mu) * r;
        }
      }
    } else {
      for (int64_t j = lane; j < d; j += 32) {
        const float gh = ln_to_f(gr[j]) * ln_to_f(weight[j]);
        sg += gh;
        sgx += gh * (ln_to_f(xr[j]) - mu) * r;
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
          g[k] = r * (g[k] * ln_to_f(weight[j + k]) - mg - (v[k] - mu) * r * mgx);
        ln_store4(dr + j, g);
      }
    } else {
      for (int64_t j = lane; j < d; j += 32) {
        const float xh = (ln_to_f(xr[j]) - mu) * r;
        dr[j] = ln_from_f<T>(r * (ln_to_f(gr[j]) * ln_to_f(weight[j]) - mg - xh * mgx));
      }
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
  const int64_t r1 = min(n, r0 + rows_per_chunk);
  float aw = 0.f, ab = 0.f;
  if (c < d)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kLnRows) {
      const float g = ln_to_f(dy[r * d + c]);
      aw += g * (ln_to_f(x[r * d + c]) - mean[r]) * rstd[r];  // dw += dy ∘ x̂
      ab += g;                                                // db += dy
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

// ---- host side ----------------------------------------------------------------------------------

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

bool ln_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

void ln_on_device(const Tensor& t, const char* what) {
  MH_CHECK(t.device() == Device::cuda, what, ": tensor ", shape_str(t.shape()),
           " is not on the GPU");
}

unsigned ln_row_grid(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kLnWarps - 1) / kLnWarps, kLnMaxBlocks));
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

  const int64_t col_blocks = (d + kLnCols - 1) / kLnCols;
  const int64_t want = std::max<int64_t>(1, 4 * ln_sm_count() / col_blocks);
  int64_t chunks = std::clamp<int64_t>(want, 1, std::min<int64_t>((n + 63) / 64, 65535));
  const int64_t rows_per_chunk = (n + chunks - 1) / chunks;
  chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
  MH_CHECK(col_blocks < (int64_t{1} << 31), "layernorm_bwd: ", d, " columns");

  ln_dispatch(x.dtype(), "layernorm_bwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *gp = static_cast<const T*>(dy.raw()), *xp = static_cast<const T*>(x.raw());
    T* dxp = static_cast<T*>(dx.raw());
    const float *mp = static_cast<const float*>(mean.raw()),
                *rp = static_cast<const float*>(rstd.raw());
    const size_t al = 4 * sizeof(T);
    const bool vec = d % 4 == 0 && ln_aligned(gp, al) && ln_aligned(xp, al) && ln_aligned(dxp, al);
    layernorm_bwd_cols_kernel<T>
        <<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks)),
           dim3(kLnCols, kLnRows), 0, s>>>(gp, xp, mp, rp, static_cast<float*>(dweight.raw()),
                                           static_cast<float*>(dbias.raw()), n, d, rows_per_chunk);
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
