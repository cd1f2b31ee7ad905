// A training batch: padded source and target sequences for the model, plus the labels.
#pragma once

#include <cstdint>
#include <vector>

#include "model/transformer.h"

namespace mh {

// One sentence pair as token ids. The target carries BOS ... EOS; the source ends with EOS.
struct Example {
  std::vector<int32_t> src;
  std::vector<int32_t> tgt;
};

struct Batch {
  ModelInput input;  // src [B, Ls], tgt_in = tgt[:-1] [B, Lt]
  Tensor labels;     // [B, Lt] i32: tgt[1:], pad_id past each sequence's end
  int64_t src_tokens = 0;
  int64_t tgt_tokens = 0;  // non-pad labels (what the loss averages over)
};

// Pads a list of examples into a Batch (lengths = the longest in the list).
Batch make_batch(const std::vector<Example>& examples, int32_t pad_id);

}  // namespace mh
