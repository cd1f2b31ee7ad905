#include "dist/grad_buckets.h"

#include <algorithm>
#include <chrono>

namespace mh {

GradBuckets::GradBuckets(Backend& be, const std::vector<Param*>& params, Communicator& comm,
                         double bucket_mb, bool overlap)
    : comm_(comm), overlap_(overlap), params_(params) {
  MH_CHECK(!params.empty(), "no parameters");
  const DType dtype = params.front()->grad.dtype();
  // The buffer in reverse forward order: the first gradients backward produces open bucket 0.
  flat_ = flatten_grads(be, std::vector<Param*>(params.rbegin(), params.rend()));
  const int64_t bucket_elems = std::max<int64_t>(
      1, static_cast<int64_t>(bucket_mb * 1024 * 1024) / static_cast<int64_t>(dtype_size(dtype)));
  bucket_of_.assign(params.size(), 0);
  ready_.assign(params.size(), false);
  int64_t offset = 0;
  for (size_t k = params.size(); k-- > 0;) {
    Param* p = params[k];
    if (buckets_.empty() || buckets_.back().end - buckets_.back().begin >= bucket_elems)
      buckets_.push_back(Bucket{offset, offset, {}, 0, false, {}});
    offset += p->grad.numel();
    Bucket& b = buckets_.back();
    b.end = offset;
    b.params.push_back(p);
    bucket_of_[k] = static_cast<int>(buckets_.size()) - 1;
  }
}

void GradBuckets::begin() {
  for (Bucket& b : buckets_) {
    MH_CHECK(!b.launched || b.work.test(), "begin() with a bucket still in flight");
    b.pending = static_cast<int>(b.params.size());
    b.launched = false;
    b.work = Work();
  }
  std::fill(ready_.begin(), ready_.end(), false);
  next_launch_ = 0;
}

void GradBuckets::mark_ready(Param& p) {
  // Parameters are few (hundreds): a linear search beats keeping a map in sync.
  auto it = std::find(params_.begin(), params_.end(), &p);
  MH_CHECK(it != params_.end(), "gradient of unknown parameter ", p.name);
  const size_t k = static_cast<size_t>(it - params_.begin());
  MH_CHECK(!ready_[k], "gradient of ", p.name, " reported twice in one step");
  ready_[k] = true;
  --buckets_[static_cast<size_t>(bucket_of_[k])].pending;
  if (overlap_) launch_ready_in_order();
}

void GradBuckets::launch_ready_in_order() {
  while (next_launch_ < num_buckets() && buckets_[static_cast<size_t>(next_launch_)].pending == 0) {
    Bucket& b = buckets_[static_cast<size_t>(next_launch_++)];
    Tensor view = flat_.rows(b.begin, b.end);
    b.work = comm_.all_reduce(view, ReduceOp::sum);
    b.launched = true;
  }
}

BucketTiming GradBuckets::finish() {
  for (size_t k = 0; k < params_.size(); ++k)
    MH_CHECK(ready_[k], "backward never reported the gradient of ", params_[k]->name);
  launch_ready_in_order();
  BucketTiming t;
  const auto start = std::chrono::steady_clock::now();
  for (Bucket& b : buckets_) {
    b.work.wait();
    t.comm_s += b.work.seconds();
    t.bytes += (b.end - b.begin) * static_cast<int64_t>(dtype_size(flat_.dtype()));
  }
  t.exposed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return t;
}

std::vector<std::string> GradBuckets::bucket_params(int i) const {
  std::vector<std::string> names;
  for (const Param* p : buckets_[static_cast<size_t>(i)].params) names.push_back(p->name);
  return names;
}

}  // namespace mh
