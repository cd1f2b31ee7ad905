// Row-major GEMMs through cuBLASLt:  C = alpha · op(A) op(B) + beta · C.
// cuBLASLt is column-major; a row-major matrix is its transpose in column-major, so the call
// computes Cᵀ = op(B)ᵀ op(A)ᵀ with the operands swapped. A and B are F32, BF16 or F16 (the same
// dtype); C is that dtype or F32 (fp32 weight gradients from bf16 activations). Accumulation is
// fp32 (CUBLAS_COMPUTE_32F; TF32 tensor cores, CUBLAS_COMPUTE_32F_FAST_TF32, for F32 inputs).
// The heuristic's algorithm is cached per (shape, strides, dtypes, alignment).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "core/tensor.h"

namespace mh::cuda {

// One row-major (strided-batched) GEMM, in elements: op(A) is [m, k], op(B) [k, n], C [m, n];
// lda/ldb/ldc are the row strides of A, B, C as stored; stride_* the batch strides.
struct GemmShape {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  DType ab = DType::f32, c = DType::f32;
};

class GemmLt {
 public:
  // The workspace (32 MiB) is device memory owned by the caller, alive as long as this object.
  GemmLt(void* workspace, size_t workspace_bytes);
  ~GemmLt();
  GemmLt(const GemmLt&) = delete;
  GemmLt& operator=(const GemmLt&) = delete;

  // c = alpha op(a) op(b) + beta c with the Backend::gemm contract (a, b, c viewed as 2-D).
  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
            double beta, cudaStream_t s);
  // The raw form: device pointers, any strides. m, n, k > 0.
  void run(const GemmShape& g, double alpha, const void* a, const void* b, double beta, void* c,
           cudaStream_t s);

  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;

 private:
  struct Plan;
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int, int, int, int, int>;
  Plan& plan(const GemmShape& g, int align_a, int align_b, int align_c);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace mh::cuda
