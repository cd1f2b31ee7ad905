// The bookkeeping kernels around cuDNN's SDPA (cudnn_sdpa_rows.h): sequence lengths and ragged
// offsets from the problem's device arrays, and zeroing the rows cuDNN does not write.
//
//   sdpa_seq_info   seq_q, seq_kv [B] I32; off_q, off_k, off_lse [B + 1] I64   "="
//   sdpa_zero_rows  x [rows, row_bytes]                                          "=" 0 on some rows
#include <algorithm>
#include <cstdint>

#include "backend/cuda/attention/cudnn_sdpa_rows.h"
#include "backend/cuda/cuda_check.h"

namespace mh::cuda {

namespace {

constexpr int kInfoThreads = 128;
constexpr int kZeroThreads = 128;
constexpr int kZeroRowsPerBlock = 4;

// Thread b < batch writes the lengths of sequence b; threads b <= batch the offsets.
__global__ void sdpa_seq_info_kernel(int batch, int max_len_q, int max_len_k, int64_t row_elems,
                                     int heads, const int32_t* __restrict__ key_len,
                                     const int32_t* __restrict__ cu_q,
                                     const int32_t* __restrict__ cu_k, int32_t* __restrict__ seq_q,
                                     int32_t* __restrict__ seq_kv, int64_t* __restrict__ off_q,
                                     int64_t* __restrict__ off_k, int64_t* __restrict__ off_lse) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b > batch) return;
  if (cu_q) {  // packed
    off_q[b] = cu_q[b] * row_elems;
    off_k[b] = cu_k[b] * row_elems;
    off_lse[b] = static_cast<int64_t>(cu_q[b]) * heads;
  }
  if (b == batch) return;
  const int lq = cu_q ? cu_q[b + 1] - cu_q[b] : max_len_q;
  const int lk = cu_q ? cu_k[b + 1] - cu_k[b] : min(max(key_len[b], 0), max_len_k);
  seq_q[b] = lk > 0 ? lq : 0;
  seq_kv[b] = lk;
}

// Block (x, b) looks at rows [x · R, x · R + R) of sequence b and zeroes those at or past keep[b].
__global__ void sdpa_zero_rows_kernel(uint4* __restrict__ x, int64_t row_vecs, int max_len,
                                      const int32_t* __restrict__ cu,
                                      const int32_t* __restrict__ keep) {
  const int b = blockIdx.y;
  const int64_t start = cu ? cu[b] : static_cast<int64_t>(b) * max_len;
  const int len = cu ? cu[b + 1] - cu[b] : max_len;
  const int first = max(static_cast<int>(blockIdx.x) * kZeroRowsPerBlock, max(keep[b], 0));
  const int last = min(static_cast<int>(blockIdx.x + 1) * kZeroRowsPerBlock, len);
  const uint4 zero = make_uint4(0, 0, 0, 0);
  for (int i = first; i < last; ++i) {
    uint4* row = x + (start + i) * row_vecs;
    for (int64_t v = threadIdx.x; v < row_vecs; v += blockDim.x) row[v] = zero;
  }
}

}  // namespace

void sdpa_seq_info(const AttnProblem& p, int32_t* seq_q, int32_t* seq_kv, int64_t* off_q,
                   int64_t* off_k, int64_t* off_lse, cudaStream_t s) {
  MH_CHECK(p.batch > 0 && seq_q && seq_kv, "sdpa_seq_info: empty batch or null output");
  MH_CHECK(p.packed() ? p.cu_seqlens_k && off_q && off_k && off_lse : p.key_len != nullptr,
           "sdpa_seq_info: the problem's lengths or the offset outputs are missing");
  const int threads = p.batch + 1;
  const int blocks = (threads + kInfoThreads - 1) / kInfoThreads;
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
  const dim3 grid((max_len + kZeroRowsPerBlock - 1) / kZeroRowsPerBlock, batch);
  MH_CHECK(batch <= 65535, "sdpa_zero_rows: batch ", batch, " over the grid's y limit");
  sdpa_zero_rows_kernel<<<grid, kZeroThreads, 0, s>>>(static_cast<uint4*>(x), row_bytes / 16,
                                                      max_len, cu_seqlens, keep);
  MH_CUDA_CHECK_LAUNCH();
}

}  // namespace mh::cuda
