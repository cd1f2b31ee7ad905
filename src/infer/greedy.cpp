#include "infer/greedy.h"

#include <algorithm>

namespace mh {

std::vector<std::vector<int32_t>> greedy_decode(Transformer& model, Backend& be, const Tensor& src,
                                                const std::vector<int32_t>& src_len, int32_t bos,
                                                int32_t eos, int64_t max_len) {
  Ctx ctx(be);  // training = false: no dropout
  const int64_t b = src.dim(0), v = model.config().vocab_size;
  max_len = std::min(max_len, model.config().max_len);
  Tensor memory = model.encode(ctx, src, src_len);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(b));
  std::vector<bool> done(static_cast<size_t>(b), false);
  std::vector<int32_t> prefix(static_cast<size_t>(b), bos);  // [B, t] row-major, grows by a column
  for (int64_t t = 1; t < max_len; ++t) {
    Tensor tgt = Tensor::empty({b, t}, DType::i32);
    std::copy(prefix.begin(), prefix.end(), tgt.data<int32_t>());
    std::vector<int32_t> tgt_len(static_cast<size_t>(b), static_cast<int32_t>(t));
    Tensor logits = model.decode(ctx, memory, src_len, tgt, tgt_len);  // [B*t, V]
    Tensor host =
        logits.device() == Device::cpu ? logits : Tensor::empty(logits.shape(), logits.dtype());
    if (logits.device() != Device::cpu) be.copy(logits, host);
    std::vector<int32_t> next(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
      const int64_t row = i * t + (t - 1);  // the last position's distribution
      int64_t best = 0;
      double best_val = host.item(row * v);
      for (int64_t j = 1; j < v; ++j) {
        double x = host.item(row * v + j);
        if (x > best_val) best_val = x, best = j;
      }
      next[static_cast<size_t>(i)] = static_cast<int32_t>(best);
      if (!done[static_cast<size_t>(i)]) {
        if (best == eos)
          done[static_cast<size_t>(i)] = true;
        else
          out[static_cast<size_t>(i)].push_back(static_cast<int32_t>(best));
      }
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
    std::vector<int32_t> grown(static_cast<size_t>(b * (t + 1)));
    for (int64_t i = 0; i < b; ++i) {
      std::copy_n(prefix.begin() + i * t, t, grown.begin() + i * (t + 1));
      grown[static_cast<size_t>(i * (t + 1) + t)] = next[static_cast<size_t>(i)];
    }
    prefix.swap(grown);
  }
  return out;
}

}  // namespace mh
