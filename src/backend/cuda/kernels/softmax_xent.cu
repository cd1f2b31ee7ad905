// Fused softmax + label-smoothed cross-entropy, forward and gradient in one kernel
// (CpuBackend::softmax_xent = PyTorch F.cross_entropy(ignore_index=pad, label_smoothing=ε)).
//
//   logits  [N, V]  F32 | BF16 | F16        labels [N] I32
//   dlogits [N, V]  logits' dtype, optional:  = grad_scale · (softmax − ((1−ε)·onehot + ε/V))
//                   (pad rows = 0; may alias logits: each element is read before it is written)
//   sums    [3]     F64 device:  += (Σ smoothed loss, Σ nll, non-pad tokens) — the caller zeroes it
//
// One block per row (rows grid-strided over one resident wave of blocks). Pass 1 reads the row
// once: an online (max, Σ exp(x − max)) plus Σ x (for the uniform-target term), all fp32, then a
// block reduction. Pass 2 reads it again and writes the gradient; probabilities are never stored.
// Per row: lse = max + log Σ exp, nll = lse − x[y], loss = (1−ε)·nll + ε·(lse − Σx / V).
// Block partial sums are kept in double by thread 0 and added with one double atomicAdd each per
// block. A label outside [0, V) (the CPU backend throws) adds NaN to the loss sums and gets a zero
// gradient, so the caller's finiteness check sees it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

constexpr int kXentThreads = 512;
constexpr int kXentWarps = kXentThreads / 32;

__device__ __forceinline__ float xent_load(float x) {
  return x;
}
__device__ __forceinline__ float xent_load(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float xent_load(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T xent_store(float x);
template <>
__device__ __forceinline__ float xent_store<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 xent_store<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half xent_store<__half>(float x) {
  return __float2half(x);
}

// (m, s) ← merge of two online-softmax states: s = Σ exp(x − m). An empty state is (−inf, 0).
__device__ __forceinline__ void xent_merge(float& m, float& s, float m2, float s2) {
  if (m2 > m) {
    s = s * expf(m - m2) + s2;
    m = m2;
  } else if (m2 != -INFINITY) {
    s += s2 * expf(m2 - m);
  }
}

template <typename T>
__global__ void __launch_bounds__(kXentThreads)
    softmax_xent_kernel(const T* __restrict__ logits,        // [N, V]
                        const int32_t* __restrict__ labels,  // [N]
                        int64_t n, int v, int64_t pad_id, float eps, float grad_scale,
                        T* dlogits,      // [N, V] or nullptr
                        double* sums) {  // [3] +=
  __shared__ float sh_m[kXentWarps], sh_s[kXentWarps], sh_x[kXentWarps];
  __shared__ float row_m, row_s;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float on = 1.f - eps, off = eps / static_cast<float>(v);
  double loss_acc = 0, nll_acc = 0, tok_acc = 0;  // thread 0 only

  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* x = logits + row * v;
    T* dx = dlogits ? dlogits + row * v : nullptr;
    const int32_t y = labels[row];
    if (y == pad_id || y < 0 || y >= v) {  // uniform over the block: no barrier is skipped
      if (dx)
        for (int j = tid; j < v; j += kXentThreads) dx[j] = xent_store<T>(0.f);
      if (tid == 0 && y != pad_id) loss_acc = nll_acc = nan("");
      continue;
    }

    // Pass 1: online max / Σ exp and Σ x over this thread's strided elements.
    float m = -INFINITY, s = 0.f, sx = 0.f;
    for (int j = tid; j < v; j += kXentThreads) {
      const float xj = xent_load(x[j]);
      sx += xj;
      if (xj > m) {
        s = s * expf(m - xj) + 1.f;
        m = xj;
      } else if (xj != -INFINITY) {
        s += expf(xj - m);
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
      sx += __shfl_xor_sync(0xffffffffu, sx, o);
      xent_merge(m, s, m2, s2);
    }
    if (lane == 0) {
      sh_m[warp] = m;
      sh_s[warp] = s;
      sh_x[warp] = sx;
    }
    __syncthreads();
    if (warp == 0) {
      m = lane < kXentWarps ? sh_m[lane] : -INFINITY;
      s = lane < kXentWarps ? sh_s[lane] : 0.f;
      sx = lane < kXentWarps ? sh_x[lane] : 0.f;
      for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        sx += __shfl_xor_sync(0xffffffffu, sx, o);
        xent_merge(m, s, m2, s2);
      }
      if (lane == 0) {
        row_m = m;
        row_s = s;
        const double lse = static_cast<double>(m) + log(static_cast<double>(s));
        const double nll = lse - static_cast<double>(xent_load(x[y]));
        nll_acc += nll;
        loss_acc += static_cast<double>(on) * nll +
                    static_cast<double>(eps) * (lse - static_cast<double>(sx) / v);
        tok_acc += 1;
      }
    }
    __syncthreads();
    const float mx = row_m, sum = row_s;

    // Pass 2: d loss / d x_j = grad_scale · (softmax_j − target_j).
    if (dx) {
      const float a = grad_scale / sum, b = grad_scale * off, c = grad_scale * on;
      for (int j = tid; j < v; j += kXentThreads) {
        float d = expf(xent_load(x[j]) - mx) * a - b;
        if (j == y) d -= c;
        dx[j] = xent_store<T>(d);
      }
    }
    __syncthreads();  // row_* and sh_* are rewritten by the next row
  }
  if (tid == 0 && (tok_acc > 0 || loss_acc != 0 || nll_acc != 0)) {
    atomicAdd(sums + 0, loss_acc);
    atomicAdd(sums + 1, nll_acc);
    atomicAdd(sums + 2, tok_acc);
  }
}

template <typename T>
void launch_softmax_xent(const Tensor& logits, const Tensor& labels, int64_t pad_id,
                         double smoothing, double grad_scale, Tensor* dlogits, Tensor& sums,
                         cudaStream_t s) {
  const int64_t n = logits.rows2d();
  const int v = static_cast<int>(logits.cols2d());
  // One resident wave: every block loops over rows, so more blocks than fit only add a tail.
  int dev = 0, sms = 0, per_sm = 0;
  MH_CUDA_CHECK(cudaGetDevice(&dev));
  MH_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  MH_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, softmax_xent_kernel<T>,
                                                              kXentThreads, 0));
  const int64_t wave = static_cast<int64_t>(sms) * std::max(per_sm, 1);
  const int blocks = static_cast<int>(std::min<int64_t>(n, wave));
  softmax_xent_kernel<T><<<blocks, kXentThreads, 0, s>>>(
      static_cast<const T*>(logits.raw()), static_cast<const int32_t*>(labels.raw()), n, v, pad_id,
      static_cast<float>(smoothing), static_cast<float>(grad_scale),
      dlogits ? static_cast<T*>(dlogits->raw()) : nullptr, static_cast<double*>(sums.raw()));
  MH_CUDA_CHECK_LAUNCH();
}

}  // namespace

void softmax_xent(const Tensor& logits,  // [N, V] F32 | BF16 | F16
                  const Tensor& labels,  // [N] I32
                  int64_t pad_id, double smoothing, double grad_scale,
                  Tensor* dlogits,  // [N, V] logits' dtype (=), optional
                  Tensor& sums,     // [3] F64 (+=)
                  cudaStream_t s) {
  const int64_t n = logits.rows2d(), v = logits.cols2d();
  MH_CHECK(logits.device() == Device::cuda && labels.device() == Device::cuda &&
               sums.device() == Device::cuda,
           "softmax_xent: tensors must be on the GPU");
  MH_CHECK(labels.dtype() == DType::i32 && labels.numel() == n, "softmax_xent: ", labels.numel(),
           " labels (", dtype_name(labels.dtype()), ") for ", n, " rows");
  MH_CHECK(sums.dtype() == DType::f64 && sums.numel() == 3, "softmax_xent: sums must be F64 [3]");
  MH_CHECK(v > 0 && v <= (int64_t{1} << 30), "softmax_xent: vocabulary of ", v);
  if (dlogits)
    MH_CHECK(dlogits->device() == Device::cuda && dlogits->shape() == logits.shape() &&
                 dlogits->dtype() == logits.dtype(),
             "softmax_xent dlogits: ", shape_str(dlogits->shape()), dtype_name(dlogits->dtype()),
             " vs ", shape_str(logits.shape()), dtype_name(logits.dtype()));
  if (n == 0) return;
  switch (logits.dtype()) {
    case DType::f32:
      return launch_softmax_xent<float>(logits, labels, pad_id, smoothing, grad_scale, dlogits,
                                        sums, s);
    case DType::bf16:
      return launch_softmax_xent<__nv_bfloat16>(logits, labels, pad_id, smoothing, grad_scale,
                                                dlogits, sums, s);
    case DType::f16:
      return launch_softmax_xent<__half>(logits, labels, pad_id, smoothing, grad_scale, dlogits,
                                         sums, s);
    default:
      MH_CHECK(false, "softmax_xent: logits must be F32, BF16 or F16, not ",
               dtype_name(logits.dtype()));
  }
}

}  // namespace mh::cuda
