// CudaBackend's Linear ops (cuda_backend.h): one cuBLASLt call with an epilogue where cuBLASLt has
// one for the case, else the composed ops of Backend (said once on stderr per distinct reason).
//   linear_fwd         y [N, out] = act(x [N, in] Wᵀ + b)   EPILOGUE_BIAS / RELU_BIAS; gelu runs
//                      after it as its own kernel (in place)
//   linear_bwd_params  dW [out, in] += dyᵀ x, db [out] += Σ_n dy: the GEMM, then the bias_grad
//                      kernel; or, with set_bgrad_epilogue(true), EPILOGUE_BGRADB into a scratch
//                      vector (the epilogue overwrites), then db += scratch. The composed form is
//                      the default because it was the faster one on an H200 (2026-11-28, `bench
//                      gemm`: the fused one at 0.81x for 512x512 weights, 0.91-0.97x for the
//                      FFN's, bf16 and TF32 alike).
#include <cstdio>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh {

namespace {
bool empty_product(const Tensor& x, const Tensor& y) {
  return x.rows2d() == 0 || x.cols2d() == 0 || y.cols2d() == 0;
}
}  // namespace

void CudaBackend::linear_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                             std::optional<ActKind> act, Tensor& y) {
  const bool relu = act && *act == ActKind::relu;
  const cuda::GemmEpilogue epi = relu ? cuda::GemmEpilogue::relu_bias : cuda::GemmEpilogue::bias;
  std::string why;
  if (empty_product(x, y)) {
    // nothing to fuse: the composed ops handle the empty cases
  } else if (bias.dtype() != y.dtype()) {
    why = std::string("bias is ") + dtype_name(bias.dtype()) + ", y is " + dtype_name(y.dtype()) +
          " (cuBLASLt's bias has y's dtype)";
  } else if (gemm_->gemm_epilogue(x, false, weight, true, y, 1.0, 0.0, epi, bias, compute_)) {
    if (act && !relu) activation_fwd(*act, y, y);
    return;
  } else {
    why = std::string("cuBLASLt has no ") + cuda::gemm_epilogue_name(epi) + " epilogue for " +
          dtype_name(x.dtype());
  }
  if (!why.empty()) {
    const std::string note = "linear_fwd: " + why + "; using GEMM + bias/activation kernels";
    if (linear_notes_.insert(note).second) std::fprintf(stderr, "multihead: %s\n", note.c_str());
  }
  Backend::linear_fwd(x, weight, bias, act, y);
}

void CudaBackend::linear_bwd_params(const Tensor& dy, const Tensor& x, Tensor& dweight,
                                    Tensor& dbias) {
  std::string why;
  if (!bgrad_epilogue_ || empty_product(dy, x)) {
    // composed by choice, or nothing to fuse
  } else if (dbias.dtype() != dweight.dtype()) {
    why = std::string("dbias is ") + dtype_name(dbias.dtype()) + ", dweight is " +
          dtype_name(dweight.dtype()) + " (cuBLASLt's bias gradient has dweight's dtype)";
  } else {
    Tensor sum = empty(dbias.shape(), dweight.dtype());  // Σ_n dy, overwritten by the epilogue
    if (gemm_->gemm_epilogue(dy, true, x, false, dweight, 1.0, 1.0, cuda::GemmEpilogue::bgrad_a,
                             sum, compute_)) {
      cuda::add(dbias, sum, dbias, compute_);
      return;
    }
    why = std::string("cuBLASLt has no bgrad epilogue for ") + dtype_name(dy.dtype()) + " -> " +
          dtype_name(dweight.dtype());
  }
  if (!why.empty()) {
    const std::string note = "linear_bwd_params: " + why + "; using GEMM + bias_grad kernel";
    if (linear_notes_.insert(note).second) std::fprintf(stderr, "multihead: %s\n", note.c_str());
  }
  Backend::linear_bwd_params(dy, x, dweight, dbias);
}

}  // namespace mh
