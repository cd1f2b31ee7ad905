// The failure paths of MH_CUDA_CHECK / MH_CUBLAS_CHECK / MH_CUDNN_CHECK (cuda_check.h).
#include "backend/cuda/cuda_check.h"

namespace mh::cuda {

void fail_cuda(cudaError_t e, const char* call, const char* file, int line) {
  throw InternalError(str(file, ":", line, ": CUDA error ", cudaGetErrorName(e), " (",
                          cudaGetErrorString(e), ") in ", call));
}

void fail_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw InternalError(str(file, ":", line, ": cuBLAS error ", cublasGetStatusName(s), " (",
                          cublasGetStatusString(s), ") in ", call));
}

void fail_cudnn(cudnnStatus_t s, const char* call, const char* file, int line) {
  // cudnnGetLastErrorString holds cuDNN's own account of the latest failure on this thread.
  char detail[512] = {};
  cudnnGetLastErrorString(detail, sizeof(detail));
  throw InternalError(str(file, ":", line, ": cuDNN error ", cudnnGetErrorString(s), " in ", call,
                          detail[0] ? ": " : "", detail));
}

}  // namespace mh::cuda
