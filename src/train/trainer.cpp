#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "optim/schedule.h"
#include "train/checkpoint.h"

namespace mh {

DType compute_dtype(Precision p) {
  switch (p) {
    case Precision::fp32:
      return DType::f32;
    case Precision::bf16:
      return DType::bf16;
    case Precision::fp16:
      return DType::f16;
  }
  return DType::f32;
}

Trainer::Trainer(const Config& cfg, Backend& be, Communicator* dp, Communicator* dp_host)
    : cfg_(cfg),
      be_(be),
      model_(std::make_unique<Transformer>(be, cfg.model, compute_dtype(cfg.train.precision))),
      adam_(be, cfg.train),
      ctx_(be),
      dp_(dp && dp->size() > 1 ? dp : nullptr),
      dp_host_(dp_ ? (dp_host ? dp_host : dp_) : nullptr) {
  std::vector<Param*> params;
  model_->for_each_param([&](Param& p) { params.push_back(&p); });
  if (dp_) {
    if (cfg.data.batch_size < dp_->size())
      user_error("data.batch_size (", cfg.data.batch_size, ") is smaller than the ", dp_->size(),
                 " data-parallel ranks: every rank needs at least one sentence");
    buckets_ = std::make_unique<GradBuckets>(be, params, *dp_, cfg.parallel.bucket_mb,
                                             cfg.parallel.overlap);
    grads_ = buckets_->flat();
  } else {
    // The same layout as the buckets' (reverse forward order), so one process and many agree.
    grads_ = flatten_grads(be, std::vector<Param*>(params.rbegin(), params.rend()));
  }
  adam_.add_params(std::move(params));
  if (cfg.train.precision == Precision::fp16) loss_scale_ = cfg.train.loss_scale;
  // Each dp rank holds different sentences: its dropout masks must be its own, not copies of
  // rank 0's for the same positions.
  ctx_.seed =
      cfg.train.seed + (dp_ ? 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(dp_->rank()) : 0);
}

void Trainer::init() {
  if (cfg_.train.init_from.empty()) {
    model_->init(cfg_.train.seed);
  } else {
    load_weights(*model_, be_, cfg_.train.init_from);
  }
  if (dp_) {
    std::vector<Work> works;
    model_->for_each_param([&](Param& p) { works.push_back(dp_->broadcast(p.value, 0)); });
    for (Work& w : works) w.wait();
  }
  adam_.sync_masters();
}

void Trainer::sum_over_ranks(double* values, int n) {
  if (!dp_) return;
  Tensor t = Tensor::empty({n}, DType::f64);
  std::copy(values, values + n, t.data<double>());
  dp_host_->all_reduce(t, ReduceOp::sum).wait();
  std::copy(t.data<double>(), t.data<double>() + n, values);
}

StepResult Trainer::train_step(const std::function<Batch()>& next_batch) {
  using Clock = std::chrono::steady_clock;
  StepResult r;
  XentResult sum;
  double global_tokens = 0;
  be_.zero(grads_);  // one fill for all gradients
  ctx_.training = true;
  // At least one micro-batch; more until the step has tokens_per_step target tokens over all
  // ranks. Every rank sees the same global counts, so all agree on which micro-batch is last.
  for (bool last = false; !last;) {
    Batch batch = next_batch();
    double batch_tokens = static_cast<double>(batch.tgt_tokens);
    sum_over_ranks(&batch_tokens, 1);
    global_tokens += batch_tokens;
    last = global_tokens >= static_cast<double>(cfg_.train.tokens_per_step);
    // Only the last micro-batch's backward finalizes gradients: it alone feeds the buckets.
    if (buckets_ && last) {
      buckets_->begin();
      ctx_.on_grad_ready = [this](Param& p) { buckets_->mark_ready(p); };
    } else {
      ctx_.on_grad_ready = nullptr;
    }
    const auto t0 = Clock::now();
    ctx_.begin_forward(static_cast<uint64_t>(micro_step_++));
    Tensor logits = model_->forward(ctx_, batch.input);
    Tensor dlogits = be_.empty(logits.shape(), logits.dtype());
    // fp16: the loss gradient is multiplied by the loss scale so small gradients stay
    // representable; the optimizer divides it out again.
    XentResult x = be_.softmax_xent(logits, be_.to_device(batch.labels), cfg_.model.pad_id,
                                    cfg_.train.label_smoothing, loss_scale_, &dlogits);
    model_->backward(ctx_, dlogits);
    r.compute_s += std::chrono::duration<double>(Clock::now() - t0).count();
    sum.loss_sum += x.loss_sum;
    sum.nll_sum += x.nll_sum;
    sum.tokens += x.tokens;
    r.src_tokens += batch.src_tokens;
    r.micro_batches += 1;
  }
  ctx_.on_grad_ready = nullptr;
  if (buckets_) r.comm = buckets_->finish();  // gradients now hold the sum over ranks
  double totals[3] = {sum.loss_sum, sum.nll_sum, static_cast<double>(r.src_tokens)};
  sum_over_ranks(totals, 3);
  ++step_;
  r.tgt_tokens = static_cast<int64_t>(global_tokens);
  r.src_tokens = static_cast<int64_t>(totals[2]);
  r.loss = global_tokens > 0 ? totals[0] / global_tokens : 0;
  r.nll = global_tokens > 0 ? totals[1] / global_tokens : 0;
  r.lr = noam_lr(step_, cfg_.model.d_model, cfg_.train.warmup, cfg_.train.lr_scale);
  // Gradients hold d(loss_sum) over the global batch; the mean over its tokens is one scale
  // away. (Averaging by the number of ranks instead would weigh a rank's tokens by how many
  // it happened to get, and differ from single-process training.)
  r.loss_scale = loss_scale_;
  r.grad_norm = adam_.step(r.lr, global_tokens > 0 ? 1.0 / (global_tokens * loss_scale_) : 0.0);
  r.skipped = !std::isfinite(r.grad_norm);
  if (r.skipped) --step_;  // the schedule does not advance over a skipped step
  if (cfg_.train.precision == Precision::fp16) {
    // Dynamic loss scaling: halve on overflow, double after a window of clean steps.
    if (r.skipped) {
      loss_scale_ = std::max(1.0, loss_scale_ / 2);
      good_steps_ = 0;
    } else if (++good_steps_ >= cfg_.train.loss_scale_window) {
      loss_scale_ *= 2;
      good_steps_ = 0;
    }
  }
  return r;
}

EvalResult Trainer::evaluate(const std::vector<Batch>& batches) {
  Ctx ctx(be_);  // training = false
  XentResult sum;
  for (const Batch& b : batches) {
    Tensor logits = model_->forward(ctx, b.input);
    XentResult x = be_.softmax_xent(logits, be_.to_device(b.labels), cfg_.model.pad_id,
                                    cfg_.train.label_smoothing, 1.0, nullptr);
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
