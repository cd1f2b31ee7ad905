// The softmax half of the reference ("naive") GPU attention; cuBLAS batched GEMMs do the rest
// (S = Q Kᵀ, O = P V forward; dV = Pᵀ dO, dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q backward).
//
// masked_softmax_fwd: scores [B, H, Lq, Lk] (F32 | BF16 | F16), in place (=):
//   row (b, h, i) sees keys j < n, n = min(key_len[b], Lk), and n = min(n, i + 1) when causal;
//   P[j] = exp(scale·S[j] − max) / Σ for j < n, exactly 0 for j ≥ n; a row with n = 0 is all 0
//   (CpuBackend::attention_fwd's probabilities). key_len: device I32 [B].
// masked_softmax_bwd: probs [B, H, Lq, Lk], grad [B, H, Lq, Lk] holds dP on entry and dS on exit
// (=):
//   dS = P ∘ (dP − rowsum(dP ∘ P)) · scale. Entries with P = 0 (masked, or underflowed) get exactly
//   0 and are left out of the row sum, so whatever the GEMM left in masked dP cannot leak in.
// One warp per row, fp32 math; the row is read from global memory twice (L1/L2-resident).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

constexpr int kSmThreads = 256;
constexpr int kSmRowsPerBlock = kSmThreads / 32;

__device__ __forceinline__ float sm_load(float x) {
  return x;
}
__device__ __forceinline__ float sm_load(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float sm_load(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T sm_store(float x);
template <>
__device__ __forceinline__ float sm_store<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 sm_store<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half sm_store<__half>(float x) {
  return __float2half(x);
}

template <typename T>
__global__ void __launch_bounds__(kSmThreads)
    masked_softmax_fwd_kernel(T* scores,                            // [B, H, Lq, Lk] in place
                              const int32_t* __restrict__ key_len,  // [B]
                              int64_t rows, int64_t heads, int64_t lq, int lk, bool causal,
                              float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSmRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  const int64_t i = row % lq, b = row / (lq * heads);
  int n = min(max(key_len[b], 0), lk);
  if (causal && i + 1 < n) n = static_cast<int>(i + 1);
  T* x = scores + row * lk;
  float m = -INFINITY;
  for (int j = lane; j < n; j += 32) m = fmaxf(m, sm_load(x[j]) * scale);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float s = 0.f;
  for (int j = lane; j < n; j += 32) s += expf(sm_load(x[j]) * scale - m);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const float inv = n > 0 ? 1.f / s : 0.f;
  for (int j = lane; j < lk; j += 32)
    x[j] = sm_store<T>(j < n ? expf(sm_load(x[j]) * scale - m) * inv : 0.f);
}

template <typename T>
__global__ void __launch_bounds__(kSmThreads)
    masked_softmax_bwd_kernel(const T* __restrict__ probs,  // [B, H, Lq, Lk]
                              T* grad,                      // [B, H, Lq, Lk]: dP in, dS out
                              int64_t rows, int lk, float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSmRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const T* p = probs + row * lk;
  T* g = grad + row * lk;
  float dot = 0.f;  // Σ_j dP_j P_j
  for (int j = lane; j < lk; j += 32) {
    const float pj = sm_load(p[j]);
    if (pj != 0.f) dot += sm_load(g[j]) * pj;
  }
  for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  for (int j = lane; j < lk; j += 32) {
    const float pj = sm_load(p[j]);
    g[j] = sm_store<T>(pj != 0.f ? pj * (sm_load(g[j]) - dot) * scale : 0.f);
  }
}

void check_scores(const Tensor& t, const char* what) {
  MH_CHECK(t.device() == Device::cuda, what, ": tensor must be on the GPU");
  MH_CHECK(t.ndim() == 4, what, ": expected [B, H, Lq, Lk], got ", shape_str(t.shape()));
  MH_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f16, what,
           ": F32, BF16 or F16, not ", dtype_name(t.dtype()));
  MH_CHECK(t.dim(3) <= (int64_t{1} << 30), what, ": Lk = ", t.dim(3));
}

unsigned sm_blocks(int64_t rows) {
  const int64_t blocks = (rows + kSmRowsPerBlock - 1) / kSmRowsPerBlock;
  MH_CHECK(blocks <= 0x7fffffff, "masked softmax: ", rows, " rows");
  return static_cast<unsigned>(blocks);
}

}  // namespace

void masked_softmax_fwd(Tensor& scores,          // [B, H, Lq, Lk] (=, in place)
                        const int32_t* key_len,  // [B] device
                        bool causal, double scale, cudaStream_t s) {
  check_scores(scores, "masked_softmax_fwd");
  MH_CHECK(key_len, "masked_softmax_fwd: key lengths required");
  const int64_t heads = scores.dim(1), lq = scores.dim(2);
  const int lk = static_cast<int>(scores.dim(3));
  const int64_t rows = scores.dim(0) * heads * lq;
  if (rows == 0 || lk == 0) return;
  const unsigned blocks = sm_blocks(rows);
  const float sc = static_cast<float>(scale);
  switch (scores.dtype()) {
    case DType::f32:
      masked_softmax_fwd_kernel<float><<<blocks, kSmThreads, 0, s>>>(
          static_cast<float*>(scores.raw()), key_len, rows, heads, lq, lk, causal, sc);
      break;
    case DType::bf16:
      masked_softmax_fwd_kernel<__nv_bfloat16><<<blocks, kSmThreads, 0, s>>>(
          static_cast<__nv_bfloat16*>(scores.raw()), key_len, rows, heads, lq, lk, causal, sc);
      break;
    default:
      masked_softmax_fwd_kernel<__half><<<blocks, kSmThreads, 0, s>>>(
          static_cast<__half*>(scores.raw()), key_len, rows, heads, lq, lk, causal, sc);
      break;
  }
  MH_CUDA_CHECK_LAUNCH();
}

void masked_softmax_bwd(const Tensor& probs,  // [B, H, Lq, Lk]
                        Tensor& grad,         // [B, H, Lq, Lk]: dP in, dS out (=)
                        double scale, cudaStream_t s) {
  check_scores(probs, "masked_softmax_bwd probs");
  check_scores(grad, "masked_softmax_bwd grad");
  MH_CHECK(probs.shape() == grad.shape() && probs.dtype() == grad.dtype(),
           "masked_softmax_bwd: probs ", shape_str(probs.shape()), dtype_name(probs.dtype()),
           " vs grad ", shape_str(grad.shape()), dtype_name(grad.dtype()));
  const int lk = static_cast<int>(probs.dim(3));
  const int64_t rows = probs.rows2d();
  if (rows == 0 || lk == 0) return;
  const unsigned blocks = sm_blocks(rows);
  const float sc = static_cast<float>(scale);
  switch (probs.dtype()) {
    case DType::f32:
      masked_softmax_bwd_kernel<float><<<blocks, kSmThreads, 0, s>>>(
          static_cast<const float*>(probs.raw()), static_cast<float*>(grad.raw()), rows, lk, sc);
      break;
    case DType::bf16:
      masked_softmax_bwd_kernel<__nv_bfloat16>
          <<<blocks, kSmThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(probs.raw()),
                                         static_cast<__nv_bfloat16*>(grad.raw()), rows, lk, sc);
      break;
    default:
      masked_softmax_bwd_kernel<__half><<<blocks, kSmThreads, 0, s>>>(
          static_cast<const __half*>(probs.raw()), static_cast<__half*>(grad.raw()), rows, lk, sc);
      break;
  }
  MH_CUDA_CHECK_LAUNCH();
}

}  // namespace mh::cuda
