// Training batches, defined so that data parallelism cannot change them.
//
// Global batch `step` is a fixed list of data.batch_size examples, a function of (data.seed, step)
// alone:
//   synthetic task: examples task.example(step * B + k), k = 0 .. B-1 (an endless stream);
//   example list:   positions p = step * B + k of the endless sequence epoch 0, epoch 1, ..., where
//                   epoch e visits all N examples in a permutation drawn from (data.seed, e).
// Rank r of `world` takes the contiguous slice share(B, r, world) of it (sizes differ by at most
// one), so concatenating the ranks' shares in rank order gives the world = 1 batch, whatever the
// number of ranks. Nothing is sorted or bucketed (yet).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "config/config.h"
#include "data/batch.h"
#include "data/toy.h"

namespace mh {

class Batcher {
 public:
  // An endless stream from a synthetic task (its seed is the task's data.seed).
  Batcher(std::shared_ptr<const ToyTask> task, int64_t batch_size, int32_t pad_id);
  // Epochs over a fixed list of examples (not empty), shuffled per epoch from `seed`.
  Batcher(std::vector<Example> examples, int64_t batch_size, uint64_t seed, int32_t pad_id);

  // This rank's share of global batch step(), then advances step() by one.
  Batch next(int rank, int world);
  // The whole global batch (world = 1).
  Batch next_batch() { return next(0, 1); }

  // The examples of rank's share of global batch `step` (no change to step()).
  std::vector<Example> examples_at(int64_t step, int rank = 0, int world = 1);

  int64_t step() const { return step_; }
  void seek(int64_t step);  // e.g. when resuming from a checkpoint
  int64_t batch_size() const { return batch_size_; }
  // Examples per epoch; 0 for an endless synthetic stream.
  int64_t epoch_size() const { return static_cast<int64_t>(examples_.size()); }

  // Rank's contiguous slice [begin, end) of n items split over world ranks: the first n % world
  // ranks get one more.
  static std::pair<int64_t, int64_t> share(int64_t n, int rank, int world);

 private:
  const std::vector<uint32_t>& permutation(int64_t epoch);

  std::shared_ptr<const ToyTask> task_;
  std::vector<Example> examples_;
  int64_t batch_size_;
  uint64_t seed_ = 0;
  int32_t pad_id_;
  int64_t step_ = 0;
  int64_t perm_epoch_ = -1;  // the epoch whose permutation perm_ holds
  std::vector<uint32_t> perm_;
};

// Evaluation batches: the examples in order, batch_size at a time, the last one partial.
std::vector<Batch> batches_of(const std::vector<Example>& examples, int64_t batch_size,
                              int32_t pad_id);

// What a run trains and evaluates on, from the config:
//   data.task reverse | numbers: the synthetic task; valid = its held-out set;
//   data.task pairs: read_pairs(data.train_pairs), and data.valid_pairs if set (else no valid).
struct Dataset {
  std::shared_ptr<const ToyTask> toy;  // null for pairs
  Batcher train;
  std::vector<Example> valid;
};
Dataset load_dataset(const ModelConfig& m, const DataConfig& d);

}  // namespace mh
