// Multi-head scaled dot-product attention with its four projections.
#pragma once

#include <utility>
#include <vector>

#include "model/layers.h"

namespace mh {

// Which keys each query may see: keys [0, key_len[b]) of sequence b, and j <= i when causal.
struct AttnMask {
  std::vector<int32_t> key_len;  // [B]
  bool causal = false;
};

// How attention is computed (model.attention, model.attention_dropout).
struct AttnOptions {
  AttnImpl impl = AttnImpl::naive;
  double dropout = 0;  // on the probabilities, in training only
};

class MultiHeadAttention {
 public:
  MultiHeadAttention(Backend& be, const std::string& name, int64_t d_model, int64_t heads,
                     DType dtype, AttnOptions options = {});
  // x_q: [B, Lq, D] queries; x_kv: [B, Lk, D] keys/values (the same tensor for self-attention).
  // Returns [B, Lq, D].
  Tensor forward(Ctx& ctx, const Tensor& x_q, const Tensor& x_kv, const AttnMask& mask);
  // Returns {dx_q, dx_kv}; for self-attention the caller adds the two.
  std::pair<Tensor, Tensor> backward(Ctx& ctx, const Tensor& dy);
  // The same, adding dx_q into dq_sum and dx_kv into dkv_sum, each by its projections' GEMMs
  // (beta = 1, no sum kernels). For self-attention both may be one tensor, x's gradient.
  void backward_add(Ctx& ctx, const Tensor& dy, Tensor& dq_sum, Tensor& dkv_sum);
  void for_each_param(const ParamVisitor& f);

  Linear q_proj, k_proj, v_proj, o_proj;

 private:
  int64_t d_model_, heads_;
  AttnOptions options_;
  AttnArgs args_;
  AttnMask mask_;
  Tensor q_, k_, v_;
  AttnSaved saved_;
};

}  // namespace mh
