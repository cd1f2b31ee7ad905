// Backend: the math the model needs, as plain functions over tensors. A Backend owns no model
// state, so each op is testable alone and every device implements the same contract. The CPU
// backend (cpu/) is the reference: it runs in f32 and f64 (f64 for finite-difference tests).
//
// Conventions: "=" outputs are overwritten, "+=" outputs are accumulated (parameter gradients).
// Matrices are row-major; a tensor [..., K] used as a matrix is [numel / K, K].
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/attn_impl.h"
#include "core/tensor.h"

namespace mh {

enum class ActKind { relu, gelu };

// Arguments of multi-head scaled dot-product attention over a batch of padded sequences.
// q rows are [B, Lq, H*dk] and k/v rows [B, Lk, H*dk]: heads interleaved, exactly the output of
// the projections, so no transposes are needed.
//
// Attention dropout (dropout > 0) drops probabilities after the softmax (inverted dropout, as
// Backend::dropout_fwd): probability P[b, h, i, j] is kept iff
// philox_uniform_at(seed, offset, ((b·H + h)·Lq + i)·Lk + j) >= dropout (core/philox.h), i.e. the
// mask Backend::dropout_fwd would draw over a [B, H, Lq, Lk] tensor. Every implementation draws
// the same bits, in forward and in backward.
struct AttnArgs {
  int64_t batch = 0, heads = 0, len_q = 0, len_k = 0, head_dim = 0;
  const int32_t* key_len = nullptr;  // [B] valid keys per sequence (key-padding mask); host
  bool causal = false;               // query i sees keys j <= i
  double scale = 0;                  // usually 1/sqrt(head_dim)
  double dropout = 0;                // attention dropout probability (0 = off)
  uint64_t seed = 0, offset = 0;     // its Philox stream
  AttnImpl impl = AttnImpl::naive;   // GPU implementation (see AttnImpl)
};

// What attention_fwd keeps for attention_bwd; which fields are set depends on the implementation
// that ran (the backend allocates them). Callers only hold it between the two calls.
struct AttnSaved {
  Tensor out;    // the forward output (fused backward needs rowsum(dO ∘ O))
  Tensor probs;  // [B, H, Lq, Lk] softmax probabilities, before dropout (naive, CPU)
  Tensor lse;    // F32 softmax statistics: row log-sum-exp of the scaled scores (custom, cudnn)
  AttnImpl ran = AttnImpl::naive;  // the implementation that produced them
};

struct XentResult {
  double loss_sum = 0;  // label-smoothed loss summed over non-pad tokens
  double nll_sum = 0;   // plain negative log-likelihood summed over non-pad tokens
  int64_t tokens = 0;   // non-pad tokens
};

struct Backend {
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // The device this backend computes on; inputs elsewhere are copied here (Backend::to_device).
  virtual Device device() const { return Device::cpu; }

  // Tensors on this backend's device. Modules allocate through these, never directly.
  virtual Tensor empty(const Shape& shape, DType dtype) = 0;
  virtual Tensor zeros(const Shape& shape, DType dtype) = 0;

  // c = alpha * op(a) @ op(b) + beta * c;  op(x) = x or xᵀ. a, b, c viewed as 2-D matrices.
  virtual void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                    double alpha, double beta) = 0;
  // y[n, :] += bias  (y: [N, F], bias: [F])
  virtual void add_bias(Tensor& y, const Tensor& bias) = 0;
  // dbias += sum_n dy[n, :]
  virtual void bias_grad(const Tensor& dy, Tensor& dbias) = 0;
  // A Linear layer's forward: y = act(x Wᵀ + b), act optional.  x: [N, in]; weight: [out, in];
  // bias: [out]; y: [N, out]. The default composes gemm, add_bias and activation_fwd; a backend
  // may fuse them (CUDA: bias and ReLU in the GEMM's epilogue).
  virtual void linear_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                          std::optional<ActKind> act, Tensor& y) {
    gemm(x, false, weight, true, y, 1.0, 0.0);
    add_bias(y, bias);
    if (act) activation_fwd(*act, y, y);
  }
  // A Linear layer's parameter gradients: dweight += dyᵀ x; dbias += sum_n dy[n, :].
  // dy: [N, out]; x: [N, in]; dweight: [out, in]; dbias: [out]. The default composes gemm and
  // bias_grad; a backend may fuse them (CUDA: the bias gradient in the GEMM's epilogue).
  virtual void linear_bwd_params(const Tensor& dy, const Tensor& x, Tensor& dweight,
                                 Tensor& dbias) {
    gemm(dy, true, x, false, dweight, 1.0, 1.0);
    bias_grad(dy, dbias);
  }
  // out = a + b (same shapes; out may alias a or b)
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // x *= s
  virtual void scale(Tensor& x, double s) = 0;
  // x = 0 (every dtype)
  virtual void zero(Tensor& x) = 0;
  // dst = src (same shape and dtype, any devices this backend can reach)
  virtual void copy(const Tensor& src, Tensor& dst) = 0;
  // dst = src converted to dst's dtype (same numel, same device): master weights ↔ compute copies.
  virtual void cast(const Tensor& src, Tensor& dst) = 0;
  // dst = host converted to dst's dtype: copied as it is to this device, then cast there (the
  // host only holds f32/f64; bf16/f16 copies are made on the device).
  void upload(const Tensor& host, Tensor& dst) {
    if (host.dtype() == dst.dtype()) return copy(host, dst);
    Tensor staged = empty(host.shape(), host.dtype());
    copy(host, staged);
    cast(staged, dst);
  }
  // t itself when it is on this backend's device, else a copy there.
  Tensor to_device(const Tensor& t) {
    if (t.device() == device()) return t;
    Tensor d = empty(t.shape(), t.dtype());
    copy(t, d);
    return d;
  }

  // LayerNorm over the last dim D. x, y: [N, D]; weight, bias: [D]; mean, rstd: [N] (f32/f64 as x).
  virtual void layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                             Tensor& y, Tensor& mean, Tensor& rstd) = 0;
  // dx = ...; dweight += ...; dbias += ...
  virtual void layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight,
                             const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                             Tensor& dbias) = 0;
  // A post-LN residual's end: sum = x + dropout(body), with dropout_fwd's mask for (p, seed,
  // offset) (none when p == 0), then y = layernorm(sum) as layernorm_fwd. All of x, body, sum, y
  // are [N, D]; sum is what layernorm_bwd reads back. The default composes dropout_fwd, add and
  // layernorm_fwd; a backend may do it in one pass (CUDA: x and body read once, no dropped
  // tensor).
  virtual void residual_layernorm_fwd(const Tensor& x, const Tensor& body, double p, uint64_t seed,
                                      uint64_t offset, const Tensor& weight, const Tensor& bias,
                                      double eps, Tensor& sum, Tensor& y, Tensor& mean,
                                      Tensor& rstd) {
    if (p > 0) {
      Tensor dropped = empty(body.shape(), body.dtype());
      dropout_fwd(body, p, seed, offset, dropped);
      add(x, dropped, sum);
    } else {
      add(x, body, sum);
    }
    layernorm_fwd(sum, weight, bias, eps, y, mean, rstd);
  }

  // y = act(x); gelu is the exact erf form (PyTorch's default). y may alias x.
  virtual void activation_fwd(ActKind kind, const Tensor& x, Tensor& y) = 0;
  // dx = dy * act'(x); dx may alias dy. For relu, x may be the forward's output y = relu(x)
  // instead: relu'(x) = [x > 0] = [y > 0].
  virtual void activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx) = 0;

  // Inverted dropout: keep with probability 1-p, scale kept values by 1/(1-p). The mask is a pure
  // function of (seed, offset, element index) via Philox, so backward regenerates it.
  virtual void dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset,
                           Tensor& y) = 0;
  virtual void dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset,
                           Tensor& dx) = 0;

  // y[b, t, :] = table[ids[b, t], :] * scale + pe[t, :]   ids: [B, L] i32; table: [V, D];
  // pe: [max_len, D]; y: [B, L, D]
  virtual void embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe, double scale,
                         Tensor& y) = 0;
  // dtable[ids[b, t], :] += scale * dy[b, t, :]
  virtual void embed_bwd(const Tensor& ids, const Tensor& dy, double scale, Tensor& dtable) = 0;

  // out = dropout(softmax(q kᵀ · scale + mask)) v per (batch, head).  q, out: [B, Lq, H*dk];
  // k, v: [B, Lk, H*dk]. A query row with no visible key outputs 0. `saved` receives what
  // attention_bwd needs (see AttnSaved).
  virtual void attention_fwd(const AttnArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                             Tensor& out, AttnSaved& saved) = 0;
  // dq, dk, dv = ... (overwritten; keys past key_len get 0). `a` and q, k, v as in forward.
  virtual void attention_bwd(const AttnArgs& a, const Tensor& dout, const Tensor& q,
                             const Tensor& k, const Tensor& v, const AttnSaved& saved, Tensor& dq,
                             Tensor& dk, Tensor& dv) = 0;

  // Label-smoothed cross-entropy with PyTorch's semantics
  // (F.cross_entropy(logits, labels, ignore_index=pad, label_smoothing=eps), sums returned).
  // logits: [N, V]; labels: [N] i32. If dlogits is defined, it receives
  // d(loss_sum * grad_scale)/dlogits (pad rows 0).
  virtual XentResult softmax_xent(const Tensor& logits, const Tensor& labels, int64_t pad_id,
                                  double smoothing, double grad_scale, Tensor* dlogits) = 0;

  // Sum of squares of x (for the global gradient norm).
  virtual double sum_squares(const Tensor& x) = 0;
  // Σ over the tensors of their sums of squares. A GPU backend adds them on the device and
  // synchronizes once (one host round trip per step instead of one per parameter).
  virtual double sum_squares_all(const std::vector<const Tensor*>& xs) {
    double s = 0;
    for (const Tensor* x : xs) s += sum_squares(*x);
    return s;
  }
  // Adam with bias correction (and decoupled weight decay when wd > 0), step >= 1:
  // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²; p -= lr * (m̂ / (sqrt(v̂) + eps) + wd p)
  virtual void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr,
                         double beta1, double beta2, double eps, double weight_decay, int64_t step,
                         double grad_scale) = 0;
  // adam_step over many parameters with the same hyper-parameters: one launch on a GPU
  // (multi-tensor Adam). The default steps them one by one.
  struct AdamSlot {
    Tensor* param;
    const Tensor* grad;
    Tensor* m;
    Tensor* v;
    // Optional: receives the updated param rounded to its dtype (the bf16/fp16 weights the model
    // computes with, beside fp32 master weights): one pass over memory instead of two.
    Tensor* copy = nullptr;
  };
  virtual void adam_step_all(const std::vector<AdamSlot>& slots, double lr, double beta1,
                             double beta2, double eps, double weight_decay, int64_t step,
                             double grad_scale) {
    for (const AdamSlot& s : slots) {
      adam_step(*s.param, *s.grad, *s.m, *s.v, lr, beta1, beta2, eps, weight_decay, step,
                grad_scale);
      if (s.copy) cast(*s.param, *s.copy);
    }
  }
};

}  // namespace mh
