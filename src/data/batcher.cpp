// Batcher: deterministic global batches and their per-rank shares (the contract in batcher.h).
#include "data/batcher.h"

#include <algorithm>
#include <numeric>

#include "core/philox.h"
#include "data/pairs.h"

namespace mh {

namespace {

void check_batch_size(int64_t batch_size) {
  if (batch_size < 1) user_error("data.batch_size (", batch_size, ") must be >= 1");
}

}  // namespace

Batcher::Batcher(std::shared_ptr<const ToyTask> task, int64_t batch_size, int32_t pad_id)
    : task_(std::move(task)), batch_size_(batch_size), pad_id_(pad_id) {
  MH_CHECK(task_, "Batcher without a task");
  check_batch_size(batch_size);
}

Batcher::Batcher(std::vector<Example> examples, int64_t batch_size, uint64_t seed, int32_t pad_id)
    : examples_(std::move(examples)), batch_size_(batch_size), seed_(seed), pad_id_(pad_id) {
  if (examples_.empty()) user_error("no training examples");
  MH_CHECK(examples_.size() < (uint64_t{1} << 32), "more than 2^32 examples");
  check_batch_size(batch_size);
}

std::pair<int64_t, int64_t> Batcher::share(int64_t n, int rank, int world) {
  MH_CHECK(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " of world ", world);
  const int64_t base = n / world, extra = n % world;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

void Batcher::seek(int64_t step) {
  MH_CHECK(step >= 0, "seek to step ", step);
  step_ = step;
}

const std::vector<uint32_t>& Batcher::permutation(int64_t epoch) {
  if (epoch == perm_epoch_) return perm_;
  // Fisher-Yates over Philox draws for (seed, epoch): counter (epoch, block), key seed.
  const uint64_t n = examples_.size();
  perm_.resize(n);
  std::iota(perm_.begin(), perm_.end(), 0u);
  uint64_t block = 0;
  Philox4 bits{};
  int lane = 4;
  auto next32 = [&]() {
    if (lane == 4) {
      bits =
          philox4x32(static_cast<uint32_t>(epoch), static_cast<uint32_t>(epoch >> 32),
                     static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32) | 0x5u << 28,
                     static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32));
      ++block;
      lane = 0;
    }
    return bits.v[lane++];
  };
  for (uint64_t i = n - 1; i > 0; --i) {
    uint64_t x = (uint64_t{next32()} << 32) | next32();
    uint64_t j = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * (i + 1)) >> 64);
    std::swap(perm_[i], perm_[j]);
  }
  perm_epoch_ = epoch;
  return perm_;
}

std::vector<Example> Batcher::examples_at(int64_t step, int rank, int world) {
  MH_CHECK(step >= 0, "step ", step);
  auto [begin, end] = share(batch_size_, rank, world);
  std::vector<Example> out;
  out.reserve(static_cast<size_t>(end - begin));
  for (int64_t k = begin; k < end; ++k) {
    const uint64_t p = static_cast<uint64_t>(step) * batch_size_ + k;  // global example position
    if (task_) {
      out.push_back(task_->example(p));
    } else {
      const uint64_t n = examples_.size();
      out.push_back(examples_[permutation(static_cast<int64_t>(p / n))[p % n]]);
    }
  }
  return out;
}

Batch Batcher::next(int rank, int world) {
  Batch b = make_batch(examples_at(step_, rank, world), pad_id_);
  ++step_;
  return b;
}

std::vector<Batch> batches_of(const std::vector<Example>& examples, int64_t batch_size,
                              int32_t pad_id) {
  MH_CHECK(batch_size >= 1, "batch_size ", batch_size);
  std::vector<Batch> out;
  for (size_t i = 0; i < examples.size(); i += static_cast<size_t>(batch_size)) {
    size_t end = std::min(examples.size(), i + static_cast<size_t>(batch_size));
    out.push_back(
        make_batch(std::vector<Example>(examples.begin() + i, examples.begin() + end), pad_id));
  }
  return out;
}

Dataset load_dataset(const ModelConfig& m, const DataConfig& d) {
  const int32_t pad = static_cast<int32_t>(m.pad_id);
  if (d.task == "pairs") {
    if (d.train_pairs.empty()) user_error("data.train_pairs: required when data.task is pairs");
    std::vector<Example> valid;
    if (!d.valid_pairs.empty()) valid = read_pairs(d.valid_pairs, m, d);
    return Dataset{nullptr, Batcher(read_pairs(d.train_pairs, m, d), d.batch_size, d.seed, pad),
                   std::move(valid)};
  }
  if (d.task != "reverse" && d.task != "numbers")
    user_error("data.task: unknown task '", d.task, "' (expected reverse, numbers or pairs)");
  auto toy = std::make_shared<const ToyTask>(m, d);
  return Dataset{toy, Batcher(toy, d.batch_size, pad), toy->valid()};
}

}  // namespace mh
