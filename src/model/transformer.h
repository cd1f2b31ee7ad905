// The Transformer of "Attention Is All You Need": embeddings × √d_model + sinusoidal positions,
// N encoder layers, N decoder layers, output projection (tied to the embedding when shared).
#pragma once

#include <memory>
#include <vector>

#include "config/config.h"
#include "model/transformer_layers.h"

namespace mh {

// One batch of padded sequences, as the model sees it (host tensors; pad = model.pad_id).
struct ModelInput {
  Tensor src;                    // [B, Ls] i32
  std::vector<int32_t> src_len;  // [B] real tokens per source
  Tensor tgt_in;                 // [B, Lt] i32: BOS y1 ... (decoder input, tgt[:-1])
  std::vector<int32_t> tgt_len;  // [B] real tokens per decoder input
};

class Transformer {
 public:
  Transformer(Backend& be, const ModelConfig& cfg, DType dtype = DType::f32);

  // Random init on the host, reproducible from seed: Xavier-uniform Linear weights, zero biases,
  // LayerNorm (1, 0), embeddings N(0, d_model^-1/2).
  void init(uint64_t seed);

  // Training forward: logits [B * Lt, V] for every decoder position (pads included).
  Tensor forward(Ctx& ctx, const ModelInput& in);
  // Backward from d(loss)/d(logits); accumulates into every parameter's grad.
  void backward(Ctx& ctx, const Tensor& dlogits);

  // The two halves, for decoding. encode: [B, Ls, D]; decode: logits [B * Lt, V].
  Tensor encode(Ctx& ctx, const Tensor& src, const std::vector<int32_t>& src_len);
  Tensor decode(Ctx& ctx, const Tensor& memory, const std::vector<int32_t>& src_len,
                const Tensor& tgt_in, const std::vector<int32_t>& tgt_len);

  // Parameters in forward order (embeddings, encoder, decoder, output); DDP buckets reverse it.
  void for_each_param(const ParamVisitor& f);
  void zero_grad();  // one fill per parameter (the Trainer fills its flat buffer once instead)
  int64_t num_params();
  const ModelConfig& config() const { return cfg_; }
  DType dtype() const { return dtype_; }

 private:
  Tensor embed(Ctx& ctx, const Param& table, const Tensor& ids, Dropout& drop, Tensor& ids_keep);
  Param& src_table() { return cfg_.share_embeddings ? embed_ : src_embed_; }
  Param& tgt_table() { return cfg_.share_embeddings ? embed_ : tgt_embed_; }
  Param& out_table() { return cfg_.share_embeddings ? embed_ : out_proj_; }

  Backend& be_;
  ModelConfig cfg_;
  DType dtype_;
  Param embed_, src_embed_, tgt_embed_, out_proj_;  // which exist depends on share_embeddings
  Tensor pe_;                                       // [max_len, D] sinusoidal table
  std::vector<std::unique_ptr<EncoderLayer>> encoder_;
  std::vector<std::unique_ptr<DecoderLayer>> decoder_;
  std::unique_ptr<LayerNorm> encoder_norm_, decoder_norm_;  // pre-LN only
  Dropout src_drop_, tgt_drop_;
  // Saved for backward.
  Tensor src_ids_, tgt_ids_, dec_out_;
  AttnMask src_mask_, tgt_mask_;
  int64_t batch_ = 0, src_len_max_ = 0, tgt_len_max_ = 0;
};

}  // namespace mh
