// Launchers of the CUDA kernels, one family per file under kernels/ (each .cu holds the kernels
// first, then these launchers). Each mirrors the Backend method of the same name (see
// backend/backend.h for shapes and = / += semantics) and takes the stream explicitly.
//
// Dtypes. "compute" tensors (activations, weights as used in forward) are F32, BF16 or F16;
// "grad" tensors of parameters are F32 (fp32 gradients and master weights under mixed
// precision) or the compute dtype when that is F32. Statistics (LayerNorm mean/rstd) are F32.
// Accumulation is always in fp32. Every launcher checks dtypes/shapes with MH_CHECK and calls
// MH_CUDA_CHECK_LAUNCH() after launching. All pointers are device pointers unless noted.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace mh::cuda {

// --- elementwise.cu --------------------------------------------------------------------------
void add_bias(Tensor& y, const Tensor& bias,
              cudaStream_t s);  // y[n,:] += bias (bias F32 or y's dtype)
void bias_grad(const Tensor& dy, Tensor& dbias, cudaStream_t s);  // dbias (F32 or dy's) += Σ_n dy
void add(const Tensor& a, const Tensor& b, Tensor& out, cudaStream_t s);
void scale(Tensor& x, double s_, cudaStream_t s);
void fill_zero(Tensor& x, cudaStream_t s);
// dst = src converted (F32 <-> BF16 <-> F16, any pair; same numel).
void cast(const Tensor& src, Tensor& dst, cudaStream_t s);
void activation_fwd(ActKind kind, const Tensor& x, Tensor& y, cudaStream_t s);
void activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx, cudaStream_t s);

// --- dropout.cu: the same Philox bits as the CPU backend (core/philox.h) -----------------------
void dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y,
                 cudaStream_t s);
void dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset, Tensor& dx,
                 cudaStream_t s);

// --- embedding.cu ----------------------------------------------------------------------------
// y = table[ids] * scale + pe[pos]; ids [B, L] I32 on the device; table/pe/y compute dtype.
void embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe, double scale, Tensor& y,
               cudaStream_t s);
// dtable (F32 or compute) += scale * dy scattered by ids (atomicAdd in fp32).
void embed_bwd(const Tensor& ids, const Tensor& dy, double scale, Tensor& dtable, cudaStream_t s);

// --- layernorm.cu: one warp (or block) per row, fp32 statistics --------------------------------
void layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, Tensor& y,
                   Tensor& mean, Tensor& rstd, cudaStream_t s);
// dx = ...; dweight, dbias (F32) += ... (column sums: per-block partials, then a reduction)
void layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                   const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias, cudaStream_t s);
// sum = x + dropout(body), y = layernorm(sum) in one pass (Backend::residual_layernorm_fwd; the
// dropout mask is dropout_fwd's). Returns false, launching nothing, when the rows do not fit the
// fused kernel (D % 4 != 0, D > 1024, or a row not 16-byte aligned): the caller composes then.
bool residual_layernorm_fwd(const Tensor& x, const Tensor& body, double p, uint64_t seed,
                            uint64_t offset, const Tensor& weight, const Tensor& bias, double eps,
                            Tensor& sum, Tensor& y, Tensor& mean, Tensor& rstd, cudaStream_t s);

// --- softmax_xent.cu: one block per row; logits read twice, probabilities never stored --------
// Sums (loss, nll, tokens) go to `sums` (device F64 [3], accumulated with atomicAdd; the caller
// zeroes it); dlogits (same dtype as logits) = grad_scale * (softmax - smoothed target).
void softmax_xent(const Tensor& logits, const Tensor& labels, int64_t pad_id, double smoothing,
                  double grad_scale, Tensor* dlogits, Tensor& sums, cudaStream_t s);

// --- optimizer.cu -----------------------------------------------------------------------------
// Multi-tensor Adam: one launch over many parameters (pointer lists in device memory built by
// the caller once). params/m/v/grads F32. Same formula as CpuBackend::adam_step.
struct AdamTensorList {
  float** params;  // device array of device pointers
  float** grads;
  float** m;
  float** v;
  const int64_t* sizes;  // device array
  int count;
  int64_t max_size;
  // Optional device array of [count] pointers (null entries allowed): the updated params rounded
  // to bf16 (copies_bf16) or fp16, written in the same pass.
  void** copies = nullptr;
  bool copies_bf16 = true;
};
void adam_multi(const AdamTensorList& list, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, double grad_scale, cudaStream_t s);
// out (device F64 [1]) += Σ x² (F32/BF16/F16 input; for the global gradient norm and inf/nan
// detection: a non-finite input makes the sum non-finite).
void sum_squares(const Tensor& x, Tensor& out, cudaStream_t s);
// out (device F64 [1]) += Σ x² over count F32 tensors in one launch. Device arrays built by the
// caller: xs [count] pointers, sizes [count] (each > 0), first_block [count + 1] from
// sum_squares_first_blocks(sizes); blocks = first_block[count].
constexpr int64_t kSumSquaresChunk = 64 * 1024;  // elements per block
// Block b sums chunk b − first[t] of the tensor t with first[t] <= b < first[t + 1].
inline std::vector<int64_t> sum_squares_first_blocks(const std::vector<int64_t>& sizes,
                                                     int64_t chunk = kSumSquaresChunk) {
  std::vector<int64_t> first(sizes.size() + 1, 0);
  for (size_t t = 0; t < sizes.size(); ++t)
    first[t + 1] = first[t] + (sizes[t] + chunk - 1) / chunk;
  return first;
}
struct SumSquaresList {
  const float* const* xs;
  const int64_t* sizes;
  const int64_t* first_block;
  int count;
  int64_t blocks;
};
void sum_squares_multi(const SumSquaresList& list, Tensor& out, cudaStream_t s);

// --- attention_naive.cu: the reference GPU attention (cuBLAS batched GEMMs + this softmax) -----
// In place over scores [B, H, Lq, Lk] (compute dtype): scale, key-padding + causal mask, softmax
// in fp32; masked entries 0. key_len: device I32 [B].
void masked_softmax_fwd(Tensor& scores, const int32_t* key_len, bool causal, double scale,
                        cudaStream_t s);
// In place: dS = P ∘ (dP − rowsum(dP ∘ P)) · scale, dP given in `grad` [B, H, Lq, Lk].
void masked_softmax_bwd(const Tensor& probs, Tensor& grad, double scale, cudaStream_t s);

}  // namespace mh::cuda
