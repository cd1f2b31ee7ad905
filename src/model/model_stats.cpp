#include "model/model_stats.h"

#include <algorithm>

namespace mh {

int64_t count_params(const ModelConfig& m) {
  const int64_t d = m.d_model, f = m.d_ff, v = m.vocab_size;
  const int64_t attention = 4 * (d * d + d);
  const int64_t norm = 2 * d;
  const int64_t ffn = f * d + f + d * f + d;
  const int64_t encoder_layer = attention + norm + ffn + norm;
  const int64_t decoder_layer = 2 * (attention + norm) + ffn + norm;
  const int64_t embeddings = (m.share_embeddings ? 1 : 3) * v * d;
  const int64_t final_norms = m.norm == NormPlacement::pre ? 2 * norm : 0;
  return embeddings + m.encoder_layers * encoder_layer + m.decoder_layers * decoder_layer +
         final_norms;
}

TokenFlops flops_per_token(const ModelConfig& m, double src_len, double tgt_len) {
  const double d = static_cast<double>(m.d_model), f = static_cast<double>(m.d_ff);
  const double v = static_cast<double>(m.vocab_size);
  const double ls = src_len, lt = tgt_len;
  const double encoder =
      static_cast<double>(m.encoder_layers) * ls * (2 * (4 * d * d + 2 * d * f) + 4 * ls * d);
  const double decoder =
      static_cast<double>(m.decoder_layers) *
      (lt * (2 * (6 * d * d + 2 * d * f) + 4 * lt * d + 4 * ls * d) + ls * 2 * 2 * d * d);
  const double output = lt * 2 * d * v;
  TokenFlops out;
  out.forward = (encoder + decoder + output) / lt;
  out.train = 3 * out.forward;
  return out;
}

double typical_seq_len(const Config& c) {
  double len = 32;
  if (c.data.task != "pairs")
    len = static_cast<double>(c.data.toy_min_len + c.data.toy_max_len) / 2 + 1;
  return std::min(len, static_cast<double>(c.model.max_len));
}

}  // namespace mh
