// Row-major GEMMs through cuBLASLt:  C = alpha · op(A) op(B) + beta · C.
// cuBLASLt is column-major; a row-major matrix is its transpose in column-major, so the call
// computes Cᵀ = op(B)ᵀ op(A)ᵀ with the operands swapped. A and B are F32, BF16 or F16 (the same
// dtype); C is that dtype or F32 (fp32 weight gradients from bf16 activations). Accumulation is
// fp32 (CUBLAS_COMPUTE_32F; TF32 tensor cores, CUBLAS_COMPUTE_32F_FAST_TF32, for F32 inputs).
// The heuristic's algorithm is cached per (shape, strides, dtypes, alignment, epilogue).
//
// Epilogues (GemmEpilogue) fuse a Linear layer's bias, ReLU and bias gradient into the GEMM. In
// cuBLASLt a bias is one value per row of its column-major D, which is one per column of our
// row-major C: exactly a Linear's bias. Its bias gradient CUBLASLT_EPILOGUE_BGRADB sums
// cuBLASLt's B over k; cuBLASLt's B is our A, so it gives the row sums of our op(A).
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

// What the GEMM does after the product, in our row-major terms (op(A) [m, k], C [m, n]). `vec`
// is a packed vector of C's dtype (cuBLASLt's rule for these compute types).
enum class GemmEpilogue {
  none,
  bias,       // C = alpha op(A) op(B) + beta C, plus vec[j] in column j; vec: [n] (EPILOGUE_BIAS)
  relu_bias,  // the same, then max(0, ·) (EPILOGUE_RELU_BIAS)
  bgrad_a,    // C as without an epilogue, and vec[i] = Σ_k op(A)[i, k] overwritten; vec: [m]
              // (EPILOGUE_BGRADB). For dW += dyᵀ x (A = dy, trans_a) it is db = Σ_n dy[n, :].
};
const char* gemm_epilogue_name(GemmEpilogue e);

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
  // The same with an epilogue reading (bias) or writing (bgrad_a) `vec` (see GemmEpilogue).
  // Returns false, with nothing enqueued, when cuBLASLt offers no algorithm for it or a size is 0;
  // the caller then runs the unfused ops. Repeated calls for the same case ask the heuristic once.
  bool gemm_epilogue(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                     double alpha, double beta, GemmEpilogue epi, const Tensor& vec,
                     cudaStream_t s);
  // The raw form: device pointers, any strides. m, n, k > 0.
  void run(const GemmShape& g, double alpha, const void* a, const void* b, double beta, void* c,
           cudaStream_t s);

  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;

 private:
  struct Plan;
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t, int, int, int, int, int, int, int>;
  // The cached plan; Plan::ok is false when the heuristic found no algorithm. `vec` (epilogues
  // only) steers the heuristic by its alignment, as cuBLASLt reads the pointer's value for that.
  Plan& plan(const GemmShape& g, GemmEpilogue epi, const void* a, const void* b, const void* c,
             const void* vec);
  // One cuBLASLt call; false when its plan has no algorithm (nothing enqueued).
  bool launch(const GemmShape& g, GemmEpilogue epi, double alpha, const void* a, const void* b,
              double beta, void* c, const void* vec, cudaStream_t s);
  // The GemmShape of the Tensor form (checks shapes, dtypes and devices).
  static GemmShape shape_of(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b,
                            const Tensor& c);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace mh::cuda
