// The small layers: Linear, LayerNorm, Dropout, FeedForward. Each keeps what its backward needs.
#pragma once

#include "model/module.h"

namespace mh {

// y = x Wᵀ + b.  weight: [out, in], bias: [out] (PyTorch convention).
class Linear {
 public:
  Linear(Backend& be, const std::string& name, int64_t in, int64_t out, DType dtype);
  // x: [N, in] -> act(x Wᵀ + b) [N, out], the activation fused where the backend can (act's
  // backward is the caller's: backward takes d/d(x Wᵀ + b)); keeps x
  Tensor forward(Ctx& ctx, const Tensor& x, std::optional<ActKind> act = std::nullopt);
  Tensor backward(Ctx& ctx, const Tensor& dy);  // -> dx [N, in]; dW += dyᵀ x; db += Σ_n dy
  // The same, adding dx into dx_sum [N, in] (the GEMM's beta = 1) where the gradients of several
  // paths meet: no sum kernel, no extra pass over memory.
  void backward_add(Ctx& ctx, const Tensor& dy, Tensor& dx_sum);
  void for_each_param(const ParamVisitor& f);

  Param weight, bias;

 private:
  void param_grads(Ctx& ctx, const Tensor& dy);  // dW, db; releases x
  Tensor x_;
};

// LayerNorm over the last dimension, with affine weight and bias.
class LayerNorm {
 public:
  LayerNorm(Backend& be, const std::string& name, int64_t dim, double eps, DType dtype);
  Tensor forward(Ctx& ctx, const Tensor& x);  // [N, D] -> [N, D]
  // LN(x + dropout(body)), dropout with rate p at `offset` of ctx.seed's stream (p = 0: none), as
  // one backend op (Backend::residual_layernorm_fwd); backward then gives d(x + dropout(body)).
  Tensor forward_residual(Ctx& ctx, const Tensor& x, const Tensor& body, double p, uint64_t offset);
  Tensor backward(Ctx& ctx, const Tensor& dy);  // -> dx
  void for_each_param(const ParamVisitor& f);

  Param weight, bias;

 private:
  double eps_;
  Tensor x_, mean_, rstd_;
};

// Inverted dropout; identity when not training or p == 0.
class Dropout {
 public:
  explicit Dropout(double p) : p_(p) {}
  Tensor forward(Ctx& ctx, const Tensor& x);
  // For an op that applies this dropout itself (LayerNorm::forward_residual): takes this
  // forward's site as forward would and returns {p, offset}, p = 0 when inactive.
  std::pair<double, uint64_t> forward_site(Ctx& ctx);
  Tensor backward(Ctx& ctx, const Tensor& dy);

 private:
  double p_;
  bool active_ = false;
  uint64_t offset_ = 0;
};

// fc2(act(fc1(x))). ReLU is fused into fc1 (Backend::linear_fwd) and its backward reads fc1's
// output, which fc2 keeps anyway; gelu runs on its own and keeps fc1's output before it.
class FeedForward {
 public:
  FeedForward(Backend& be, const std::string& name, int64_t d_model, int64_t d_ff, ActKind act,
              DType dtype);
  Tensor forward(Ctx& ctx, const Tensor& x);  // [N, D] -> [N, D]
  Tensor backward(Ctx& ctx, const Tensor& dy);
  void backward_add(Ctx& ctx, const Tensor& dy, Tensor& dx_sum);  // dx_sum += dx (Linear's)
  void for_each_param(const ParamVisitor& f);

  Linear fc1, fc2;

 private:
  Tensor hidden_backward(Ctx& ctx, const Tensor& dy);  // through fc2 and act: d(fc1's output)
  ActKind act_;
  Tensor act_in_;  // what act's backward reads: relu(h) for relu, h (fc1's output) for gelu
};

}  // namespace mh
