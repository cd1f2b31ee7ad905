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

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/attention_naive_kernels.cuh"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

void check_scores(const Tensor& t, const char* what) {
  MH_CHECK(t.device() == Device::cuda, what, ": tensor must be on the GPU");
  MH_CHECK(t.ndim() == 4, what, ": expected [B, H, Lq, Lk], got ", shape_str(t.shape()));
  MH_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f16, what,
           ": F32, BF16 or F16, not ", dtype_name(t.dtype()));
  MH_CHECK(t.dim(3) <= (int64_t{1} << 30), what, ": Lk = ", t.dim(3));
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
