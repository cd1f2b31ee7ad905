// Encoder and decoder layers, post-LN (the paper) or pre-LN.
//   post: h = LN(x + Drop(SelfAttn(x)));   y = LN(h + Drop(FFN(h)))
//   pre:  h = x + Drop(SelfAttn(LN(x)));   y = h + Drop(FFN(LN(h)))
// The decoder adds a cross-attention sublayer over the encoder output between the two.
#pragma once

#include "config/config.h"
#include "model/attention.h"

namespace mh {

// One residual sublayer around a body: the norm placement and the dropout live here, so encoder
// and decoder share them.
class Residual {
 public:
  Residual(Backend& be, const std::string& norm_name, const ModelConfig& cfg, DType dtype);
  // Before the body: returns the body's input (LN(x) for pre-LN, x for post-LN).
  Tensor enter(Ctx& ctx, const Tensor& x);
  // After the body: returns the sublayer output given the body output.
  Tensor leave(Ctx& ctx, const Tensor& body_out);
  // Backward of leave: returns {d_body_out, d_x (the residual path's share)}.
  std::pair<Tensor, Tensor> leave_backward(Ctx& ctx, const Tensor& dy);
  // Where the body's backward adds the gradient of its input (Linear::backward_add): post-LN,
  // the body read x itself, so its gradient adds straight into d_x_residual (which this returns,
  // to be written; the x + body sum then costs no kernel in backward); pre-LN, a zeroed tensor,
  // since the body read LN(x).
  Tensor body_grad_sum(Ctx& ctx, const Tensor& d_x_residual);
  // Backward of enter, given the body's input gradient summed in body_grad_sum's tensor: returns
  // d_x, the residual path's share plus the body's (through the norm for pre-LN).
  Tensor enter_backward(Ctx& ctx, const Tensor& d_body_in, const Tensor& d_x_residual);

  LayerNorm norm;

 private:
  bool pre_;
  Dropout dropout_;
  Tensor x_;
};

class EncoderLayer {
 public:
  EncoderLayer(Backend& be, const std::string& name, const ModelConfig& cfg, DType dtype);
  Tensor forward(Ctx& ctx, const Tensor& x, const AttnMask& src_mask);  // [B, L, D]
  Tensor backward(Ctx& ctx, const Tensor& dy);
  void for_each_param(const ParamVisitor& f);

  MultiHeadAttention self_attn;
  Residual self_res;
  FeedForward ffn;
  Residual ffn_res;
};

class DecoderLayer {
 public:
  DecoderLayer(Backend& be, const std::string& name, const ModelConfig& cfg, DType dtype);
  // x: [B, Lt, D]; memory: [B, Ls, D] (encoder output)
  Tensor forward(Ctx& ctx, const Tensor& x, const Tensor& memory, const AttnMask& self_mask,
                 const AttnMask& cross_mask);
  // Returns dx; adds this layer's gradient w.r.t. memory into d_memory.
  Tensor backward(Ctx& ctx, const Tensor& dy, Tensor& d_memory);
  void for_each_param(const ParamVisitor& f);

  MultiHeadAttention self_attn;
  Residual self_res;
  MultiHeadAttention cross_attn;
  Residual cross_res;
  FeedForward ffn;
  Residual ffn_res;
};

}  // namespace mh
