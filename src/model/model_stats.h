// Model size and cost, computed analytically from the config (no model is built), for `multihead
// info`, benchmarks and MFU.
//
// Parameters (names as in ARCHITECTURE.md), d = d_model, f = d_ff, V = vocab_size:
//   attention (q, k, v, o projections)    4 (d² + d)
//   layer norm                            2 d
//   feed-forward (fc1, fc2)               2 d f + f + d
//   encoder layer                         attention + ffn + 2 norms
//   decoder layer                         2 attentions + ffn + 3 norms
//   embeddings                            V d shared, else 3 V d (src_embed, tgt_embed, out_proj)
//   pre-LN                                + 2 final norms (encoder.norm, decoder.norm)
//
// FLOPs count multiply-adds as 2 and only the matrix products (bias adds, layer norms, softmax,
// activations and dropout are lower order and left out). For one sentence pair of Ls source and Lt
// target tokens, the forward pass costs
//   encoder  Ne · Ls · (2·(4d² + 2df) + 4·Ls·d)           projections, FFN, QKᵀ and AV over Ls keys
//   decoder  Nd · Lt · (2·(6d² + 2df) + 4·Lt·d + 4·Ls·d)  self q,k,v,o + cross q,o, FFN, scores
//          + Nd · Ls · 2·2d²                              cross-attention k, v of the memory
//   output   Lt · 2dV                                      logits
// Causal self-attention is counted over all Lt keys, as dense kernels compute it. "Per token" is
// per target token (train.tokens_per_step counts target tokens), so with Ls = Lt the forward cost
// is 2 × (matmul parameters touched per token) + the attention-score terms. Training costs 3 ×
// forward (backward: gradients of inputs and of weights, each as much as forward).
#pragma once

#include <cstdint>

#include "config/config.h"

namespace mh {

// Trainable parameters of the Transformer described by `m`.
int64_t count_params(const ModelConfig& m);

struct TokenFlops {
  double forward = 0;  // forward FLOPs per target token
  double train = 0;    // forward + backward FLOPs per target token (3 × forward)
};

// FLOPs per target token for sentence pairs of src_len source and tgt_len target tokens.
TokenFlops flops_per_token(const ModelConfig& m, double src_len = 32, double tgt_len = 32);

// A typical sequence length for a config's data, for flops_per_token: the mean synthetic sequence
// plus EOS for the synthetic tasks; 32 for pairs (about a WMT sentence in BPE tokens), at most
// model.max_len.
double typical_seq_len(const Config& c);

}  // namespace mh
