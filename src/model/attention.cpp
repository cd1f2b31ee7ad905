#include "model/attention.h"

#include <cmath>

namespace mh {

MultiHeadAttention::MultiHeadAttention(Backend& be, const std::string& name, int64_t d_model,
                                       int64_t heads, DType dtype, AttnOptions options)
    : q_proj(be, name + ".q_proj", d_model, d_model, dtype),
      k_proj(be, name + ".k_proj", d_model, d_model, dtype),
      v_proj(be, name + ".v_proj", d_model, d_model, dtype),
      o_proj(be, name + ".o_proj", d_model, d_model, dtype),
      d_model_(d_model),
      heads_(heads),
      options_(options) {
  MH_CHECK(d_model % heads == 0, "d_model ", d_model, " heads ", heads);
}

Tensor MultiHeadAttention::forward(Ctx& ctx, const Tensor& x_q, const Tensor& x_kv,
                                   const AttnMask& mask) {
  const int64_t b = x_q.dim(0), lq = x_q.dim(1), lk = x_kv.dim(1);
  MH_CHECK(x_kv.dim(0) == b && static_cast<int64_t>(mask.key_len.size()) == b,
           "attention batch sizes");
  mask_ = mask;
  args_ = AttnArgs{};
  args_.batch = b;
  args_.heads = heads_;
  args_.len_q = lq;
  args_.len_k = lk;
  args_.head_dim = d_model_ / heads_;
  args_.key_len = mask_.key_len.data();
  args_.causal = mask.causal;
  args_.scale = 1.0 / std::sqrt(static_cast<double>(d_model_ / heads_));
  args_.impl = options_.impl;
  if (ctx.training && options_.dropout > 0) {  // a dropout site only when it drops something
    args_.dropout = options_.dropout;
    args_.seed = ctx.seed;
    args_.offset = ctx.next_dropout_offset();
  }
  q_ = q_proj.forward(ctx, x_q);   // [B, Lq, D]
  k_ = k_proj.forward(ctx, x_kv);  // [B, Lk, D]
  v_ = v_proj.forward(ctx, x_kv);  // [B, Lk, D]
  Tensor att = ctx.be.empty(q_.shape(), q_.dtype());
  ctx.be.attention_fwd(args_, q_, k_, v_, att, saved_);
  return o_proj.forward(ctx, att);
}

std::pair<Tensor, Tensor> MultiHeadAttention::backward(Ctx& ctx, const Tensor& dy) {
  Tensor dx_q = ctx.be.zeros(q_.shape(), dy.dtype());
  Tensor dx_kv = ctx.be.zeros(k_.shape(), dy.dtype());
  backward_add(ctx, dy, dx_q, dx_kv);
  return {dx_q, dx_kv};
}

void MultiHeadAttention::backward_add(Ctx& ctx, const Tensor& dy, Tensor& dq_sum, Tensor& dkv_sum) {
  Tensor datt = o_proj.backward(ctx, dy);
  Tensor dq = ctx.be.empty(q_.shape(), dy.dtype());
  Tensor dk = ctx.be.empty(k_.shape(), dy.dtype());
  Tensor dv = ctx.be.empty(v_.shape(), dy.dtype());
  args_.key_len = mask_.key_len.data();
  ctx.be.attention_bwd(args_, datt, q_, k_, v_, saved_, dq, dk, dv);
  q_ = k_ = v_ = Tensor();
  saved_ = AttnSaved{};
  // Three GEMMs that add into the sums: k and v both read x_kv, and for self-attention q too.
  q_proj.backward_add(ctx, dq, dq_sum);
  k_proj.backward_add(ctx, dk, dkv_sum);
  v_proj.backward_add(ctx, dv, dkv_sum);
}

void MultiHeadAttention::for_each_param(const ParamVisitor& f) {
  q_proj.for_each_param(f);
  k_proj.for_each_param(f);
  v_proj.for_each_param(f);
  o_proj.for_each_param(f);
}

}  // namespace mh
