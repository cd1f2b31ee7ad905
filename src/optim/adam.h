// Adam (Kingma & Ba) over a model's parameters, with the paper's β = (0.9, 0.98), ε = 1e-9 as
// defaults, optional global gradient-norm clipping and decoupled weight decay. State (m, v)
// lives beside each parameter, on the parameter's backend.
//
// Mixed precision: when a parameter's value is in a reduced compute dtype (bf16/fp16) its
// gradient is fp32 and Adam keeps an fp32 master copy; the update runs on the master, which is
// then cast back into the compute copy. In fp32 the value is its own master.
#pragma once

#include <vector>

#include "config/config.h"
#include "model/module.h"

namespace mh {

class Adam {
 public:
  Adam(Backend& be, const TrainConfig& cfg);
  // Registers the parameters, in order; call once.
  void add_params(std::vector<Param*> params);
  // Re-reads master weights from the parameters' values (after loading or broadcasting them).
  void sync_masters();
  // Global L2 norm of the gradients, each scaled by grad_scale (no change to them).
  double grad_norm(double grad_scale) const;
  // One update with learning rate lr. grad_scale multiplies every gradient first (e.g. 1/tokens);
  // with clip_norm > 0 the scaled gradients are clipped to that global norm. Returns the norm
  // before clipping. If it is not finite (inf/nan gradients, e.g. an fp16 overflow) nothing is
  // updated and the step is not counted: the caller decides (lower the loss scale, warn).
  double step(double lr, double grad_scale);
  int64_t steps_done() const { return step_; }
  // Optimizer state for checkpoints: (name + ".adam_m" / ".adam_v", tensor) in parameter order.
  std::vector<std::pair<std::string, Tensor>> state() const;

 private:
  Backend& be_;
  TrainConfig cfg_;
  std::vector<Param*> params_;
  std::vector<Tensor> m_, v_;
  std::vector<Tensor> master_;  // fp32 master weights, or the value itself in fp32
  int64_t step_ = 0;
};

}  // namespace mh
