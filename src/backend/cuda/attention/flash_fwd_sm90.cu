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
// Opt-in (model.attention: hopper): its gpu tests passed on an H200, where it ran 1.05–1.18×
// custom's forward on long sequences but slower on short sentences (docs/perf/attention.md).
//
// Instantiations and resources (nvcc 13.0 -Xptxas -v, sm_90a; bf16 and fp16 alike), BN = 64 keys,
// no spills, 2 hardware barriers (__syncthreads and the consumers' named barrier):
//   2 consumer warpgroups + 1 producer warp (288 threads, BM = 128 query rows; the default):
//     head_dim 64:  132 registers; 50216 bytes dynamic shared memory (Q 16 KiB, 2 × (K, V) 32 KiB)
//     head_dim 128: 164 registers; 99368 bytes dynamic shared memory (Q 32 KiB, 2 × (K, V) 64 KiB)
//   1 consumer warpgroup (160 threads, BM = 64; MH_HOPPER_FWD_WG=1):
//     head_dim 64:  130 registers; 42024 bytes (Q 8 KiB, 2 × (K, V) 32 KiB)
//     head_dim 128: 164 registers; 82984 bytes (Q 16 KiB, 2 × (K, V) 64 KiB)
// (dynamic shared memory = Sm90Fwd::kSmemBytes, including 1 KiB of alignment slack and the
// mbarriers). BN = 128 spilled (168 registers, ptxas caps 288-thread blocks there: 136-424 bytes
// of stack), hence BN = 64. ptxas notes (C7519) that it inserts warpgroup.arrive before the
// register-A wgmma of O += P V (the P registers are written just before). The sm_80 pass compiles
// a 4-register stub that traps. SASS (cuobjdump -sass, sm_90a): HGMMA.64x64x16.F32[.BF16] for
// S = Q Kᵀ and O += P V (head_dim 64), HGMMA.64x128x16 for O += P V (head_dim 128), UTMALDG.4D,
// SYNCS.* (mbarriers); no LDL/STL.
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

template <typename T, int D, int BN, int NWG>
void launch(const AttnProblem& pr, const AttnFwdIO& io, cudaStream_t s) {
  using C = Sm90Fwd<T, D, BN, NWG>;
  const Sm90FwdParams<T> p = sm90_fwd_params<T, D, BN, NWG>(pr, io, [&](const TmaSpec& t) {
    return encode_tma(t, pr.dtype, "flash_attention_fwd_sm90");
  });
  set_smem_limit_once(flash_fwd_sm90_kernel<T, D, BN, NWG>, C::kSmemBytes);
  const dim3 grid((pr.max_len_q + C::kBM - 1) / C::kBM, pr.heads, pr.batch);
  flash_fwd_sm90_kernel<T, D, BN, NWG><<<grid, C::kThreads, C::kSmemBytes, s>>>(p);
  MH_CUDA_CHECK_LAUNCH();
}

// Consumer warpgroups per block (query rows: 64 each): 2 by default; MH_HOPPER_FWD_WG=1 picks
// blocks of 64 rows, so that one GPU run can time both (tools/gpu/check.sh). The measured reason
// to look: on the translation batch (sentences of 10-100 tokens) this kernel ran slower than
// custom's 64-row one, and a 128-row block leaves its second warpgroup idle on every sentence
// of 64 tokens or fewer. The default follows the measurements.
int fwd_warpgroups() {
  static const int nwg = [] {
    const char* env = std::getenv("MH_HOPPER_FWD_WG");
    const std::string v = env ? env : "";
    if (v.empty() || v == "2") return 2;
    if (v == "1") return 1;
    user_error("MH_HOPPER_FWD_WG=", v,
               ": expected 1 or 2 (consumer warpgroups, 64 query rows each, per block)");
  }();
  return nwg;
}

template <typename T, int D>
void launch_d(const AttnProblem& pr, const AttnFwdIO& io, cudaStream_t s) {
  if (fwd_warpgroups() == 1)
    launch<T, D, 64, 1>(pr, io, s);
  else
    launch<T, D, 64, 2>(pr, io, s);
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
