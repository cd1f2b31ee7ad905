#include "optim/adam.h"

#include <cmath>

namespace mh {

Adam::Adam(Backend& be, const TrainConfig& cfg) : be_(be), cfg_(cfg) {}

void Adam::add_params(std::vector<Param*> params) {
  MH_CHECK(params_.empty(), "Adam::add_params called twice");
  params_ = std::move(params);
  for (Param* p : params_) {
    m_.push_back(be_.zeros(p->value.shape(), p->value.dtype()));
    v_.push_back(be_.zeros(p->value.shape(), p->value.dtype()));
  }
}

double Adam::grad_norm(double grad_scale) const {
  double sq = 0;
  for (const Param* p : params_) sq += be_.sum_squares(p->grad);
  return std::sqrt(sq) * std::abs(grad_scale);
}

double Adam::step(double lr, double grad_scale) {
  const double norm = grad_norm(grad_scale);
  // Clipping folds into the gradient scale: g ← g · min(1, clip / ‖g‖).
  if (cfg_.clip_norm > 0 && norm > cfg_.clip_norm) grad_scale *= cfg_.clip_norm / norm;
  ++step_;
  for (size_t i = 0; i < params_.size(); ++i)
    be_.adam_step(params_[i]->value, params_[i]->grad, m_[i], v_[i], lr, cfg_.adam_beta1,
                  cfg_.adam_beta2, cfg_.adam_eps, cfg_.weight_decay, step_, grad_scale);
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
