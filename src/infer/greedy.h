// Greedy decoding: at each position take the most likely next token, until EOS or max_len.
#pragma once

#include <vector>

#include "model/transformer.h"

namespace mh {

// src: [B, Ls] i32 (padded), src_len: [B]. Returns each sentence's predicted target tokens,
// without BOS and EOS. Dropout off. Recomputes the decoder over the whole prefix each step
// (O(L²) decoder work; fine for the short sentences this is used on).
std::vector<std::vector<int32_t>> greedy_decode(Transformer& model, Backend& be, const Tensor& src,
                                                const std::vector<int32_t>& src_len, int32_t bos,
                                                int32_t eos, int64_t max_len);

}  // namespace mh
