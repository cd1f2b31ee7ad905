// The Trainer: one optimizer step = micro-batches until train.tokens_per_step target tokens,
// forward, label-smoothed loss, backward (gradients of the summed loss), then one Adam update
// with the gradients scaled by 1/tokens: exactly the mean loss over every non-pad target token
// of the step, however it was split into micro-batches.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "config/config.h"
#include "data/batch.h"
#include "optim/adam.h"

namespace mh {

struct StepResult {
  double loss = 0;  // mean label-smoothed loss per target token
  double nll = 0;   // mean negative log-likelihood per target token
  int64_t tgt_tokens = 0, src_tokens = 0, micro_batches = 0;
  double lr = 0, grad_norm = 0;
};

struct EvalResult {
  int64_t tokens = 0;
  double nll = 0;   // mean per target token, no smoothing
  double loss = 0;  // mean label-smoothed loss per target token
};

class Trainer {
 public:
  Trainer(const Config& cfg, Backend& be);

  // Random init from train.seed, or the weights of train.init_from.
  void init();
  // One optimizer step over batches drawn from next_batch.
  StepResult train_step(const std::function<Batch()>& next_batch);
  // Loss over examples, dropout off.
  EvalResult evaluate(const std::vector<Batch>& batches);

  Transformer& model() { return *model_; }
  Backend& backend() { return be_; }
  int64_t step() const { return step_; }

 private:
  Config cfg_;
  Backend& be_;
  std::unique_ptr<Transformer> model_;
  Adam adam_;
  Ctx ctx_;
  int64_t step_ = 0, micro_step_ = 0;
};

}  // namespace mh
