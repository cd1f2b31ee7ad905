// Host side shared by the Hopper attention kernels (flash_fwd_sm90.cu, flash_bwd_sm90.cu): the
// device's compute capability and the tensor-map encoder, which the build reaches through the
// runtime (it links the runtime only, never libcuda).
#pragma once

#include <cuda.h>

#include "backend/cuda/attention/flash_sm90_common.cuh"
#include "core/tensor.h"

namespace mh::cuda::flash {

// 10 · major + minor of the current device, cached per device.
int device_cc();
// Whether the driver offers cuTensorMapEncodeTiled.
bool tma_encoder_available();
// `s` as a CUtensorMap of 16-bit `t` elements (128-byte swizzle, zero fill out of bounds); `who`
// names the caller in the error if the driver refuses it.
CUtensorMap encode_tma(const TmaSpec& s, DType t, const char* who);

// setmaxnreg.inc waits until the block's pool holds the registers it asks for, and the pool holds
// only what the producer warpgroup gave up: 128 · (R − producer_regs) must cover
// (threads − 128) · (consumer_regs − R), R the registers per thread `kernel` was compiled with
// (for 384 threads that needs R >= 168, the most they can have; ptxas gives every instantiation
// 168 with nvcc 13.0). A compiler that gave fewer would make the consumers wait forever, so the
// launchers refuse it instead, once per kernel (`who` names it in the error).
void check_setmaxnreg_pool(const void* kernel, int threads, int producer_regs, int consumer_regs,
                           const char* who);

}  // namespace mh::cuda::flash
