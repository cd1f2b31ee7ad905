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
#include "dist/grad_buckets.h"
#include "optim/adam.h"

namespace mh {

struct StepResult {
  double loss = 0;  // mean label-smoothed loss per target token
  double nll = 0;   // mean negative log-likelihood per target token
  int64_t tgt_tokens = 0, src_tokens = 0, micro_batches = 0;
  double lr = 0, grad_norm = 0;
  double compute_s = 0;   // forward + backward on this rank
  bool skipped = false;   // inf/nan gradients: no update (fp16: the loss scale was halved)
  double loss_scale = 1;  // fp16 dynamic loss scale used for this step (1 otherwise)
  BucketTiming comm;      // data-parallel gradient all-reduce (zero without data parallelism)
};

// The dtype activations and weights are computed in for a train.precision.
DType compute_dtype(Precision p);

struct EvalResult {
  int64_t tokens = 0;
  double nll = 0;   // mean per target token, no smoothing
  double loss = 0;  // mean label-smoothed loss per target token
};

class Trainer {
 public:
  // dp: the data-parallel communicator, or null for a single process. With more than one dp
  // rank, gradients are summed over ranks in buckets overlapped with backward (GradBuckets) and
  // the step averages over the global number of target tokens, so the update equals one process
  // training on the whole global batch.
  // dp_host: the same ranks over host memory, for a few scalars a step (token counts, losses);
  // defaults to dp (NCCL, which works on device buffers only, needs MPI's here).
  Trainer(const Config& cfg, Backend& be, Communicator* dp = nullptr,
          Communicator* dp_host = nullptr);

  // Random init from train.seed, or the weights of train.init_from; then, with data
  // parallelism, rank 0's weights are broadcast so every replica starts identical.
  void init();
  // One optimizer step over batches drawn from next_batch (this rank's share of each global
  // micro-batch). Every dp rank must call it the same number of times.
  StepResult train_step(const std::function<Batch()>& next_batch);
  // Loss over examples, dropout off.
  EvalResult evaluate(const std::vector<Batch>& batches);

  Transformer& model() { return *model_; }
  Backend& backend() { return be_; }
  int64_t step() const { return step_; }
  GradBuckets* buckets() { return buckets_.get(); }

 private:
  // Sum over dp ranks of a few doubles (blocking); identity without data parallelism.
  void sum_over_ranks(double* values, int n);

  Config cfg_;
  Backend& be_;
  std::unique_ptr<Transformer> model_;
  Adam adam_;
  Ctx ctx_;
  Communicator* dp_ = nullptr;  // null or size 1: no data parallelism
  Communicator* dp_host_ = nullptr;
  std::unique_ptr<GradBuckets> buckets_;
  Tensor grads_;  // every parameter's gradient, one buffer (the buckets' when data-parallel)
  int64_t step_ = 0, micro_step_ = 0;
  double loss_scale_ = 1;   // fp16: dynamic loss scale (1 in fp32/bf16)
  int64_t good_steps_ = 0;  // fp16: steps since the last overflow
};

}  // namespace mh
