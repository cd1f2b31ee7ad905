#include "model/transformer.h"

#include <cmath>
#include <random>

namespace mh {

namespace {
// Writes host values produced by gen(i) into a host tensor of dtype f32 or f64.
template <typename Gen>
void fill_host(Tensor& t, Gen&& gen) {
  MH_CHECK(t.device() == Device::cpu, "init on the host");
  if (t.dtype() == DType::f32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(gen(i));
  } else {
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = gen(i);
  }
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

Transformer::Transformer(Backend& be, const ModelConfig& cfg, DType dtype)
    : be_(be), cfg_(cfg), dtype_(dtype), src_drop_(cfg.dropout), tgt_drop_(cfg.dropout) {
  MH_CHECK(cfg.d_model % cfg.heads == 0, "d_model % heads");
  const Shape table = {cfg.vocab_size, cfg.d_model};
  if (cfg.share_embeddings) {
    embed_ = make_param(be, "embed.weight", table, dtype);
  } else {
    src_embed_ = make_param(be, "src_embed.weight", table, dtype);
    tgt_embed_ = make_param(be, "tgt_embed.weight", table, dtype);
    out_proj_ = make_param(be, "out_proj.weight", table, dtype);
  }
  for (int64_t i = 0; i < cfg.encoder_layers; ++i)
    encoder_.push_back(std::make_unique<EncoderLayer>(be, str("encoder.layers.", i), cfg, dtype));
  for (int64_t i = 0; i < cfg.decoder_layers; ++i)
    decoder_.push_back(std::make_unique<DecoderLayer>(be, str("decoder.layers.", i), cfg, dtype));
  if (cfg.norm == NormPlacement::pre) {
    encoder_norm_ =
        std::make_unique<LayerNorm>(be, "encoder.norm", cfg.d_model, cfg.norm_eps, dtype);
    decoder_norm_ =
        std::make_unique<LayerNorm>(be, "decoder.norm", cfg.d_model, cfg.norm_eps, dtype);
  }
  // PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d))
  Tensor pe =
      Tensor::empty({cfg.max_len, cfg.d_model}, dtype == DType::f64 ? DType::f64 : DType::f32);
  const int64_t d = cfg.d_model;
  fill_host(pe, [&](int64_t idx) {
    int64_t pos = idx / d, j = idx % d, i2 = j - (j % 2);
    double angle = static_cast<double>(pos) / std::pow(10000.0, static_cast<double>(i2) / d);
    return j % 2 == 0 ? std::sin(angle) : std::cos(angle);
  });
  pe_ = be.empty(pe.shape(), dtype);
  be.upload(pe, pe_);
}

void Transformer::init(uint64_t seed) {
  std::mt19937_64 rng(seed);
  for_each_param([&](Param& p) {
    Tensor host = Tensor::empty(p.value.shape(), dtype_ == DType::f64 ? DType::f64 : DType::f32);
    const bool is_embedding =
        p.value.dim(0) == cfg_.vocab_size && p.value.ndim() == 2 &&
        (p.name.find("embed") != std::string::npos || p.name == "out_proj.weight");
    if (is_embedding) {
      // N(0, d^-1/2): the √d scale in forward brings embeddings to unit size, like the PE.
      std::normal_distribution<double> n(0.0, 1.0 / std::sqrt(static_cast<double>(cfg_.d_model)));
      fill_host(host, [&](int64_t) { return n(rng); });
    } else if (p.value.ndim() == 2) {
      // Xavier-uniform: keeps activation variance through each Linear.
      double bound = std::sqrt(6.0 / static_cast<double>(p.value.dim(0) + p.value.dim(1)));
      std::uniform_real_distribution<double> u(-bound, bound);
      fill_host(host, [&](int64_t) { return u(rng); });
    } else {
      // LayerNorm weight 1; every bias 0.
      const bool norm_weight = ends_with(p.name, "norm.weight");
      fill_host(host, [&](int64_t) { return norm_weight ? 1.0 : 0.0; });
    }
    be_.upload(host, p.value);  // reduced-precision values are narrowed on the device
  });
}

Tensor Transformer::embed(Ctx& ctx, const Param& table, const Tensor& ids, Dropout& drop,
                          Tensor& ids_keep) {
  MH_CHECK(ids.ndim() == 2 && ids.dim(1) <= cfg_.max_len, "ids ", shape_str(ids.shape()),
           " longer than model.max_len ", cfg_.max_len);
  ids_keep = ctx.be.to_device(ids);
  Tensor y = ctx.be.empty({ids.dim(0), ids.dim(1), cfg_.d_model}, dtype_);
  ctx.be.embed_fwd(ids_keep, table.value, pe_, std::sqrt(static_cast<double>(cfg_.d_model)), y);
  return drop.forward(ctx, y);
}

Tensor Transformer::encode(Ctx& ctx, const Tensor& src, const std::vector<int32_t>& src_len) {
  src_mask_ = AttnMask{src_len, false};
  Tensor x = embed(ctx, src_table(), src, src_drop_, src_ids_);
  for (auto& layer : encoder_) x = layer->forward(ctx, x, src_mask_);
  return encoder_norm_ ? encoder_norm_->forward(ctx, x) : x;
}

Tensor Transformer::decode(Ctx& ctx, const Tensor& memory, const std::vector<int32_t>& src_len,
                           const Tensor& tgt_in, const std::vector<int32_t>& tgt_len) {
  src_mask_ = AttnMask{src_len, false};
  tgt_mask_ = AttnMask{tgt_len, true};
  batch_ = tgt_in.dim(0);
  src_len_max_ = memory.dim(1);
  tgt_len_max_ = tgt_in.dim(1);
  Tensor y = embed(ctx, tgt_table(), tgt_in, tgt_drop_, tgt_ids_);
  for (auto& layer : decoder_) y = layer->forward(ctx, y, memory, tgt_mask_, src_mask_);
  if (decoder_norm_) y = decoder_norm_->forward(ctx, y);
  dec_out_ = y.view({batch_ * tgt_len_max_, cfg_.d_model});
  Tensor logits = ctx.be.empty({batch_ * tgt_len_max_, cfg_.vocab_size}, dtype_);
  ctx.be.gemm(dec_out_, false, out_table().value, true, logits, 1.0, 0.0);  // y Wᵀ
  return logits;
}

Tensor Transformer::forward(Ctx& ctx, const ModelInput& in) {
  Tensor memory = encode(ctx, in.src, in.src_len);
  return decode(ctx, memory, in.src_len, in.tgt_in, in.tgt_len);
}

void Transformer::backward(Ctx& ctx, const Tensor& dlogits) {
  const int64_t d = cfg_.d_model;
  const double emb_scale = std::sqrt(static_cast<double>(d));
  Param& out = out_table();
  Tensor dy = ctx.be.empty({batch_, tgt_len_max_, d}, dtype_);
  ctx.be.gemm(dlogits, false, out.value, false, dy, 1.0, 0.0);      // dy = dlogits W
  ctx.be.gemm(dlogits, true, dec_out_, false, out.grad, 1.0, 1.0);  // dW += dlogitsᵀ y
  if (!cfg_.share_embeddings) ctx.grad_ready(out_proj_);
  dec_out_ = Tensor();
  if (decoder_norm_) dy = decoder_norm_->backward(ctx, dy);
  Tensor d_memory = ctx.be.zeros({batch_, src_len_max_, d}, dtype_);
  for (auto it = decoder_.rbegin(); it != decoder_.rend(); ++it)
    dy = (*it)->backward(ctx, dy, d_memory);
  ctx.be.embed_bwd(tgt_ids_, tgt_drop_.backward(ctx, dy), emb_scale, tgt_table().grad);
  if (!cfg_.share_embeddings) ctx.grad_ready(tgt_embed_);
  Tensor dx = encoder_norm_ ? encoder_norm_->backward(ctx, d_memory) : d_memory;
  for (auto it = encoder_.rbegin(); it != encoder_.rend(); ++it) dx = (*it)->backward(ctx, dx);
  ctx.be.embed_bwd(src_ids_, src_drop_.backward(ctx, dx), emb_scale, src_table().grad);
  // The shared matrix collects gradient from output, target and source: final only now.
  ctx.grad_ready(cfg_.share_embeddings ? embed_ : src_embed_);
}

void Transformer::for_each_param(const ParamVisitor& f) {
  if (cfg_.share_embeddings) {
    f(embed_);
  } else {
    f(src_embed_);
    f(tgt_embed_);
  }
  for (auto& layer : encoder_) layer->for_each_param(f);
  if (encoder_norm_) encoder_norm_->for_each_param(f);
  for (auto& layer : decoder_) layer->for_each_param(f);
  if (decoder_norm_) decoder_norm_->for_each_param(f);
  if (!cfg_.share_embeddings) f(out_proj_);
}

void Transformer::zero_grad() {
  for_each_param([this](Param& p) { be_.zero(p.grad); });
}

int64_t Transformer::num_params() {
  int64_t n = 0;
  for_each_param([&](Param& p) { n += p.value.numel(); });
  return n;
}

}  // namespace mh
