// The passes around the main backward kernel that both backward launchers share (flash_bwd.cu,
// the sm_80 kernel; flash_bwd_sm90.cu, the Hopper one), over the workspace of
// flash_attention_bwd_workspace: an fp32 dQ accumulator the main kernel adds into, and
// D = rowsum(dO ∘ O).
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/attention/attention_problem.h"

namespace mh::cuda::flash {

struct BwdScratch {
  float* dq_acc = nullptr;  // [total_q, H·D], zeroed by the prologue (unless dq_direct)
  float* dsum = nullptr;    // [H, total_q]
  bool dq_direct = false;   // the main kernel writes dQ itself: no accumulator, no epilogue pass
};
// Computes D and zeroes the dQ accumulator, on `s`. With dq_direct (a kernel whose every query
// row's dQ comes from one block: all keys of a sequence in one block) it zeroes dQ itself
// instead, for the rows no block writes (padding rows, sequences without keys).
BwdScratch flash_bwd_prologue(const AttnProblem& p, const AttnBwdIO& io, void* workspace,
                              cudaStream_t s, bool dq_direct = false);
// dQ = the accumulator rounded to p.dtype, on `s` (nothing with dq_direct).
void flash_bwd_epilogue(const AttnProblem& p, const BwdScratch& w, void* dq, cudaStream_t s);
// The pointer checks of the backward launchers; `who` names the caller in the error.
void check_bwd_args(const AttnProblem& p, const AttnBwdIO& io, const void* workspace,
                    const char* who);

}  // namespace mh::cuda::flash
