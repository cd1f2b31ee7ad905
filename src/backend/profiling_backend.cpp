// ProfilingBackend: forwards every op, with a time mark before each when enabled (see the header).
#include "backend/profiling_backend.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

#ifdef MH_WITH_CUDA
#include "backend/cuda/cuda_op_clock.h"
#endif

namespace mh {

namespace {

class HostOpClock final : public OpClock {
 public:
  void mark(size_t i) override {
    if (i >= t_.size()) t_.resize(i + 1);
    t_[i] = std::chrono::steady_clock::now();
  }
  void elapsed(size_t n, std::vector<double>& seconds) override {
    seconds.assign(n > 0 ? n - 1 : 0, 0.0);
    for (size_t i = 0; i + 1 < n; ++i)
      seconds[i] = std::chrono::duration<double>(t_[i + 1] - t_[i]).count();
  }

 private:
  std::vector<std::chrono::steady_clock::time_point> t_;
};

// "m x n x k" of a GEMM-like op.
std::string dims(int64_t m, int64_t n, int64_t k) {
  return str(m, "x", n, "x", k);
}

}  // namespace

std::unique_ptr<OpClock> make_host_op_clock() {
  return std::make_unique<HostOpClock>();
}

std::unique_ptr<OpClock> make_op_clock(Backend& backend) {
#ifdef MH_WITH_CUDA
  if (backend.device() == Device::cuda) return cuda::make_cuda_op_clock(backend);
#else
  (void)backend;
#endif
  return make_host_op_clock();
}

ProfilingBackend::ProfilingBackend(Backend& inner, std::unique_ptr<OpClock> clock)
    : inner_(inner), clock_(std::move(clock)) {
  MH_CHECK(clock_, "ProfilingBackend: no clock");
}

void ProfilingBackend::set_enabled(bool on) {
  enabled_ = on;
  keys_.clear();
}

void ProfilingBackend::begin(std::string key) {
  if (!enabled_) return;
  clock_->mark(keys_.size());
  keys_.push_back(std::move(key));
}

void ProfilingBackend::end_step() {
  if (!enabled_) return;
  clock_->mark(keys_.size());  // the end of the last op
  clock_->elapsed(keys_.size() + 1, seconds_);
  for (size_t i = 0; i < keys_.size(); ++i) {
    Row& r = rows_[keys_[i]];
    r.op = keys_[i];
    ++r.calls;
    r.seconds += seconds_[i];
  }
  keys_.clear();
  ++steps_;
}

std::vector<ProfilingBackend::Row> ProfilingBackend::rows() const {
  std::vector<Row> out;
  for (const auto& [key, row] : rows_) out.push_back(row);
  std::sort(out.begin(), out.end(), [](const Row& a, const Row& b) {
    return a.seconds != b.seconds ? a.seconds > b.seconds : a.op < b.op;
  });
  return out;
}

Tensor ProfilingBackend::zeros(const Shape& shape, DType dtype) {
  begin("zeros");
  return inner_.zeros(shape, dtype);
}

void ProfilingBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                            double alpha, double beta) {
  if (enabled_)
    begin(str("gemm ", dims(c.rows2d(), c.cols2d(), trans_a ? a.rows2d() : a.cols2d())));
  inner_.gemm(a, trans_a, b, trans_b, c, alpha, beta);
}

void ProfilingBackend::add_bias(Tensor& y, const Tensor& bias) {
  begin("add_bias");
  inner_.add_bias(y, bias);
}

void ProfilingBackend::bias_grad(const Tensor& dy, Tensor& dbias) {
  begin("bias_grad");
  inner_.bias_grad(dy, dbias);
}

void ProfilingBackend::linear_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                  std::optional<ActKind> act, Tensor& y) {
  if (enabled_)
    begin(str(act ? "linear_fwd+act " : "linear_fwd ",
              dims(x.rows2d(), weight.rows2d(), x.cols2d())));
  inner_.linear_fwd(x, weight, bias, act, y);
}

void ProfilingBackend::linear_bwd_params(const Tensor& dy, const Tensor& x, Tensor& dweight,
                                         Tensor& dbias) {
  if (enabled_) begin(str("linear_bwd_params ", dims(dy.cols2d(), x.cols2d(), dy.rows2d())));
  inner_.linear_bwd_params(dy, x, dweight, dbias);
}

void ProfilingBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
  begin("add");
  inner_.add(a, b, out);
}

void ProfilingBackend::scale(Tensor& x, double s) {
  begin("scale");
  inner_.scale(x, s);
}

void ProfilingBackend::zero(Tensor& x) {
  begin("zero");
  inner_.zero(x);
}

void ProfilingBackend::copy(const Tensor& src, Tensor& dst) {
  begin(src.device() == dst.device() ? "copy" : "copy host<->device");
  inner_.copy(src, dst);
}

void ProfilingBackend::cast(const Tensor& src, Tensor& dst) {
  begin("cast");
  inner_.cast(src, dst);
}

void ProfilingBackend::layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                     double eps, Tensor& y, Tensor& mean, Tensor& rstd) {
  begin("layernorm_fwd");
  inner_.layernorm_fwd(x, weight, bias, eps, y, mean, rstd);
}

void ProfilingBackend::layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                     const Tensor& mean, const Tensor& rstd, Tensor& dx,
                                     Tensor& dweight, Tensor& dbias) {
  begin("layernorm_bwd");
  inner_.layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias);
}

void ProfilingBackend::activation_fwd(ActKind kind, const Tensor& x, Tensor& y) {
  begin("activation_fwd");
  inner_.activation_fwd(kind, x, y);
}

void ProfilingBackend::activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx) {
  begin("activation_bwd");
  inner_.activation_bwd(kind, dy, x, dx);
}

void ProfilingBackend::residual_layernorm_fwd(const Tensor& x, const Tensor& body, double p,
                                              uint64_t seed, uint64_t offset, const Tensor& weight,
                                              const Tensor& bias, double eps, Tensor& sum,
                                              Tensor& y, Tensor& mean, Tensor& rstd) {
  begin("residual_layernorm_fwd");
  inner_.residual_layernorm_fwd(x, body, p, seed, offset, weight, bias, eps, sum, y, mean, rstd);
}

void ProfilingBackend::dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset,
                                   Tensor& y) {
  begin("dropout_fwd");
  inner_.dropout_fwd(x, p, seed, offset, y);
}

void ProfilingBackend::dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset,
                                   Tensor& dx) {
  begin("dropout_bwd");
  inner_.dropout_bwd(dy, p, seed, offset, dx);
}

void ProfilingBackend::embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe,
                                 double scale, Tensor& y) {
  begin("embed_fwd");
  inner_.embed_fwd(ids, table, pe, scale, y);
}

void ProfilingBackend::embed_bwd(const Tensor& ids, const Tensor& dy, double scale,
                                 Tensor& dtable) {
  begin("embed_bwd");
  inner_.embed_bwd(ids, dy, scale, dtable);
}

namespace {
std::string attn_key(const char* what, const AttnArgs& a) {
  return str(what, a.causal ? " causal " : " ", a.batch, "x", a.heads, "x", a.len_q, "x", a.len_k,
             "x", a.head_dim);
}
}  // namespace

void ProfilingBackend::attention_fwd(const AttnArgs& a, const Tensor& q, const Tensor& k,
                                     const Tensor& v, Tensor& out, AttnSaved& saved) {
  if (enabled_) begin(attn_key("attention_fwd", a));
  inner_.attention_fwd(a, q, k, v, out, saved);
}

void ProfilingBackend::attention_bwd(const AttnArgs& a, const Tensor& dout, const Tensor& q,
                                     const Tensor& k, const Tensor& v, const AttnSaved& saved,
                                     Tensor& dq, Tensor& dk, Tensor& dv) {
  if (enabled_) begin(attn_key("attention_bwd", a));
  inner_.attention_bwd(a, dout, q, k, v, saved, dq, dk, dv);
}

XentResult ProfilingBackend::softmax_xent(const Tensor& logits, const Tensor& labels,
                                          int64_t pad_id, double smoothing, double grad_scale,
                                          Tensor* dlogits) {
  begin(dlogits ? "softmax_xent fwd+bwd" : "softmax_xent");
  return inner_.softmax_xent(logits, labels, pad_id, smoothing, grad_scale, dlogits);
}

double ProfilingBackend::sum_squares(const Tensor& x) {
  begin("sum_squares");
  return inner_.sum_squares(x);
}

double ProfilingBackend::sum_squares_all(const std::vector<const Tensor*>& xs) {
  begin("sum_squares_all");
  return inner_.sum_squares_all(xs);
}

void ProfilingBackend::adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr,
                                 double beta1, double beta2, double eps, double weight_decay,
                                 int64_t step, double grad_scale) {
  begin("adam_step");
  inner_.adam_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale);
}

void ProfilingBackend::adam_step_all(const std::vector<AdamSlot>& slots, double lr, double beta1,
                                     double beta2, double eps, double weight_decay, int64_t step,
                                     double grad_scale) {
  begin("adam_step_all");
  inner_.adam_step_all(slots, lr, beta1, beta2, eps, weight_decay, step, grad_scale);
}

}  // namespace mh
