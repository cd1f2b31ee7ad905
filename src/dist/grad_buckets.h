// Data-parallel gradient synchronization, overlapped with backward (the scheme of PyTorch DDP
// and Megatron-Core's param_and_grad_buffer).
//
// Every parameter's gradient lives in one contiguous buffer, laid out in REVERSE forward order,
// the order backward produces them. The buffer is cut into buckets of about parallel.bucket_mb.
// Backward reports each parameter whose gradient is final (Ctx::on_grad_ready); when the last
// gradient of a bucket arrives, the bucket's all-reduce (sum) starts on the communicator's
// progress thread while backward goes on with earlier layers. Buckets are launched strictly in
// index order, so every rank issues the same collectives in the same order.
//
//   grads:   [ out_proj | dec.L-1 ... dec.0 | enc.L-1 ... enc.0 | embed ]   (reverse forward order)
//   buckets: [ bucket 0 ][ bucket 1 ] ... [ bucket k ]                      (~bucket_mb each)
//
// With overlap off, nothing starts during backward; finish() launches every bucket and waits.
#pragma once

#include <vector>

#include "dist/communicator.h"
#include "model/module.h"

namespace mh {

struct BucketTiming {
  double comm_s = 0;     // time the all-reduces took on the communication side (summed)
  double exposed_s = 0;  // time finish() waited: communication not hidden behind backward
  int64_t bytes = 0;     // bytes all-reduced this step
};

class GradBuckets {
 public:
  // params: in forward order (Transformer::for_each_param). Re-points every param.grad at its
  // slot in the flat buffer (flatten_grads, reverse forward order; values kept).
  GradBuckets(Backend& be, const std::vector<Param*>& params, Communicator& comm, double bucket_mb,
              bool overlap);

  // Before the backward whose gradients are to be synchronized: nothing is ready yet.
  void begin();
  // Backward's report: p's gradient is final. Launches full buckets (in order) when overlapping.
  void mark_ready(Param& p);
  // Launches what has not been launched, waits for every bucket. All params must have been
  // reported. Gradients then hold the sum over ranks.
  BucketTiming finish();

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Parameter names of bucket i, in buffer order (for tests and logs).
  std::vector<std::string> bucket_params(int i) const;
  Tensor& flat() { return flat_; }

 private:
  struct Bucket {
    int64_t begin = 0, end = 0;  // element range in flat_
    std::vector<Param*> params;
    int pending = 0;
    bool launched = false;
    Work work;
  };
  void launch_ready_in_order();

  Communicator& comm_;
  bool overlap_;
  Tensor flat_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;  // param index (forward order) -> bucket
  std::vector<Param*> params_;  // forward order
  std::vector<bool> ready_;     // by param index
  int next_launch_ = 0;
};

}  // namespace mh
