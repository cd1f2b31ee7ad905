// Every CUDA, cuBLAS(Lt), cuDNN and NCCL call goes through one of these: a failure becomes an
// InternalError naming the call, the error string and file:line.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn_graph.h>

#include "core/error.h"

namespace mh::cuda {
[[noreturn]] void fail_cuda(cudaError_t e, const char* call, const char* file, int line);
[[noreturn]] void fail_cublas(cublasStatus_t s, const char* call, const char* file, int line);
[[noreturn]] void fail_cudnn(cudnnStatus_t s, const char* call, const char* file, int line);
}  // namespace mh::cuda

#define MH_CUDA_CHECK(call)                                                            \
  do {                                                                                 \
    cudaError_t mh_e_ = (call);                                                        \
    if (mh_e_ != cudaSuccess) ::mh::cuda::fail_cuda(mh_e_, #call, __FILE__, __LINE__); \
  } while (0)

#define MH_CUBLAS_CHECK(call)                                                                      \
  do {                                                                                             \
    cublasStatus_t mh_s_ = (call);                                                                 \
    if (mh_s_ != CUBLAS_STATUS_SUCCESS) ::mh::cuda::fail_cublas(mh_s_, #call, __FILE__, __LINE__); \
  } while (0)

#define MH_CUDNN_CHECK(call)                                                                     \
  do {                                                                                           \
    cudnnStatus_t mh_s_ = (call);                                                                \
    if (mh_s_ != CUDNN_STATUS_SUCCESS) ::mh::cuda::fail_cudnn(mh_s_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: launch-configuration errors surface here, not at the next sync.
#define MH_CUDA_CHECK_LAUNCH() MH_CUDA_CHECK(cudaGetLastError())
