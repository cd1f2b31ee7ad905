// make_batch: pads examples into the model's input tensors and the shifted labels.
//   src    [B, Ls]  src ids, pad past src_len
//   tgt_in [B, Lt]  tgt[:-1] (BOS y1 ... yn), pad past tgt_len
//   labels [B, Lt]  tgt[1:]  (y1 ... yn EOS), pad past tgt_len
#include "data/batch.h"

#include <algorithm>

namespace mh {

Batch make_batch(const std::vector<Example>& examples, int32_t pad_id) {
  const int64_t B = static_cast<int64_t>(examples.size());
  int64_t Ls = 0, Lt = 0;
  for (const Example& e : examples) {
    MH_CHECK(!e.src.empty(), "example with an empty source");
    MH_CHECK(e.tgt.size() >= 2, "example target needs BOS and at least one more token");
    Ls = std::max<int64_t>(Ls, static_cast<int64_t>(e.src.size()));
    Lt = std::max<int64_t>(Lt, static_cast<int64_t>(e.tgt.size()) - 1);
  }

  Batch b;
  b.input.src = Tensor::empty({B, Ls}, DType::i32);
  b.input.tgt_in = Tensor::empty({B, Lt}, DType::i32);
  b.labels = Tensor::empty({B, Lt}, DType::i32);
  int32_t* src = b.input.src.data<int32_t>();
  int32_t* tgt_in = b.input.tgt_in.data<int32_t>();
  int32_t* labels = b.labels.data<int32_t>();
  std::fill(src, src + B * Ls, pad_id);
  std::fill(tgt_in, tgt_in + B * Lt, pad_id);
  std::fill(labels, labels + B * Lt, pad_id);
  b.input.src_len.reserve(examples.size());
  b.input.tgt_len.reserve(examples.size());

  for (int64_t i = 0; i < B; ++i) {
    const Example& e = examples[i];
    const int64_t ls = static_cast<int64_t>(e.src.size());
    const int64_t lt = static_cast<int64_t>(e.tgt.size()) - 1;
    std::copy(e.src.begin(), e.src.end(), src + i * Ls);
    std::copy(e.tgt.begin(), e.tgt.end() - 1, tgt_in + i * Lt);
    std::copy(e.tgt.begin() + 1, e.tgt.end(), labels + i * Lt);
    b.input.src_len.push_back(static_cast<int32_t>(ls));
    b.input.tgt_len.push_back(static_cast<int32_t>(lt));
    b.src_tokens += ls;
    for (int64_t j = 0; j < lt; ++j) b.tgt_tokens += labels[i * Lt + j] != pad_id;
  }
  return b;
}

}  // namespace mh
