// Device-side bookkeeping around cuDNN's SDPA (cudnn_sdpa.cpp), on the problem's own device
// arrays so nothing waits for the host: the per-sequence lengths and ragged offsets cuDNN reads,
// and zeroing the rows cuDNN leaves unwritten. Kernels in cudnn_sdpa_rows.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/attention/attention_problem.h"

namespace mh::cuda {

// What cuDNN's graph reads besides the tensors, per sequence b of the problem (all "="):
//   seq_q[b]   [B] I32   queries cuDNN computes: the sequence's query count, or 0 when it has
//                        no key (cuDNN then skips the sequence; sdpa_zero_rows writes its rows)
//   seq_kv[b]  [B] I32   visible keys: key_len[b] clamped to [0, max_len_k] (padded), or the
//                        sequence's key count (packed)
// and, in the packed form only (else pass null), ragged offsets in elements:
//   off_q[b]   [B + 1] I64   cu_seqlens_q[b] · H · d    (Q, O, dO, dQ)
//   off_k[b]   [B + 1] I64   cu_seqlens_k[b] · H · d    (K, V, dK, dV)
//   off_lse[b] [B + 1] I64   cu_seqlens_q[b] · H        (the statistics, token-major [total_q, H])
void sdpa_seq_info(const AttnProblem& p, int32_t* seq_q, int32_t* seq_kv, int64_t* off_q,
                   int64_t* off_k, int64_t* off_lse, cudaStream_t s);

// x = 0 on the rows i >= keep[b] of every sequence b: rows [b · max_len, (b + 1) · max_len)
// (cu_seqlens null: padded) or [cu_seqlens[b], cu_seqlens[b + 1]) (packed).
//   x [rows, row_bytes] (16-byte aligned, row_bytes a multiple of 16); keep [B] I32
void sdpa_zero_rows(void* x, int64_t row_bytes, int batch, int max_len, const int32_t* cu_seqlens,
                    const int32_t* keep, cudaStream_t s);

}  // namespace mh::cuda
