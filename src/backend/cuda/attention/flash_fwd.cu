// Fused attention forward (model.attention: custom), FlashAttention-2's scheme on sm_80+ tensor
// cores (mma.sync m16n8k16, bf16/fp16 in, fp32 accumulate). The L×L score matrix never reaches
// device memory: a block owns 64 query rows of one (sequence, head), keeps its Q tile in
// registers, streams 64-key tiles of K and V through shared memory (cp.async: V[n] loads while
// S = Q K[n]ᵀ is computed, K[n+1] while O += P V[n] is), and keeps the online-softmax state
// (row max, row sum) in registers; O and the row log-sum-exp are written once at the end.
// Each of the 4 warps owns 16 query rows, so the softmax needs no shared memory: a row's 64
// scores live in the 4 lanes of one quad.
// Problem, layouts, masks and dropout bits: attention_problem.h.
//
// Resources (nvcc 13.0 -Xptxas -v; bf16 and fp16 alike), 128 threads, no spills:
//   head_dim 64:  165 registers (sm_90a), 167 (sm_80), capped for 3 blocks per SM (the
//                 launch bounds' minimum); 24 KiB dynamic shared memory
//   head_dim 128: 239 registers (sm_90a), 228 (sm_80); 48 KiB dynamic shared memory
//   head_dim 64, MH_FLASH_FWD_TILE (rows x keys):
//     64x128 (4 warps of 16 rows): 227 registers (sm_90a), 215 (sm_80); 40 KiB
//     128x64 (4 warps of 32 rows, Q read per k-step): 252 (sm_90a), 247 (sm_80); 32 KiB
//     128x128 (4 warps of 32 rows): 255 registers and spills, 80 bytes stored / 80 loaded
//       (sm_90a), 96 / 112 (sm_80); 48 KiB. S (128 floats per thread) and O (64) leave little
//       room.
// Instructions: the K, V and Q tile copies (load_tile, flash_common.cuh) unroll with constant
// strides since 2026-11-29. Before, each cost about 100 instructions (a rolled loop, a 64-bit
// multiply and a branch per 16-byte chunk). The default kernel's loop over key tiles held about
// 1010 SASS instructions besides the dropout code (sm_90a, bf16; both mask paths counted) for
// its 64 HMMA; with the copies unrolled about 670, with the scale folded into the exponent's
// FMA (32 FMUL and 32 FADD per tile become 32 FFMA) 611, and with the copies' source pointers
// advanced by a 64-bit add per pass rather than recomputed as products 538. At 3 blocks of 4
// warps per SM, issue slots, not the tensor cores, were the likelier bound.
// Without the cap the default took 249 registers (2 blocks per SM); with it, 167, still 3.
// Tiles with every key valid and (causal) none past the block's first query skip the mask.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_fwd_kernel.cuh"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace mh::cuda {

namespace {

using namespace flash;

// Tiles of the head_dim-64 forward, query rows x keys: 64x64 by default; MH_FLASH_FWD_TILE picks
// 64x128, 128x64 or 128x128 (FlashAttention-2's for head_dim 64) instead, so that one GPU run can
// time them all (tools/gpu/check.sh); the default follows the measurements. The 128-row tiles
// have 4 warps of 32 rows (FlashAttention-2's layout: each K and V fragment read from shared
// memory feeds two mma tiles); until 2026-11-29 they had 8 warps of 16 rows, never timed.
struct FwdTile {
  int bm, bn;
};
FwdTile fwd_tile_d64() {
  static const FwdTile tile = [] {
    const char* env = std::getenv("MH_FLASH_FWD_TILE");
    const std::string v = env ? env : "";
    if (v.empty() || v == "64x64") return FwdTile{kFwdBM, kFwdBN};
    if (v == "64x128") return FwdTile{64, 128};
    if (v == "128x64") return FwdTile{128, 64};
    if (v == "128x128") return FwdTile{128, 128};
    user_error("MH_FLASH_FWD_TILE=", v,
               ": expected 64x64, 64x128, 128x64 or 128x128 (query rows x keys per tile)");
  }();
  return tile;
}

template <typename T, int D, int BM, int BN, int WM>
void launch_fwd_tiles(const AttnProblem& pr, const FwdParams<T>& p, cudaStream_t s) {
  const int smem = fwd_smem_bytes<T, D, BM, BN>();
  set_smem_limit_once(flash_fwd_kernel<T, D, BM, BN, WM>, smem);
  const dim3 grid((pr.max_len_q + BM - 1) / BM, pr.heads, pr.batch);
  flash_fwd_kernel<T, D, BM, BN, WM><<<grid, fwd_threads(BM, WM), smem, s>>>(p);
  MH_CUDA_CHECK_LAUNCH();
}

template <typename T, int D>
void launch_fwd(const AttnProblem& pr, const AttnFwdIO& io, cudaStream_t s) {
  const FwdParams<T> p = fwd_params<T>(pr, io);
  if constexpr (D == 64) {
    const FwdTile t = fwd_tile_d64();
    if (t.bm == 64 && t.bn == 128) return launch_fwd_tiles<T, D, 64, 128, 16>(pr, p, s);
    if (t.bm == 128 && t.bn == 64) return launch_fwd_tiles<T, D, 128, 64, 32>(pr, p, s);
    if (t.bm == 128 && t.bn == 128) return launch_fwd_tiles<T, D, 128, 128, 32>(pr, p, s);
  }
  launch_fwd_tiles<T, D, kFwdBM, kFwdBN, kFwdWM>(pr, p, s);
}

}  // namespace

void flash_attention_fwd(const AttnProblem& p, const AttnFwdIO& io, cudaStream_t s) {
  check_attn_problem(p, "flash_attention_fwd");
  std::string why;
  MH_CHECK(flash_supports(p, &why), "flash_attention_fwd: ", why);
  MH_CHECK(io.q && io.k && io.v && io.o && io.lse, "flash_attention_fwd: null pointer");
  for (const void* ptr : {io.q, io.k, io.v, static_cast<const void*>(io.o)})
    MH_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0,
             "flash_attention_fwd: Q, K, V and O must be 16-byte aligned");
  if (p.batch == 0 || p.max_len_q == 0) return;
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64)
    bf16 ? launch_fwd<__nv_bfloat16, 64>(p, io, s) : launch_fwd<__half, 64>(p, io, s);
  else
    bf16 ? launch_fwd<__nv_bfloat16, 128>(p, io, s) : launch_fwd<__half, 128>(p, io, s);
}

}  // namespace mh::cuda
