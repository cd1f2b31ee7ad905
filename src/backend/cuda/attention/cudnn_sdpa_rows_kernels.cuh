// The kernels of cudnn_sdpa_rows.cu (see there and cudnn_sdpa_rows.h for what they compute), in a
// header of their own so that tests/emu/test_cudnn_sdpa_rows_emu.cpp can run this same source on
// the CPU (simt_emu.h), with the launchers' own grids (sdpa_seq_info_blocks, sdpa_zero_rows_grid).
#pragma once

#include <cuda_runtime.h>
#if defined(MH_SIMT_EMU)
#include "simt_emu.h"
#endif

#include <algorithm>
#include <cstdint>

namespace mh::cuda {

namespace {

#if defined(MH_SIMT_EMU)
using std::max;  // the device's integer min and max
using std::min;
#endif

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

// sdpa_seq_info_kernel's blocks of kInfoThreads: one thread per sequence and one more.
inline int sdpa_seq_info_blocks(int batch) {
  const int threads = batch + 1;
  return (threads + kInfoThreads - 1) / kInfoThreads;
}

// sdpa_zero_rows_kernel's grid: (kZeroRowsPerBlock-row groups of the longest sequence, batch).
inline dim3 sdpa_zero_rows_grid(int batch, int max_len) {
  return dim3((max_len + kZeroRowsPerBlock - 1) / kZeroRowsPerBlock, batch);
}

}  // namespace

}  // namespace mh::cuda
