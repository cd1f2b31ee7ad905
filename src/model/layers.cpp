#include "model/layers.h"

namespace mh {

Param make_param(Backend& be, std::string name, const Shape& shape, DType dtype) {
  Param p;
  p.name = std::move(name);
  p.value = be.zeros(shape, dtype);
  p.grad = be.zeros(shape, grad_dtype(dtype));
  return p;
}

Tensor flatten_grads(Backend& be, const std::vector<Param*>& params) {
  MH_CHECK(!params.empty(), "flatten_grads: no parameters");
  const DType dtype = params.front()->grad.dtype();
  int64_t total = 0;
  for (const Param* p : params) {
    MH_CHECK(p->grad.dtype() == dtype, "flatten_grads: mixed gradient dtypes (", p->name, ")");
    total += p->grad.numel();
  }
  Tensor flat = be.zeros({total}, dtype);
  int64_t offset = 0;
  for (Param* p : params) {
    const int64_t n = p->grad.numel();
    Tensor slot = flat.rows(offset, offset + n).view(p->grad.shape());
    be.copy(p->grad, slot);
    p->grad = slot;
    offset += n;
  }
  return flat;
}

// --- Linear ---------------------------------------------------------------------------------

Linear::Linear(Backend& be, const std::string& name, int64_t in, int64_t out, DType dtype)
    : weight(make_param(be, name + ".weight", {out, in}, dtype)),
      bias(make_param(be, name + ".bias", {out}, dtype)) {}

Tensor Linear::forward(Ctx& ctx, const Tensor& x, std::optional<ActKind> act) {
  x_ = x;
  Shape out_shape = x.shape();
  out_shape.back() = weight.value.dim(0);
  Tensor y = ctx.be.empty(out_shape, x.dtype());
  ctx.be.linear_fwd(x, weight.value, bias.value, act, y);  // y = act(x Wᵀ + b)
  return y;
}

Tensor Linear::backward(Ctx& ctx, const Tensor& dy) {
  Tensor dx = ctx.be.empty(x_.shape(), dy.dtype());
  ctx.be.gemm(dy, false, weight.value, false, dx, 1.0, 0.0);  // dx = dy W
  param_grads(ctx, dy);
  return dx;
}

void Linear::backward_add(Ctx& ctx, const Tensor& dy, Tensor& dx_sum) {
  MH_CHECK(dx_sum.shape() == x_.shape() && dx_sum.dtype() == dy.dtype(),
           "Linear::backward_add: dx_sum ", shape_str(dx_sum.shape()), " ",
           dtype_name(dx_sum.dtype()), ", expected ", shape_str(x_.shape()), " ",
           dtype_name(dy.dtype()));
  ctx.be.gemm(dy, false, weight.value, false, dx_sum, 1.0, 1.0);  // dx_sum += dy W
  param_grads(ctx, dy);
}

void Linear::param_grads(Ctx& ctx, const Tensor& dy) {
  ctx.be.linear_bwd_params(dy, x_, weight.grad, bias.grad);  // dW += dyᵀ x; db += Σ_n dy
  ctx.grad_ready(weight);
  ctx.grad_ready(bias);
  x_ = Tensor();
}

void Linear::for_each_param(const ParamVisitor& f) {
  f(weight);
  f(bias);
}

// --- LayerNorm ------------------------------------------------------------------------------

LayerNorm::LayerNorm(Backend& be, const std::string& name, int64_t dim, double eps, DType dtype)
    : weight(make_param(be, name + ".weight", {dim}, dtype)),
      bias(make_param(be, name + ".bias", {dim}, dtype)),
      eps_(eps) {}

Tensor LayerNorm::forward(Ctx& ctx, const Tensor& x) {
  x_ = x;
  Tensor y = ctx.be.empty(x.shape(), x.dtype());
  mean_ = ctx.be.empty({x.rows2d()}, stat_dtype(x.dtype()));
  rstd_ = ctx.be.empty({x.rows2d()}, stat_dtype(x.dtype()));
  ctx.be.layernorm_fwd(x, weight.value, bias.value, eps_, y, mean_, rstd_);
  return y;
}

Tensor LayerNorm::forward_residual(Ctx& ctx, const Tensor& x, const Tensor& body, double p,
                                   uint64_t offset) {
  x_ = ctx.be.empty(x.shape(), x.dtype());  // the sum, which backward normalizes again
  Tensor y = ctx.be.empty(x.shape(), x.dtype());
  mean_ = ctx.be.empty({x.rows2d()}, stat_dtype(x.dtype()));
  rstd_ = ctx.be.empty({x.rows2d()}, stat_dtype(x.dtype()));
  ctx.be.residual_layernorm_fwd(x, body, p, ctx.seed, offset, weight.value, bias.value, eps_, x_, y,
                                mean_, rstd_);
  return y;
}

Tensor LayerNorm::backward(Ctx& ctx, const Tensor& dy) {
  Tensor dx = ctx.be.empty(x_.shape(), dy.dtype());
  ctx.be.layernorm_bwd(dy, x_, weight.value, mean_, rstd_, dx, weight.grad, bias.grad);
  ctx.grad_ready(weight);
  ctx.grad_ready(bias);
  x_ = mean_ = rstd_ = Tensor();
  return dx;
}

void LayerNorm::for_each_param(const ParamVisitor& f) {
  f(weight);
  f(bias);
}

// --- Dropout --------------------------------------------------------------------------------

std::pair<double, uint64_t> Dropout::forward_site(Ctx& ctx) {
  active_ = ctx.training && p_ > 0;
  if (!active_) return {0.0, 0};
  offset_ = ctx.next_dropout_offset();
  return {p_, offset_};
}

Tensor Dropout::forward(Ctx& ctx, const Tensor& x) {
  if (forward_site(ctx).first == 0) return x;
  Tensor y = ctx.be.empty(x.shape(), x.dtype());
  ctx.be.dropout_fwd(x, p_, ctx.seed, offset_, y);
  return y;
}

Tensor Dropout::backward(Ctx& ctx, const Tensor& dy) {
  if (!active_) return dy;
  Tensor dx = ctx.be.empty(dy.shape(), dy.dtype());
  ctx.be.dropout_bwd(dy, p_, ctx.seed, offset_, dx);
  return dx;
}

// --- FeedForward ----------------------------------------------------------------------------

FeedForward::FeedForward(Backend& be, const std::string& name, int64_t d_model, int64_t d_ff,
                         ActKind act, DType dtype)
    : fc1(be, name + ".fc1", d_model, d_ff, dtype),
      fc2(be, name + ".fc2", d_ff, d_model, dtype),
      act_(act) {}

Tensor FeedForward::forward(Ctx& ctx, const Tensor& x) {
  if (act_ == ActKind::relu) {  // relu'(h) = [relu(h) > 0]: the output is all backward needs
    act_in_ = fc1.forward(ctx, x, ActKind::relu);
    return fc2.forward(ctx, act_in_);
  }
  act_in_ = fc1.forward(ctx, x);
  Tensor a = ctx.be.empty(act_in_.shape(), act_in_.dtype());
  ctx.be.activation_fwd(act_, act_in_, a);
  return fc2.forward(ctx, a);
}

Tensor FeedForward::backward(Ctx& ctx, const Tensor& dy) {
  return fc1.backward(ctx, hidden_backward(ctx, dy));
}

void FeedForward::backward_add(Ctx& ctx, const Tensor& dy, Tensor& dx_sum) {
  fc1.backward_add(ctx, hidden_backward(ctx, dy), dx_sum);
}

Tensor FeedForward::hidden_backward(Ctx& ctx, const Tensor& dy) {
  Tensor da = fc2.backward(ctx, dy);
  ctx.be.activation_bwd(act_, da, act_in_, da);  // in place: da becomes dh
  act_in_ = Tensor();
  return da;
}

void FeedForward::for_each_param(const ParamVisitor& f) {
  fc1.for_each_param(f);
  fc2.for_each_param(f);
}

}  // namespace mh
