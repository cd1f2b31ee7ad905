// Waiting for a stream with a deadline. Kernels whose warps wait on each other inside a block
// (the Hopper kernels' mbarrier pipelines) never return from a deadlock, and
// cudaStreamSynchronize would then wait forever: a benchmark or a test would sit out its whole
// time limit, each of them, and say nothing about which kernel hung.
#pragma once

#include <cuda_runtime.h>

namespace mh::cuda {

// Returns the stream's status once its work is done (cudaSuccess, or the error it ended with).
// Past `seconds` it prints "<what> did not finish within N s" on stderr and ends the process
// with exit code 3: a kernel that does not finish cannot be stopped from the host, only torn
// down with the process's context (unwinding would block in the first cudaFree).
cudaError_t sync_within(cudaStream_t s, const char* what, double seconds = 20);

}  // namespace mh::cuda
