// Fused attention forward for Hopper (model.attention: hopper), FlashAttention-3's scheme on
// sm_90a: wgmma (warpgroup MMA, bf16/fp16 in, fp32 accumulate) and the bulk tensor copy engine
// (TMA). A block owns 64·NWG query rows of one (sequence, head). One producer warp loads the Q
// tile once and streams BN-key tiles of K and V through a 2-stage shared-memory ring with TMA,
// each stage guarded by two mbarriers (full: the copies' bytes landed; empty: every consumer
// thread is done with it). Each consumer warpgroup owns 64 query rows: S = Q Kᵀ with wgmma from
// shared memory, the online softmax in registers (the S accumulator's rows live in the 4 lanes
// of a quad, as in flash_fwd.cu), then O += P V with P from registers as wgmma's A operand and V
// read MN-major (transposed) from shared memory. O and the row log-sum-exp are written once at
// the end, exactly as flash_fwd.cu writes them, so flash_bwd.cu computes the gradients
// unchanged. Problem, layouts, masks and dropout bits: attention_problem.h; the primitives and
// the shared-memory layouts: flash_sm90_common.cuh.
//
// Opt-in (model.attention: hopper): its gpu tests passed on an H200 (the plain form), where it ran
// 1.05–1.18× custom's forward on long sequences but slower on short sentences
// (docs/perf/attention.md).
//
// Two forms (MH_HOPPER_FWD, below; flash_fwd_sm90_kernel.cuh):
//   plain (the default, the one that ran on an H200): one producer warp, S, softmax and O += P V
//     one after the other in each warpgroup, 64-key tiles;
//   overlap (2026-11-29, emulator-checked, not yet run on a GPU): FlashAttention-3's
//     intra-warpgroup overlap. While the tensor cores compute O += P V of key tile n − 1, the
//     warpgroup computes the softmax of tile n (whose S it issued just before). 128-key tiles;
//     a producer warpgroup gives up its registers (setmaxnreg 40) to the consumers (232), which
//     hold S of tile n (fp32) and P of tile n − 1 (16-bit) at once; the scale is folded into the
//     exponent's FMA, exp2 is one MUFU. 3 stages of K/V at head_dim 64, 2 at 128. At head_dim 64
//     also with three consumer warpgroups (MH_HOPPER_FWD_WG=3: 192-row blocks, 32 / 160
//     registers): FlashAttention-3's head_dim-64 row count (its causal tile is 192 × 128, this
//     one; its non-causal 192 × 192 with P through shared memory). There the exponentials cost
//     as much as the MMAs, and a third warpgroup per SM has more of them to interleave; the
//     consumers needed at most 160 registers anyway (SASS below).
//
// Instantiations and resources (nvcc 13.0 -Xptxas -v, sm_90a; bf16 and fp16 alike), no spills,
// 2 hardware barriers (__syncthreads and the consumers' named barrier):
//   plain, 2 consumer warpgroups + 1 producer warp (288 threads, BM = 128 query rows, BN = 64):
//     head_dim 64:  102 registers; 50216 bytes dynamic shared memory (Q 16 KiB, 2 × (K, V) 32 KiB)
//     head_dim 128: 134 registers; 99368 bytes dynamic shared memory (Q 32 KiB, 2 × (K, V) 64 KiB)
//     (104 and 135 with exp2f and the scale multiplied in, before 2026-11-29: the form that ran)
//   plain, 1 consumer warpgroup (160 threads, BM = 64; MH_HOPPER_FWD_WG=1): the same registers;
//     42024 bytes (head_dim 64), 82984 (128)
//   (until 2026-11-29 the plain form had 132 and 164 registers; the same steps, now in the
//   helpers the overlapped form shares, P packed to 16 bits before the O += P V wgmmas are
//   issued rather than between them, compile to fewer; its SASS still has 8 HGMMA, 2 waits)
//   overlap, 2 consumer warpgroups + 1 producer warpgroup (384 threads, BM = 128, BN = 128):
//     168 registers at launch (64 Ki / 384), then 232 per consumer and 40 per producer thread;
//     head_dim 64: 3 stages, 115768 bytes dynamic shared memory (Q 16 KiB, 3 × (K, V) 96 KiB);
//     head_dim 128: 2 stages, 164904 bytes (Q 32 KiB, 2 × (K, V) 128 KiB).
//     SASS: HGMMA.64x128x16 for S, 64xDx16 for O += P V, one WARPGROUP.DEPBAR.LE gsb0, 0x1 (the
//     wait for S while O += P V runs), USETMAXREG; no LDL/STL. The consumers' code at head_dim
//     64 names registers up to R159 (of 232), at 128 up to R191.
//   overlap, 3 consumer warpgroups + 1 producer warpgroup (512 threads, BM = 192, BN = 128,
//     head_dim 64 only; MH_HOPPER_FWD_WG=3, 2026-11-29, emulator-checked, not yet run on a GPU):
//     128 registers at launch (64 Ki / 512), then 160 per consumer and 32 per producer thread
//     (USETMAXREG 0xa0 / 0x20, FlashAttention-3's split for three consumer warpgroups); the
//     consumers' code names up to R153, no LDL/STL; 3 stages, 123960 bytes dynamic shared
//     memory (Q 24 KiB, 3 × (K, V) 96 KiB).
// (dynamic shared memory = Sm90Fwd::kSmemBytes, including 1 KiB of alignment slack and the
// mbarriers). The plain form with BN = 128 spilled (168 registers, ptxas caps 288-thread blocks
// there: 136-424 bytes of stack), hence its BN = 64. The sm_80 pass compiles a 4-register stub
// that traps.
// 2026-11-29 (not yet run on a GPU; emulator-checked): the wgmma descriptors of a tile built once
// and advanced by one add (desc_advance), the warp index shuffled from lane 0 (warp_index), and
// an edge or diagonal tile's mask as one compare with a constant per score (the row's limit
// with the lane's column offset folded in): the overlapped form's mask block 262 -> 144 SASS
// instructions (bf16, head_dim 64); no spills in any instantiation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <string>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_fwd_sm90_kernel.cuh"
#include "backend/cuda/attention/flash_sm90_host.h"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace mh::cuda {

namespace {

using namespace flash;

template <typename T, int D, int BN, int NWG, bool OVL>
void launch(const AttnProblem& pr, const AttnFwdIO& io, cudaStream_t s) {
  using C = Sm90Fwd<T, D, BN, NWG, OVL>;
  const Sm90FwdParams<T> p = sm90_fwd_params<T, D, BN, NWG, OVL>(pr, io, [&](const TmaSpec& t) {
    return encode_tma(t, pr.dtype, "flash_attention_fwd_sm90");
  });
  if constexpr (OVL)
    check_setmaxnreg_pool(reinterpret_cast<const void*>(flash_fwd_sm90_kernel<T, D, BN, NWG, OVL>),
                          C::kThreads, C::kProducerRegs, C::kConsumerRegs,
                          "flash_attention_fwd_sm90");
  set_smem_limit_once(flash_fwd_sm90_kernel<T, D, BN, NWG, OVL>, C::kSmemBytes);
  const dim3 grid((pr.max_len_q + C::kBM - 1) / C::kBM, pr.heads, pr.batch);
  flash_fwd_sm90_kernel<T, D, BN, NWG, OVL><<<grid, C::kThreads, C::kSmemBytes, s>>>(p);
  MH_CUDA_CHECK_LAUNCH();
}

// The form of the kernel, for tuning runs (tools/gpu/check.sh times each; the default follows the
// measurements):
//   MH_HOPPER_FWD=plain (default): 64-key tiles, S, softmax and O += P V one after the other, with
//     MH_HOPPER_FWD_WG consumer warpgroups (64 query rows each) per block: 2 by default, 1 for
//     the translation batch, whose sentences of 64 tokens or fewer leave a 128-row block's second
//     warpgroup idle (there this kernel ran slower than custom's 64-row one).
//   MH_HOPPER_FWD=overlap: FlashAttention-3's intra-warpgroup overlap, 128-key tiles, a producer
//     warpgroup that gives the consumers its registers, and MH_HOPPER_FWD_WG consumer warpgroups:
//     2 by default, or 3 (192-row blocks, 160 registers each: FlashAttention-3's head_dim-64
//     tile; head_dim 128 keeps 2, its O accumulator does not fit). Only this form has 3, so
//     MH_HOPPER_FWD_WG=3 alone selects it (one variable: ctest's discovered tests take one).
enum class FwdForm { plain1, plain2, overlap2, overlap3 };
FwdForm fwd_form() {
  static const FwdForm form = [] {
    const char* f = std::getenv("MH_HOPPER_FWD");
    const char* w = std::getenv("MH_HOPPER_FWD_WG");
    const std::string fv = f ? f : "", wv = w ? w : "";
    if (!fv.empty() && fv != "plain" && fv != "overlap")
      user_error("MH_HOPPER_FWD=", fv, ": expected plain or overlap (the Hopper forward's form)");
    if (!wv.empty() && wv != "1" && wv != "2" && wv != "3")
      user_error("MH_HOPPER_FWD_WG=", wv,
                 ": expected 1, 2 or 3 (consumer warpgroups, 64 query rows each, per block)");
    if (wv == "3") {
      if (fv == "plain")
        user_error("MH_HOPPER_FWD_WG=3 with MH_HOPPER_FWD=plain: expected 1 or 2 (three",
                   " consumer warpgroups are the overlapped form's)");
      return FwdForm::overlap3;
    }
    if (fv == "overlap") {
      if (wv == "1")
        user_error("MH_HOPPER_FWD_WG=1 with MH_HOPPER_FWD=overlap: expected 2 or 3 (the",
                   " overlapped forward's consumer warpgroups)");
      return FwdForm::overlap2;
    }
    return wv == "1" ? FwdForm::plain1 : FwdForm::plain2;
  }();
  return form;
}

template <typename T, int D>
void launch_d(const AttnProblem& pr, const AttnFwdIO& io, cudaStream_t s) {
  switch (fwd_form()) {
    case FwdForm::plain1:
      return launch<T, D, 64, 1, false>(pr, io, s);
    case FwdForm::plain2:
      return launch<T, D, 64, 2, false>(pr, io, s);
    case FwdForm::overlap2:
      return launch<T, D, 128, 2, true>(pr, io, s);
    case FwdForm::overlap3:
      if constexpr (D == 64)
        return launch<T, D, 128, 3, true>(pr, io, s);
      else
        return launch<T, D, 128, 2, true>(pr, io, s);
  }
}

}  // namespace

bool flash_sm90_supports(const AttnProblem& p, std::string* why) {
  auto no = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  if (!flash_shape_supported(p, why)) return false;
  if (p.total_q >= (int64_t{1} << 31) || p.total_k >= (int64_t{1} << 31))
    return no("TMA coordinates are 32-bit: at most 2^31 - 1 token rows");
  if (const int cc = flash::device_cc(); cc != 90)
    return no(
        "needs an sm_90 GPU (H100/H200: wgmma and TMA are compiled for sm_90a only), not sm_" +
        std::to_string(cc));
  if (!flash::tma_encoder_available()) return no("the driver offers no cuTensorMapEncodeTiled");
  return true;
}

void flash_attention_fwd_sm90(const AttnProblem& p, const AttnFwdIO& io, cudaStream_t s) {
  check_attn_problem(p, "flash_attention_fwd_sm90");
  std::string why;
  MH_CHECK(flash_sm90_supports(p, &why), "flash_attention_fwd_sm90: ", why);
  MH_CHECK(io.q && io.k && io.v && io.o && io.lse, "flash_attention_fwd_sm90: null pointer");
  for (const void* ptr : {io.q, io.k, io.v, static_cast<const void*>(io.o)})
    MH_CHECK(reinterpret_cast<uintptr_t>(ptr) % 16 == 0,
             "flash_attention_fwd_sm90: Q, K, V and O must be 16-byte aligned");
  if (p.batch == 0 || p.max_len_q == 0) return;
  if (p.total_k == 0) {  // no key at all: a tensor map needs rows; the sm_80 kernel writes the
    flash_attention_fwd(p, io, s);  // same O = 0, lse = +inf
    return;
  }
  const bool bf16 = p.dtype == DType::bf16;
  if (p.head_dim == 64)
    bf16 ? launch_d<__nv_bfloat16, 64>(p, io, s) : launch_d<__half, 64>(p, io, s);
  else
    bf16 ? launch_d<__nv_bfloat16, 128>(p, io, s) : launch_d<__half, 128>(p, io, s);
}

}  // namespace mh::cuda
