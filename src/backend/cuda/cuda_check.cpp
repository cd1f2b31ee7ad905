// The failure paths of MH_CUDA_CHECK / MH_CUBLAS_CHECK (cuda_check.h).
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

}  // namespace mh::cuda
