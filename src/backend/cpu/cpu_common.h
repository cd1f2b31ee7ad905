// Internal to the CPU backend: dtype dispatch and a strided CBLAS GEMM for f32/f64.
#pragma once

#include <cblas.h>

#include "core/tensor.h"

namespace mh::cpu {

// Calls fn.template operator()<T>() with T = float or double, by the tensor's dtype.
template <typename Fn>
decltype(auto) dispatch_float(DType t, Fn&& fn) {
  if (t == DType::f32) return fn.template operator()<float>();
  MH_CHECK(t == DType::f64, "the CPU backend computes in F32 or F64, not ", dtype_name(t));
  return fn.template operator()<double>();
}

inline void same_shape(const Tensor& a, const Tensor& b, const char* what) {
  MH_CHECK(a.shape() == b.shape() && a.dtype() == b.dtype(), what, ": ", shape_str(a.shape()),
           dtype_name(a.dtype()), " vs ", shape_str(b.shape()), dtype_name(b.dtype()));
}

// C[M, N] = alpha * op(A) op(B) + beta * C, row-major with leading dimensions.
inline void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, double beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, static_cast<float>(alpha), a, lda, b, ldb, static_cast<float>(beta), c, ldc);
}
inline void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                    const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                    double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace mh::cpu
