// What every GPU test file shares: the skip without a GPU, and one backend of each kind per
// process (a CudaBackend owns streams, a cuBLASLt handle and a caching allocator: made once).
#pragma once

#include <gtest/gtest.h>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"

#define MH_REQUIRE_GPU() \
  if (::mh::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: GPU test skipped"

namespace mh::gpu_test {

inline CudaBackend& gpu() {
  static CudaBackend backend(0);
  return backend;
}
inline CpuBackend& cpu() {
  static CpuBackend backend;
  return backend;
}

}  // namespace mh::gpu_test
