// One attention problem on the GPU, as the fused implementations see it: the custom flash-style
// kernels (flash_fwd.cu, flash_bwd.cu) and cuDNN's SDPA (cudnn_sdpa.cpp) take the same
// description, so tests and `multihead bench attention` drive either with one set of buffers.
//
// Layout. Q, O, dO, dQ are token rows of H·d elements (heads interleaved: the projections'
// output), K, V, dK, dV likewise; row r, head h starts at element r·H·d + h·d. Two batch forms:
//   padded: sequence b owns rows [b·max_len_q, (b+1)·max_len_q) of Q and [b·max_len_k, ...) of
//           K/V; all max_len_q query rows are computed; keys j >= key_len[b] are masked.
//   packed: sequence b owns rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) of Q and
//           [cu_seqlens_k[b], cu_seqlens_k[b+1]) of K/V; no padding rows exist, none are
//           computed (a translation batch costs what its real tokens cost).
// Masks: keys past the sequence's key count; causal = query i sees keys j <= i (positions within
// the sequence, top-left aligned when Lq != Lk, as CpuBackend::attention_fwd). A query row that
// sees no key outputs 0, has lse = +inf, and gets dQ = 0.
// Dropout (p > 0) keeps P[b, h, i, j] iff philox_uniform_at(seed, offset,
// ((b·H + h)·max_len_q + i)·max_len_k + j) >= p (core/philox.h): in the padded form exactly the
// mask of Backend::dropout_fwd over a [B, H, Lq, Lk] tensor, i.e. AttnArgs' definition.
// Statistics: lse (F32, H·total_q elements) holds what backward needs; its layout is private to
// the implementation that wrote it (custom: [H, total_q], the row log-sum-exp of scale·S).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/backend.h"
#include "core/tensor.h"

namespace mh::cuda {

struct AttnProblem {
  DType dtype = DType::bf16;  // of Q, K, V, O and the gradients: BF16 or F16
  int batch = 0, heads = 0, head_dim = 0;
  int max_len_q = 0, max_len_k = 0;  // padded: the padded lengths; packed: the longest sequence
  int64_t total_q = 0, total_k = 0;  // rows of Q and of K (padded: batch · max_len)
  // Exactly one of the two forms (device I32 arrays):
  const int32_t* key_len = nullptr;       // padded: [B] valid keys of each sequence
  const int32_t* cu_seqlens_q = nullptr;  // packed: [B + 1] row offsets of the queries
  const int32_t* cu_seqlens_k = nullptr;  // packed: [B + 1] row offsets of the keys
  bool causal = false;
  float scale = 0;  // softmax scale, usually 1/sqrt(head_dim)
  float dropout = 0;
  uint64_t seed = 0, offset = 0;

  bool packed() const { return cu_seqlens_q != nullptr; }
  int64_t row_elems() const { return int64_t{heads} * head_dim; }
};

struct AttnFwdIO {
  const void *q, *k, *v;
  void* o;
  float* lse;  // H · total_q
};

struct AttnBwdIO {
  const void *q, *k, *v, *o, *dout;
  const float* lse;  // as forward wrote it
  void *dq, *dk, *dv;
};

// The padded problem of a Backend attention call (CudaBackend's fused paths), its key lengths
// already on the device (`key_len_dev`; may be null when only asking what is supported).
AttnProblem padded_attn_problem(const AttnArgs& a, DType t, const int32_t* key_len_dev);

// Raises `kernel`'s dynamic shared-memory limit to `bytes` on the current device, once per
// (kernel, device): the launchers call it on every launch, the driver only the first time.
void set_smem_limit_once(const void* kernel, int bytes);
template <typename K>
void set_smem_limit_once(K* kernel, int bytes) {
  set_smem_limit_once(reinterpret_cast<const void*>(kernel), bytes);
}

// Checks the problem (dtypes, head_dim, lengths, pointers); a message naming what is wrong.
void check_attn_problem(const AttnProblem& p, const char* who);

// --- the custom kernels (flash_fwd.cu, flash_bwd.cu) -------------------------------------------
// What every flash kernel here computes, whatever the GPU: BF16/F16, head_dim 64 or 128; if not,
// why. flash_supports and flash_sm90_supports add their device requirements to it.
bool flash_shape_supported(const AttnProblem& p, std::string* why);
// Whether the custom kernels handle this problem (head_dim 64 or 128, BF16/F16); if not, why.
bool flash_supports(const AttnProblem& p, std::string* why);
void flash_attention_fwd(const AttnProblem& p, const AttnFwdIO& io, cudaStream_t s);
// Device scratch flash_attention_bwd needs, in bytes (fp32 dQ accumulator and rowsum(dO ∘ O)).
size_t flash_attention_bwd_workspace(const AttnProblem& p);
void flash_attention_bwd(const AttnProblem& p, const AttnBwdIO& io, void* workspace,
                         cudaStream_t s);

// --- the Hopper kernels (flash_fwd_sm90.cu, flash_bwd_sm90.cu; model.attention: hopper) ---------
// Whether the sm_90a wgmma/TMA kernels handle this problem on the current device (an sm_90 GPU,
// head_dim 64 or 128, BF16/F16); if not, why. The forward writes O and lse as
// flash_attention_fwd does, so either backward computes the gradients from them; the Hopper
// backward takes the same workspace as flash_attention_bwd.
bool flash_sm90_supports(const AttnProblem& p, std::string* why);
void flash_attention_fwd_sm90(const AttnProblem& p, const AttnFwdIO& io, cudaStream_t s);
void flash_attention_bwd_sm90(const AttnProblem& p, const AttnBwdIO& io, void* workspace,
                              cudaStream_t s);

}  // namespace mh::cuda
