#include "optim/adam.h"

#include <cmath>

namespace mh {

Adam::Adam(Backend& be, const TrainConfig& cfg) : be_(be), cfg_(cfg) {}

void Adam::add_params(std::vector<Param*> params) {
  MH_CHECK(params_.empty(), "Adam::add_params called twice");
  params_ = std::move(params);
  for (Param* p : params_) {
    const DType master = p->grad.dtype();  // fp32 (f64 for f64 test models)
    m_.push_back(be_.zeros(p->value.shape(), master));
    v_.push_back(be_.zeros(p->value.shape(), master));
    master_.push_back(p->value.dtype() == master ? p->value : be_.empty(p->value.shape(), master));
  }
  sync_masters();
}

void Adam::sync_masters() {
  for (size_t i = 0; i < params_.size(); ++i)
    if (master_[i].raw() != params_[i]->value.raw()) be_.cast(params_[i]->value, master_[i]);
}

double Adam::grad_norm(double grad_scale) const {
  std::vector<const Tensor*> grads;
  grads.reserve(params_.size());
  for (const Param* p : params_) grads.push_back(&p->grad);
  return std::sqrt(be_.sum_squares_all(grads)) * std::abs(grad_scale);
}

double Adam::step(double lr, double grad_scale) {
  const double norm = grad_norm(grad_scale);
  if (!std::isfinite(norm)) return norm;
  // Clipping folds into the gradient scale: g ← g · min(1, clip / ‖g‖).
  if (cfg_.clip_norm > 0 && norm > cfg_.clip_norm) grad_scale *= cfg_.clip_norm / norm;
  ++step_;
  std::vector<Backend::AdamSlot> slots;
  slots.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i)
    slots.push_back({&master_[i], &params_[i]->grad, &m_[i], &v_[i],
                     master_[i].raw() != params_[i]->value.raw() ? &params_[i]->value : nullptr});
  be_.adam_step_all(slots, lr, cfg_.adam_beta1, cfg_.adam_beta2, cfg_.adam_eps, cfg_.weight_decay,
                    step_, grad_scale);
  return norm;
}

std::vector<std::pair<std::string, Tensor>> Adam::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back(params_[i]->name + ".adam_m", m_[i]);
    out.emplace_back(params_[i]->name + ".adam_v", v_[i]);
  }
  return out;
}

}  // namespace mh
