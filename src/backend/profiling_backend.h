// ProfilingBackend: where a training step's time goes, op by op (`multihead bench train
// --profile`). It wraps the backend the model computes on, forwards every op to it unchanged, and
// when enabled puts a time mark before each op: the time from one op's mark to the next op's is
// that op's. On the CPU the marks are host clock readings; on a GPU they are events on the
// compute stream (backend/cuda/cuda_op_clock.h), so the times are device times, and a gap in
// which the device waits for the host to launch the next op counts to the op before it (a step
// that is launch-bound shows it as small ops taking longer than their work).
//
// GEMM-like ops and attention carry their shape in the row's name ("linear_fwd 8192x2048x512":
// rows x output features x input features), so a row can be compared with `multihead bench gemm`
// and `bench attention`; the other ops are one row each. Collectives do not go through the
// Backend: bench train reports communication separately.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace mh {

// Time marks in a backend's stream of work (see the file comment).
class OpClock {
 public:
  virtual ~OpClock() = default;
  // Puts mark i at this point of the stream of work (marks are reused from step to step).
  virtual void mark(size_t i) = 0;
  // Waits until marks 0..n-1 have passed, then seconds[i] = time from mark i to mark i + 1.
  virtual void elapsed(size_t n, std::vector<double>& seconds) = 0;
};
// The host clock (synchronous backends: the CPU).
std::unique_ptr<OpClock> make_host_op_clock();
// The right clock for `backend`: CUDA events on its compute stream for the CUDA backend, else
// the host clock.
std::unique_ptr<OpClock> make_op_clock(Backend& backend);

class ProfilingBackend final : public Backend {
 public:
  struct Row {
    std::string op;
    int64_t calls = 0;
    double seconds = 0;
  };

  ProfilingBackend(Backend& inner, std::unique_ptr<OpClock> clock);
  Backend& inner() { return inner_; }

  // Off: ops are forwarded without marks. Turning it on starts a step.
  void set_enabled(bool on);
  // Ends a profiled step: waits for its ops, adds their times to the rows, starts the next.
  void end_step();
  int64_t steps() const { return steps_; }
  // Accumulated over the ended steps, the most expensive first.
  std::vector<Row> rows() const;

  const char* name() const override { return inner_.name(); }
  Device device() const override { return inner_.device(); }
  Tensor empty(const Shape& shape, DType dtype) override { return inner_.empty(shape, dtype); }
  Tensor zeros(const Shape& shape, DType dtype) override;
  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
            double beta) override;
  void add_bias(Tensor& y, const Tensor& bias) override;
  void bias_grad(const Tensor& dy, Tensor& dbias) override;
  void linear_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  std::optional<ActKind> act, Tensor& y) override;
  void linear_bwd_params(const Tensor& dy, const Tensor& x, Tensor& dweight,
                         Tensor& dbias) override;
  void add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void scale(Tensor& x, double s) override;
  void zero(Tensor& x) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void cast(const Tensor& src, Tensor& dst) override;
  void layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                     Tensor& y, Tensor& mean, Tensor& rstd) override;
  void layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                     const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) override;
  void activation_fwd(ActKind kind, const Tensor& x, Tensor& y) override;
  void activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx) override;
  void residual_layernorm_fwd(const Tensor& x, const Tensor& body, double p, uint64_t seed,
                              uint64_t offset, const Tensor& weight, const Tensor& bias, double eps,
                              Tensor& sum, Tensor& y, Tensor& mean, Tensor& rstd) override;
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
  double sum_squares_all(const std::vector<const Tensor*>& xs) override;
  void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int64_t step,
                 double grad_scale) override;
  void adam_step_all(const std::vector<AdamSlot>& slots, double lr, double beta1, double beta2,
                     double eps, double weight_decay, int64_t step, double grad_scale) override;

 private:
  // Marks the start of op `key` (when enabled).
  void begin(std::string key);

  Backend& inner_;
  std::unique_ptr<OpClock> clock_;
  bool enabled_ = false;
  std::vector<std::string> keys_;  // this step's ops, in order
  std::vector<double> seconds_;
  std::map<std::string, Row> rows_;
  int64_t steps_ = 0;
};

}  // namespace mh
