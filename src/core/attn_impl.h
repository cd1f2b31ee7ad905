// Which attention implementation a GPU backend runs (model.attention; Backend::attention_fwd).
// Its own header because both the configuration and the backends name it.
#pragma once

namespace mh {

//   naive:  GEMM + masked softmax + GEMM; keeps the probabilities [B, H, Lq, Lk] for backward.
//   custom: our fused flash-style kernels (backend/cuda/attention/); keeps the row log-sum-exp.
//   cudnn:  cuDNN's fused scaled-dot-product attention (graph API); keeps its softmax statistics.
//   hopper: the sm_90a kernels (wgmma + TMA + warp specialization, flash_fwd_sm90.cu and
//           flash_bwd_sm90.cu); keeps the row log-sum-exp as custom does. Opt-in: its forward
//           has run on an H200, its backward only in the host emulation so far. On a GPU other
//           than sm_90 (or a shape it does not take) it runs custom, saying so once.
// custom, cudnn and hopper compute in bf16/fp16 only: an F32 attention runs naive whatever the
// choice. The CPU backend has one exact implementation and ignores the choice.
enum class AttnImpl { naive, custom, cudnn, hopper };

}  // namespace mh
