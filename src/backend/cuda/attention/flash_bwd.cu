// Fused attention backward (model.attention: custom), FlashAttention-2's scheme on sm_80+ tensor
// cores. Three launches:
//   1. dot_do_o:  D = rowsum(dO ∘ O) per (row, head), fp32, into the workspace; dQ's fp32
//                 accumulator is zeroed (cudaMemsetAsync), or, when no sequence has more keys
//                 than a block (bwd_dq_direct: a translation batch's sentences), dQ itself.
//   2. flash_bwd: a block owns 64 keys of one (sequence, head), keeps dK and dV for them in
//                 registers, and walks the query blocks that can see them. Per query block it
//                 recomputes Sᵀ = K Qᵀ and Pᵀ = exp(scale·Sᵀ − lse) from the saved log-sum-exp,
//                   dV += (P∘Z)ᵀ dO,  dPᵀ = V dOᵀ,  dSᵀ = Pᵀ ∘ ((dP∘Z)ᵀ − D) · scale,
//                   dK += dSᵀ Q,      dQ += dS K  (fp32 atomics: blocks of other keys add too;
//                                                    pairs as one float2 atomic on sm_90; with
//                                                    bwd_dq_direct dQ is complete, stored rounded),
//                 where Z is the dropout mask scaled by 1/(1-p) (all ones without dropout).
//                 Each warp owns 16 keys, so Pᵀ and dSᵀ stay in registers for dV and dK; dS goes
//                 through shared memory once, for dQ, whose rows span all four warps' keys.
//                 The query blocks are software-pipelined: block m + 1's Q and dO (cp.async, two
//                 shared buffers) and its lse and D (registers) load while block m is computed.
//   3. convert:   dQ = the fp32 accumulator, rounded to bf16/fp16 (not with bwd_dq_direct, which
//                 also spares the accumulator's zeroing and atomics: for 64-token sentences those
//                 passes move about as many bytes as the main kernel reads).
// D = rowsum(dO ∘ O) equals rowsum(dP∘Z ∘ P) also with dropout, since O = (P∘Z) V.
// Problem, layouts, masks and dropout bits: attention_problem.h.
//
// Resources of flash_bwd (nvcc 13.0 -Xptxas -v; bf16 and fp16 alike), 128 threads:
//   head_dim 64  (kBM 64): 255 registers (sm_90a), 237 (sm_80), no spills; 57 KiB shared
//   head_dim 128 (kBM 32): 255 registers, no spills (sm_90a), 8 bytes spilled (sm_80);
//                          68.5 KiB shared
//   head_dim 64, 128 keys (MH_FLASH_BWD_KEYS=128, 256 threads): 252 registers (sm_90a), 236
//                          (sm_80), no spills; 81 KiB shared; one block (8 warps) per SM
// and of flash_bwd_tiles (MH_FLASH_BWD=tiles, head_dim 64, FlashAttention-2's layout: 128 keys ×
// 128 queries per step, 256 threads): 253 registers (sm_90a), 255 (sm_80), no spills, dropout
// included; 162 KiB shared (K, V; Q and dO twice; P and dS; lse and D twice); one block per SM.
//   (2026-11-29: load_tile, which copies the Q and dO blocks, unrolled with constant strides
//   (flash_common.cuh); the tiles kernel's loop lost 19% of its instructions (sm_90a SASS, the
//   path without dropout), sm_90a's head_dim-128 kernel its 4 bytes of spill.)
//   (The dQ store of bwd_dq_direct, a branch on a kernel argument, cost 2 registers and sm_90a's
//   head_dim-128 kernel 4 bytes of spill; the branch placed outside the row loop spilled more.)
//   (Steps without a mask to evaluate, all_visible, took 6-9 registers off. Deciding dropout
//   once per step instead of per element put 3-4 back, and 8 bytes of spill on sm_80's head_dim
//   128, since the 32 exps of a thread now overlap: without dropout the SASS has no branch
//   between them, where it had one region per element, each waiting on its exp.)
// Two blocks (8 warps) per SM, as FlashAttention-2's one block of 8 warps. On an H200 the version
// without the pipeline and with dropout tested per element ran at 82–88 TFLOP/s (head_dim 64,
// bf16, L 1024–4096), a third of PyTorch's flash backward (docs/perf/attention.md); this one has
// not been timed on a GPU yet.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_bwd_kernel.cuh"
#include "backend/cuda/attention/flash_bwd_passes.h"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace mh::cuda {

namespace {

using namespace flash;

// --- 1. D = rowsum(dO ∘ O): one warp per (row, head) -----------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(256)
    dot_do_o_kernel(const T* __restrict__ dout, const T* __restrict__ o, float* __restrict__ dsum,
                    int64_t total_q, int heads) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (w >= total_q * heads) return;
  const int lane = threadIdx.x & 31;
  const int64_t row = w / heads;
  const int h = static_cast<int>(w % heads);
  const T* a = dout + row * heads * D + h * D;
  const T* c = o + row * heads * D + h * D;
  float acc = 0.f;
#pragma unroll
  for (int i = lane; i < D; i += 32) acc += to_f(a[i]) * to_f(c[i]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) dsum[h * total_q + row] = acc;
}

// --- 3. dQ = round(dq_acc) ---------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(256)
    convert_dq_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<T, __half>)
      dq[i] = __float2half(acc[i]);
    else
      dq[i] = __float2bfloat16(acc[i]);
  }
}

// Workspace: the fp32 dQ accumulator [total_q, H·D], then D [H, total_q] (both 16-byte aligned).
int64_t dq_acc_elems(const AttnProblem& p) {
  return (p.total_q * p.row_elems() + 3) / 4 * 4;
}

// Keys per block of flash_bwd at head_dim 64: 64 (4 warps, two blocks per SM) by default, or
// 128 (8 warps, one block per SM, as FlashAttention-2): each query block's Q, dO and dQ atomics
// then serve twice the keys. MH_FLASH_BWD_KEYS=128 selects it, so that one GPU run can time both;
// the default follows the measurements (docs/perf/attention.md).
int bwd_keys_per_block() {
  static const int keys = [] {
    const char* env = std::getenv("MH_FLASH_BWD_KEYS");
    if (!env || !*env) return kBwdBN;
    const std::string v = env;
    if (v != "64" && v != "128")
      user_error("MH_FLASH_BWD_KEYS=", v, ": expected 64 or 128 (keys per flash_bwd block)");
    return std::stoi(v);
  }();
  return keys;
}

// The head_dim-64 backward's layout: "strips" (flash_bwd_kernel, a 16-key strip per warp; the
// default) or "tiles" (flash_bwd_tiles_kernel, FlashAttention-2's 2-D warp tiles over 128 keys ×
// 128 queries, P and dS through shared memory). MH_FLASH_BWD=tiles selects it, so that one GPU
// run can time both; the default follows the measurements (docs/perf/attention.md).
bool bwd_tiles() {
  static const bool tiles = [] {
    const char* env = std::getenv("MH_FLASH_BWD");
    const std::string v = env ? env : "";
    if (v.empty() || v == "strips") return false;
    if (v == "tiles") return true;
    user_error("MH_FLASH_BWD=", v,
               ": expected strips or tiles (the head_dim-64 backward's layout over the warps)");
  }();
  return tiles;
}

template <typename T>
void launch_bwd_tiles(const AttnProblem& pr, const BwdParams<T>& p, cudaStream_t s) {
  const int smem = bwd_tiles_smem_bytes<T>();
  static const bool fits = [smem] {
    int dev = 0, optin = 0;
    MH_CUDA_CHECK(cudaGetDevice(&dev));
    MH_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return optin >= smem;
  }();
  if (!fits)
    user_error("MH_FLASH_BWD=tiles needs ", smem,
               " bytes of shared memory per block (A100, H100), more than this GPU offers");
  set_smem_limit_once(flash_bwd_tiles_kernel<T>, smem);
  const dim3 grid((pr.max_len_k + kTilesBN - 1) / kTilesBN, pr.heads, pr.batch);
  if (grid.x > 0) {
    flash_bwd_tiles_kernel<T><<<grid, kTilesThreads, smem, s>>>(p);
    MH_CUDA_CHECK_LAUNCH();
  }
}

template <typename T, int D, int BN>
void launch_bwd_main(const AttnProblem& pr, const BwdParams<T>& p, cudaStream_t s) {
  const int smem = bwd_smem_bytes<T, D, BN>();
  set_smem_limit_once(flash_bwd_kernel<T, D, BN>, smem);
  const dim3 grid((pr.max_len_k + BN - 1) / BN, pr.heads, pr.batch);
  if (grid.x > 0) {
    flash_bwd_kernel<T, D, BN><<<grid, bwd_threads(BN), smem, s>>>(p);
    MH_CUDA_CHECK_LAUNCH();
  }
}

template <typename T, int D>
void launch_bwd(const AttnProblem& pr, const AttnBwdIO& io, void* workspace, cudaStream_t s) {
  const bool tiles = D == 64 && bwd_tiles();
  const int bn = tiles ? kTilesBN : D == 64 ? bwd_keys_per_block() : kBwdBN;
  const BwdScratch w = flash_bwd_prologue(pr, io, workspace, s, bwd_dq_direct(pr, bn));
  const BwdParams<T> p = bwd_params<T>(pr, io, w.dq_acc, w.dsum, w.dq_direct);
  if constexpr (D == 64) {
    if (tiles) {
      launch_bwd_tiles<T>(pr, p, s);
    } else if (bn == 128) {
      launch_bwd_main<T, D, 128>(pr, p, s);
    } else {
      launch_bwd_main<T, D, kBwdBN>(pr, p, s);
    }
  } else {
    launch_bwd_main<T, D, kBwdBN>(pr, p, s);
  }
  flash_bwd_epilogue(pr, w, io.dq, s);
}

template <typename T, int D>
void dot_do_o(const AttnProblem& pr, const AttnBwdIO& io, float* dsum, cudaStream_t s) {
  const int64_t rows = pr.total_q * pr.heads;
  if (rows == 0) return;
  dot_do_o_kernel<T, D><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, s>>>(
      static_cast<const T*>(io.dout), static_cast<const T*>(io.o), dsum, pr.total_q, pr.heads);
  MH_CUDA_CHECK_LAUNCH();
}

template <typename T>
void convert_dq(const float* acc, void* dq, int64_t n, cudaStream_t s) {
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 4096);
  convert_dq_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, s>>>(acc, static_cast<T*>(dq), n);
  MH_CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace flash {

BwdScratch flash_bwd_prologue(const AttnProblem& pr, const AttnBwdIO& io, void* workspace,
                              cudaStream_t s, bool dq_direct) {
  BwdScratch w;
  w.dq_acc = static_cast<float*>(workspace);
  w.dsum = w.dq_acc + dq_acc_elems(pr);
  w.dq_direct = dq_direct;
  if (dq_direct)
    MH_CUDA_CHECK(cudaMemsetAsync(io.dq, 0, pr.total_q * pr.row_elems() * dtype_size(pr.dtype), s));
  else
    MH_CUDA_CHECK(cudaMemsetAsync(w.dq_acc, 0, pr.total_q * pr.row_elems() * sizeof(float), s));
  const bool bf16 = pr.dtype == DType::bf16;
  if (pr.head_dim == 64)
    bf16 ? dot_do_o<__nv_bfloat16, 64>(pr, io, w.dsum, s) : dot_do_o<__half, 64>(pr, io, w.dsum, s);
  else
    bf16 ? dot_do_o<__nv_bfloat16, 128>(pr, io, w.dsum, s)
         : dot_do_o<__half, 128>(pr, io, w.dsum, s);
  return w;
}

void flash_bwd_epilogue(const AttnProblem& pr, const BwdScratch& w, void* dq, cudaStream_t s) {
  const int64_t n = pr.total_q * pr.row_elems();
  if (n == 0 || w.dq_direct) return;
  pr.dtype == DType::bf16 ? convert_dq<__nv_bfloat16>(w.dq_acc, dq, n, s)
                          : convert_dq<__half>(w.dq_acc, dq, n, s);
}

void check_bwd_args(const AttnProblem& p, const AttnBwdIO& io, const void* workspace,
                    const char* who) {
  MH_CHECK(io.q && io.k && io.v && io.o && io.dout && io.lse && io.dq && io.dk && io.dv, who,
           ": null pointer");
  for (const void* ptr : {io.q, io.k, io.v, io.o, io.dout, static_cast<const void*>(io.dq),
                          static_cast<const void*>(io.dk), static_cast<const void*>(io.dv)})
    MH_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0, who,
             ": Q, K, V, O and the gradients must be 16-byte aligned");
  MH_CHECK(workspace || flash_attention_bwd_workspace(p) == 0, who, ": workspace");
  MH_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0, who,
           ": workspace must be 16-byte aligned");
}

}  // namespace flash

size_t flash_attention_bwd_workspace(const AttnProblem& p) {
  return static_cast<size_t>(dq_acc_elems(p) + p.heads * p.total_q) * sizeof(float);
}

void flash_attention_bwd(const AttnProblem& p, const AttnBwdIO& io, void* workspace,
                         cudaStream_t s) {
  check_attn_problem(p, "flash_attention_bwd");
  std::string why;
  MH_CHECK(flash_supports(p, &why), "flash_attention_bwd: ", why);
  check_bwd_args(p, io, workspace, "flash_attention_bwd");
  if (p.batch == 0) return;
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64)
    bf16 ? launch_bwd<__nv_bfloat16, 64>(p, io, workspace, s)
         : launch_bwd<__half, 64>(p, io, workspace, s);
  else
    bf16 ? launch_bwd<__nv_bfloat16, 128>(p, io, workspace, s)
         : launch_bwd<__half, 128>(p, io, workspace, s);
}

}  // namespace mh::cuda
