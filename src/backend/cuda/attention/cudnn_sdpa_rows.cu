// The bookkeeping kernels around cuDNN's SDPA (cudnn_sdpa_rows.h): sequence lengths and ragged
// offsets from the problem's device arrays, and zeroing the rows cuDNN does not write.
//
//   sdpa_seq_info   seq_q, seq_kv [B] I32; off_q, off_k, off_lse [B + 1] I64   "="
//   sdpa_zero_rows  x [rows, row_bytes]                                          "=" 0 on some rows
#include <cstdint>

#include "backend/cuda/attention/cudnn_sdpa_rows.h"
#include "backend/cuda/attention/cudnn_sdpa_rows_kernels.cuh"
#include "backend/cuda/cuda_check.h"

namespace mh::cuda {

void sdpa_seq_info(const AttnProblem& p, int32_t* seq_q, int32_t* seq_kv, int64_t* off_q,
                   int64_t* off_k, int64_t* off_lse, cudaStream_t s) {
  MH_CHECK(p.batch > 0 && seq_q && seq_kv, "sdpa_seq_info: empty batch or null output");
  MH_CHECK(p.packed() ? p.cu_seqlens_k && off_q && off_k && off_lse : p.key_len != nullptr,
           "sdpa_seq_info: the problem's lengths or the offset outputs are missing");
  const int blocks = sdpa_seq_info_blocks(p.batch);
  sdpa_seq_info_kernel<<<blocks, kInfoThreads, 0, s>>>(
      p.batch, p.max_len_q, p.max_len_k, p.row_elems(), p.heads, p.key_len, p.cu_seqlens_q,
      p.cu_seqlens_k, seq_q, seq_kv, off_q, off_k, off_lse);
  MH_CUDA_CHECK_LAUNCH();
}

void sdpa_zero_rows(void* x, int64_t row_bytes, int batch, int max_len, const int32_t* cu_seqlens,
                    const int32_t* keep, cudaStream_t s) {
  MH_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0 && row_bytes % 16 == 0,
           "sdpa_zero_rows: rows must be 16-byte aligned (row_bytes ", row_bytes, ")");
  if (batch <= 0 || max_len <= 0 || row_bytes == 0) return;
  const dim3 grid = sdpa_zero_rows_grid(batch, max_len);
  MH_CHECK(batch <= 65535, "sdpa_zero_rows: batch ", batch, " over the grid's y limit");
  sdpa_zero_rows_kernel<<<grid, kZeroThreads, 0, s>>>(static_cast<uint4*>(x), row_bytes / 16,
                                                      max_len, cu_seqlens, keep);
  MH_CUDA_CHECK_LAUNCH();
}

}  // namespace mh::cuda
