#include "model/transformer_layers.h"

namespace mh {

namespace {
ActKind act_kind(Activation a) {
  return a == Activation::relu ? ActKind::relu : ActKind::gelu;
}
AttnOptions attn_options(const ModelConfig& cfg) {
  return AttnOptions{cfg.attention, cfg.attention_dropout};
}
}  // namespace

// --- Residual -------------------------------------------------------------------------------

Residual::Residual(Backend& be, const std::string& norm_name, const ModelConfig& cfg, DType dtype)
    : norm(be, norm_name, cfg.d_model, cfg.norm_eps, dtype),
      pre_(cfg.norm == NormPlacement::pre),
      dropout_(cfg.dropout) {}

Tensor Residual::enter(Ctx& ctx, const Tensor& x) {
  x_ = x;
  return pre_ ? norm.forward(ctx, x) : x;
}

Tensor Residual::leave(Ctx& ctx, const Tensor& body_out) {
  if (!pre_) {  // LN(x + Dropout(body)): one backend op (one kernel on the GPU)
    const auto [p, offset] = dropout_.forward_site(ctx);
    Tensor y = norm.forward_residual(ctx, x_, body_out, p, offset);
    x_ = Tensor();
    return y;
  }
  Tensor dropped = dropout_.forward(ctx, body_out);
  Tensor sum = ctx.be.empty(x_.shape(), x_.dtype());
  ctx.be.add(x_, dropped, sum);  // x + Dropout(body); the next sublayer's enter normalizes it
  x_ = Tensor();
  return sum;
}

std::pair<Tensor, Tensor> Residual::leave_backward(Ctx& ctx, const Tensor& dy) {
  Tensor dsum = pre_ ? dy : norm.backward(ctx, dy);
  return {dropout_.backward(ctx, dsum), dsum};
}

Tensor Residual::body_grad_sum(Ctx& ctx, const Tensor& d_x_residual) {
  return pre_ ? ctx.be.zeros(d_x_residual.shape(), d_x_residual.dtype()) : d_x_residual;
}

Tensor Residual::enter_backward(Ctx& ctx, const Tensor& d_body_in, const Tensor& d_x_residual) {
  if (!pre_) return d_body_in;  // body_grad_sum's tensor: d_x_residual with the body's added
  Tensor dx = norm.backward(ctx, d_body_in);
  ctx.be.add(dx, d_x_residual, dx);  // both paths of the residual
  return dx;
}

// --- EncoderLayer ---------------------------------------------------------------------------

EncoderLayer::EncoderLayer(Backend& be, const std::string& name, const ModelConfig& cfg,
                           DType dtype)
    : self_attn(be, name + ".self_attn", cfg.d_model, cfg.heads, dtype, attn_options(cfg)),
      self_res(be, name + ".self_attn_norm", cfg, dtype),
      ffn(be, name + ".ffn", cfg.d_model, cfg.d_ff, act_kind(cfg.activation), dtype),
      ffn_res(be, name + ".ffn_norm", cfg, dtype) {}

Tensor EncoderLayer::forward(Ctx& ctx, const Tensor& x, const AttnMask& src_mask) {
  Tensor a_in = self_res.enter(ctx, x);
  Tensor h = self_res.leave(ctx, self_attn.forward(ctx, a_in, a_in, src_mask));
  Tensor f_in = ffn_res.enter(ctx, h);
  return ffn_res.leave(ctx, ffn.forward(ctx, f_in));
}

// The input gradients of each body add into one tensor by its GEMMs (body_grad_sum: post-LN, the
// residual's own gradient), so backward has no sum kernels.
Tensor EncoderLayer::backward(Ctx& ctx, const Tensor& dy) {
  auto [d_ffn, dh_res] = ffn_res.leave_backward(ctx, dy);
  Tensor d_f_in = ffn_res.body_grad_sum(ctx, dh_res);
  ffn.backward_add(ctx, d_ffn, d_f_in);
  Tensor dh = ffn_res.enter_backward(ctx, d_f_in, dh_res);
  auto [d_attn, dx_res] = self_res.leave_backward(ctx, dh);
  Tensor d_a_in = self_res.body_grad_sum(ctx, dx_res);
  self_attn.backward_add(ctx, d_attn, d_a_in, d_a_in);  // queries, keys and values read a_in
  return self_res.enter_backward(ctx, d_a_in, dx_res);
}

void EncoderLayer::for_each_param(const ParamVisitor& f) {
  self_attn.for_each_param(f);
  self_res.norm.for_each_param(f);
  ffn.for_each_param(f);
  ffn_res.norm.for_each_param(f);
}

// --- DecoderLayer ---------------------------------------------------------------------------

DecoderLayer::DecoderLayer(Backend& be, const std::string& name, const ModelConfig& cfg,
                           DType dtype)
    : self_attn(be, name + ".self_attn", cfg.d_model, cfg.heads, dtype, attn_options(cfg)),
      self_res(be, name + ".self_attn_norm", cfg, dtype),
      cross_attn(be, name + ".cross_attn", cfg.d_model, cfg.heads, dtype, attn_options(cfg)),
      cross_res(be, name + ".cross_attn_norm", cfg, dtype),
      ffn(be, name + ".ffn", cfg.d_model, cfg.d_ff, act_kind(cfg.activation), dtype),
      ffn_res(be, name + ".ffn_norm", cfg, dtype) {}

Tensor DecoderLayer::forward(Ctx& ctx, const Tensor& x, const Tensor& memory,
                             const AttnMask& self_mask, const AttnMask& cross_mask) {
  Tensor s_in = self_res.enter(ctx, x);
  Tensor h1 = self_res.leave(ctx, self_attn.forward(ctx, s_in, s_in, self_mask));
  Tensor c_in = cross_res.enter(ctx, h1);
  Tensor h2 = cross_res.leave(ctx, cross_attn.forward(ctx, c_in, memory, cross_mask));
  Tensor f_in = ffn_res.enter(ctx, h2);
  return ffn_res.leave(ctx, ffn.forward(ctx, f_in));
}

Tensor DecoderLayer::backward(Ctx& ctx, const Tensor& dy, Tensor& d_memory) {
  auto [d_ffn, dh2_res] = ffn_res.leave_backward(ctx, dy);
  Tensor d_f_in = ffn_res.body_grad_sum(ctx, dh2_res);
  ffn.backward_add(ctx, d_ffn, d_f_in);
  Tensor dh2 = ffn_res.enter_backward(ctx, d_f_in, dh2_res);
  auto [d_cross, dh1_res] = cross_res.leave_backward(ctx, dh2);
  Tensor d_c_in = cross_res.body_grad_sum(ctx, dh1_res);
  cross_attn.backward_add(ctx, d_cross, d_c_in, d_memory);  // every layer reads the encoder output
  Tensor dh1 = cross_res.enter_backward(ctx, d_c_in, dh1_res);
  auto [d_self, dx_res] = self_res.leave_backward(ctx, dh1);
  Tensor d_s_in = self_res.body_grad_sum(ctx, dx_res);
  self_attn.backward_add(ctx, d_self, d_s_in, d_s_in);
  return self_res.enter_backward(ctx, d_s_in, dx_res);
}

void DecoderLayer::for_each_param(const ParamVisitor& f) {
  self_attn.for_each_param(f);
  self_res.norm.for_each_param(f);
  cross_attn.for_each_param(f);
  cross_res.norm.for_each_param(f);
  ffn.for_each_param(f);
  ffn_res.norm.for_each_param(f);
}

}  // namespace mh
