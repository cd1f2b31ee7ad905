// Fused attention backward for Hopper (model.attention: hopper), FlashAttention-3's scheme on
// sm_90a: wgmma (warpgroup MMA, bf16/fp16 in, fp32 accumulate), TMA and warp specialization.
// Three launches, the first and last shared with flash_bwd.cu (flash_bwd_passes.h):
//   1. D = rowsum(dO ∘ O) and the zeroed fp32 dQ accumulator;
//   2. flash_bwd_sm90: a block owns 128 keys of one (sequence, head) and keeps dK and dV for them
//      in registers, 64 keys per consumer warpgroup. A producer warpgroup gives up its registers
//      (setmaxnreg) and one of its warps streams the query blocks that see those keys: Q and dO
//      by TMA through a 2-stage ring (mbarriers full/empty per stage, as flash_fwd_sm90.cu), their
//      lse and D by its lanes. Per query block each consumer warpgroup computes, with wgmma,
//        Sᵀ = K Qᵀ and dPᵀ = V dOᵀ           (both operands from shared memory),
//        Pᵀ = exp2(Sᵀ·scale·log2e − lse), dSᵀ = Pᵀ ∘ ((dP∘Z)ᵀ − D) · scale   (registers),
//        dV += (P∘Z)ᵀ dO, dK += dSᵀ Q         (A from registers: an accumulator is an A operand),
//      writes dSᵀ to shared memory transposed (stmatrix.trans: dS, queries × keys), and after a
//      barrier of the two warpgroups computes its half of dQ = dS K over all 128 keys, which it
//      adds to the accumulator with fp32 atomics (pairs as one float2 atomic), or, with
//      MH_HOPPER_BWD_DQ=bulk, stores to a shared fp32 buffer that the producer warpgroup's second
//      warp adds to the accumulator row by row with bulk reductions (cp.reduce.async.bulk .add.f32:
//      FlashAttention-3's way, the copy engine's adds in place of 16 float2 atomics per thread and
//      step; the buffer handed over by two named barriers, full and empty);
//   3. dQ = the accumulator, rounded.
// Where no sequence has more than 128 keys (sm90_bwd_dq_direct: a translation batch, paper-base's
// 64-token sentences) a block's dQ rows are complete: it stores them rounded, and the prologue
// zeroes dQ instead of the accumulator, which is then neither added into nor converted (as
// flash_bwd.cu does with 64-key blocks; since 2026-11-29, emulator-checked).
// Z is the dropout mask scaled by 1/(1-p) (all ones without dropout); the bits are the sm_80
// kernels' (attention_problem.h). Rows past a sequence (other tokens in a packed batch, junk in
// a padded one) are zeroed in shared memory before the tensor cores read them, so that no 0 · NaN
// reaches a gradient. Layouts and primitives: flash_sm90_common.cuh.
//
// Written and checked in the host emulation only (tests/emu/test_flash_sm90_emu.cpp); the gpu
// tests (tests/cuda/test_attention_sm90.cpp) and `multihead bench attention`'s hopper column run
// it on an H100/H200, which had not happened when this was written.
//
// Instantiations and resources (nvcc 13.0 -Xptxas -v, sm_90a; bf16 and fp16 alike), 384 threads
// (2 consumer warpgroups + 1 producer warpgroup), 128 keys per block, one block per SM:
//   head_dim 64 (128 queries per step): 166952 bytes dynamic shared memory (K, V 16 KiB each;
//     2 stages × (Q, dO) 64 KiB; 2 × dS 64 KiB; lse, D 2 KiB; alignment slack and mbarriers),
//     203816 with the bulk form's dQ buffer (128 rows of 64 + 8 floats: 36 KiB)
//   head_dim 128 (64 queries per step): 165928 bytes (K, V 32 KiB each; 2 stages × (Q, dO)
//     64 KiB; 2 × dS 32 KiB; lse, D 1 KiB; slack and mbarriers), 200744 with the dQ buffer
//     (64 rows of 128 + 8 floats: 34 KiB)
//   registers: ptxas reports the launch's 168 per thread (64 Ki / 384); setmaxnreg then gives
//     the consumers 232 and the producer 40 (USETMAXREG in the SASS; __launch_bounds__ with a
//     minimum of 1 block, without which ptxas may ignore it). Spills: none without dropout;
//     with dropout (a template parameter, its own kernel) 20 bytes at head_dim 64, 12 at 128
//     (212 and 8 before the changes below).
//   What it took: dQ's wgmma issued before dV's and dK's (the other way round, ptxas serialized
//     the wgmmas for lack of registers, C7512); P and dS rounded to 16 bits once, right after
//     they are computed, so that the fp32 tiles are dead before the gradient MMAs are issued;
//     the dropout mask drawn into a 64-bit register while S and dP are on the tensor cores
//     (Philox inside the P/dS loop, behind a runtime branch in one kernel for both cases,
//     spilled 232 bytes at head_dim 64).
//   Instructions per query step (2026-11-29, SASS of bf16 head_dim 64 without dropout, per
//   consumer warp; two such warps share each SM sub-partition's issue slot, so with the tensor
//   cores' ~2.6k cycles per step the issue rate bounds it): the path without a mask 932 -> 660,
//   the masked one 1300 -> 865. From: wgmma descriptors made once per step and advanced by one
//   add (desc_advance), the warp index shuffled from lane 0 (warp_index) so that they live in
//   uniform registers instead of being moved there before every wgmma, lse and D read as pairs,
//   D pre-multiplied by the scale (dSᵀ one FFMA and one FMUL per element, not FADD and two
//   FMUL), and the mask as two compares with constants per element (the lane's query offset
//   folded into its two bounds per key row). Spills with dropout fell to 20 bytes (head_dim 64)
//   and 12 (128).
//   The sm_80 pass compiles a 4-register stub that traps.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <string>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_bwd_passes.h"
#include "backend/cuda/attention/flash_bwd_sm90_kernel.cuh"
#include "backend/cuda/attention/flash_sm90_host.h"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace mh::cuda {

namespace {

using namespace flash;

template <typename T, int D, bool kDropout>
void launch(const AttnProblem& pr, const Sm90BwdParams<T>& p, cudaStream_t s) {
  using C = Sm90Bwd<T, D>;
  check_setmaxnreg_pool(reinterpret_cast<const void*>(flash_bwd_sm90_kernel<T, D, kDropout>),
                        C::kThreads, C::kProducerRegs, C::kConsumerRegs,
                        "flash_attention_bwd_sm90");
  set_smem_limit_once(flash_bwd_sm90_kernel<T, D, kDropout>, C::kSmemBytes);
  const dim3 grid((pr.max_len_k + C::kBN - 1) / C::kBN, pr.heads, pr.batch);
  const int smem = p.dq_bulk ? C::kSmemBytes : C::kSmemBytes - C::kDqBytes;  // dQ's buffer last
  flash_bwd_sm90_kernel<T, D, kDropout><<<grid, C::kThreads, smem, s>>>(p);
  MH_CUDA_CHECK_LAUNCH();
}

// How dQ reaches the fp32 accumulator (sequences of more than 128 keys), for tuning runs
// (tools/gpu/check.sh times both; the default follows the measurements):
//   MH_HOPPER_BWD_DQ=atomic (default): float2 atomics by the consumer threads;
//   MH_HOPPER_BWD_DQ=bulk: stored to shared memory, added by one warp with a bulk reduction per
//     row (FlashAttention-3's way; 2026-11-29, emulator-checked, not yet run on a GPU).
bool dq_bulk() {
  static const bool bulk = [] {
    const char* env = std::getenv("MH_HOPPER_BWD_DQ");
    const std::string v = env ? env : "";
    if (!v.empty() && v != "atomic" && v != "bulk")
      user_error("MH_HOPPER_BWD_DQ=", v,
                 ": expected atomic or bulk (how the Hopper backward adds dQ up)");
    return v == "bulk";
  }();
  return bulk;
}

template <typename T, int D>
void launch(const AttnProblem& pr, const AttnBwdIO& io, const BwdScratch& w, cudaStream_t s) {
  const Sm90BwdParams<T> p = sm90_bwd_params<T, D>(
      pr, io, w.dq_acc, w.dsum, w.dq_direct, dq_bulk(),
      [&](const TmaSpec& t) { return encode_tma(t, pr.dtype, "flash_attention_bwd_sm90"); });
  if (p.dropout)
    launch<T, D, true>(pr, p, s);
  else
    launch<T, D, false>(pr, p, s);
}

}  // namespace

void flash_attention_bwd_sm90(const AttnProblem& p, const AttnBwdIO& io, void* workspace,
                              cudaStream_t s) {
  check_attn_problem(p, "flash_attention_bwd_sm90");
  std::string why;
  MH_CHECK(flash_sm90_supports(p, &why), "flash_attention_bwd_sm90: ", why);
  check_bwd_args(p, io, workspace, "flash_attention_bwd_sm90");
  if (p.batch == 0) return;
  if (p.total_q == 0 || p.total_k == 0) {      // a tensor map needs rows; the sm_80 backward writes
    flash_attention_bwd(p, io, workspace, s);  // the same zeros
    return;
  }
  // Sentences of up to 128 tokens (every key of a sequence in one block): dQ stored directly.
  const BwdScratch w = flash_bwd_prologue(p, io, workspace, s, sm90_bwd_dq_direct(p));
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64)
    bf16 ? launch<__nv_bfloat16, 64>(p, io, w, s) : launch<__half, 64>(p, io, w, s);
  else
    bf16 ? launch<__nv_bfloat16, 128>(p, io, w, s) : launch<__half, 128>(p, io, w, s);
  flash_bwd_epilogue(p, w, io.dq, s);
}

}  // namespace mh::cuda
