#include "train/trainer.h"

#include "optim/schedule.h"
#include "train/checkpoint.h"

namespace mh {

Trainer::Trainer(const Config& cfg, Backend& be)
    : cfg_(cfg),
      be_(be),
      model_(std::make_unique<Transformer>(be, cfg.model, DType::f32)),
      adam_(be, cfg.train),
      ctx_(be) {
  std::vector<Param*> params;
  model_->for_each_param([&](Param& p) { params.push_back(&p); });
  adam_.add_params(std::move(params));
  ctx_.seed = cfg.train.seed;
}

void Trainer::init() {
  if (cfg_.train.init_from.empty()) {
    model_->init(cfg_.train.seed);
  } else {
    load_weights(*model_, be_, cfg_.train.init_from);
  }
}

StepResult Trainer::train_step(const std::function<Batch()>& next_batch) {
  StepResult r;
  XentResult sum;
  model_->zero_grad();
  ctx_.training = true;
  // At least one micro-batch; more until the step has tokens_per_step target tokens.
  do {
    Batch batch = next_batch();
    ctx_.begin_forward(static_cast<uint64_t>(micro_step_++));
    Tensor logits = model_->forward(ctx_, batch.input);
    Tensor dlogits = be_.empty(logits.shape(), logits.dtype());
    XentResult x = be_.softmax_xent(logits, batch.labels, cfg_.model.pad_id,
                                    cfg_.train.label_smoothing, 1.0, &dlogits);
    model_->backward(ctx_, dlogits);
    sum.loss_sum += x.loss_sum;
    sum.nll_sum += x.nll_sum;
    sum.tokens += x.tokens;
    r.src_tokens += batch.src_tokens;
    r.micro_batches += 1;
  } while (sum.tokens < cfg_.train.tokens_per_step);
  ++step_;
  r.tgt_tokens = sum.tokens;
  r.loss = sum.tokens ? sum.loss_sum / sum.tokens : 0;
  r.nll = sum.tokens ? sum.nll_sum / sum.tokens : 0;
  r.lr = noam_lr(step_, cfg_.model.d_model, cfg_.train.warmup, cfg_.train.lr_scale);
  // Gradients hold d(loss_sum); the mean over the step's tokens is one scale away.
  r.grad_norm = adam_.step(r.lr, sum.tokens ? 1.0 / static_cast<double>(sum.tokens) : 0.0);
  return r;
}

EvalResult Trainer::evaluate(const std::vector<Batch>& batches) {
  Ctx ctx(be_);  // training = false
  XentResult sum;
  for (const Batch& b : batches) {
    Tensor logits = model_->forward(ctx, b.input);
    XentResult x = be_.softmax_xent(logits, b.labels, cfg_.model.pad_id, cfg_.train.label_smoothing,
                                    1.0, nullptr);
    sum.loss_sum += x.loss_sum;
    sum.nll_sum += x.nll_sum;
    sum.tokens += x.tokens;
  }
  EvalResult r;
  r.tokens = sum.tokens;
  r.nll = sum.tokens ? sum.nll_sum / sum.tokens : 0;
  r.loss = sum.tokens ? sum.loss_sum / sum.tokens : 0;
  return r;
}

}  // namespace mh
