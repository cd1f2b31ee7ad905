// What every module shares: parameters with names, and the per-step context.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace mh {

// A named parameter and its gradient (same shape; backward accumulates into grad).
struct Param {
  std::string name;  // the checkpoint name, e.g. "encoder.layers.0.self_attn.q_proj.weight"
  Tensor value;
  Tensor grad;
};
using ParamVisitor = std::function<void(Param&)>;

// Parameter gradients are kept in fp32 whatever the compute dtype (f64 in the f64 test models):
// under mixed precision they are summed over micro-batches and ranks, where bf16 would lose bits.
inline DType grad_dtype(DType compute) {
  return compute == DType::f64 ? DType::f64 : DType::f32;
}
// Statistics (LayerNorm mean and 1/std) likewise.
inline DType stat_dtype(DType compute) {
  return grad_dtype(compute);
}

// Allocates value (compute dtype) and a zeroed grad (grad_dtype) on the backend.
Param make_param(Backend& be, std::string name, const Shape& shape, DType dtype);

// Moves every gradient (values too) into one new buffer, in the order given, and re-points each
// p.grad at its slice; returns the buffer. Zeroing a step's gradients is then one fill, not one
// launch per parameter (a Transformer has hundreds); data parallelism all-reduces its slices.
Tensor flatten_grads(Backend& be, const std::vector<Param*>& params);

// Per-step state passed down through forward and backward: the backend, training mode and the
// dropout stream. Dropout sites take consecutive offsets in forward order; each site remembers
// its offset so backward regenerates the same mask.
struct Ctx {
  Backend& be;
  bool training = false;
  uint64_t seed = 0;  // dropout seed (train.seed)
  uint64_t step = 0;  // micro-step counter: a fresh mask every forward
  uint64_t site = 0;  // dropout sites used so far in this forward

  // Called by backward when a parameter's gradient is final for this step (data parallelism
  // starts its all-reduce then). Unset: nobody is listening (single process, or a micro-batch
  // before the last of a step).
  std::function<void(Param&)> on_grad_ready;

  explicit Ctx(Backend& backend) : be(backend) {}
  void grad_ready(Param& p) {
    if (on_grad_ready) on_grad_ready(p);
  }
  uint64_t next_dropout_offset() { return (step << 24) | site++; }
  void begin_forward(uint64_t micro_step) {
    step = micro_step;
    site = 0;
  }
};

}  // namespace mh
