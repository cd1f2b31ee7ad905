// The CPU backend: CBLAS (OpenBLAS) for GEMMs, plain loops for the rest, in f32 or f64.
// It is the reference every other backend is tested against, and the f64 path serves the
// finite-difference gradient checks.
#pragma once

#include "backend/backend.h"

namespace mh {

class CpuBackend : public Backend {
 public:
  CpuBackend();
  const char* name() const override { return "cpu"; }
  Tensor empty(const Shape& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  Tensor zeros(const Shape& shape, DType dtype) override { return Tensor::zeros(shape, dtype); }

  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
            double beta) override;
  void add_bias(Tensor& y, const Tensor& bias) override;
  void bias_grad(const Tensor& dy, Tensor& dbias) override;
  void add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void scale(Tensor& x, double s) override;
  void zero(Tensor& x) override { x.zero_(); }
  void copy(const Tensor& src, Tensor& dst) override;
  void cast(const Tensor& src, Tensor& dst) override;
  void layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                     Tensor& y, Tensor& mean, Tensor& rstd) override;
  void layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                     const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) override;
  void activation_fwd(ActKind kind, const Tensor& x, Tensor& y) override;
  void activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx) override;
  void dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y) override;
  void dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset, Tensor& dx) override;
  void embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe, double scale,
                 Tensor& y) override;
  void embed_bwd(const Tensor& ids, const Tensor& dy, double scale, Tensor& dtable) override;
  void attention_fwd(const AttnArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                     Tensor& out, AttnSaved& saved) override;
  void attention_bwd(const AttnArgs& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                     const Tensor& v, const AttnSaved& saved, Tensor& dq, Tensor& dk,
                     Tensor& dv) override;
  XentResult softmax_xent(const Tensor& logits, const Tensor& labels, int64_t pad_id,
                          double smoothing, double grad_scale, Tensor* dlogits) override;
  double sum_squares(const Tensor& x) override;
  void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int64_t step,
                 double grad_scale) override;
};

// Sets the BLAS library's thread count (0 leaves its default).
void cpu_set_threads(int threads);

}  // namespace mh
