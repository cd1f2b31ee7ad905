// Every module's backward (and the whole Transformer's) against central finite differences in
// float64: input gradients and every parameter gradient, with padding masks, both norm
// placements, both activations, and dropout active (masks are reproducible per step).
#include <memory>

#include "backend/cpu/cpu_backend.h"
#include "gradcheck.h"
#include "model/transformer.h"

using namespace mh;
using mh::test::check_gradients;
using mh::test::GradVar;
using mh::test::random_tensor;

namespace {

constexpr DType f64 = DType::f64;

// Random, non-trivial values for every parameter (not the training init: every weight matters).
template <typename Module>
std::vector<std::unique_ptr<GradVar>> param_vars(Module& m, std::mt19937_64& rng) {
  std::vector<std::unique_ptr<GradVar>> vars;
  m.for_each_param([&](Param& p) {
    Tensor r = random_tensor(p.value.shape(), rng, 0.4);
    for (int64_t i = 0; i < r.numel(); ++i) p.value.set_item(i, r.item(i));
    vars.push_back(std::make_unique<GradVar>(GradVar{p.name, p.value, p.grad}));
  });
  return vars;
}

std::vector<GradVar*> ptrs(std::vector<std::unique_ptr<GradVar>>& v, std::vector<GradVar*> more) {
  for (auto& p : v) more.push_back(p.get());
  return more;
}

template <typename Module>
void zero_grads(Module& m) {
  m.for_each_param([](Param& p) { p.grad.zero_(); });
}

ModelConfig small_config(NormPlacement norm, Activation act, bool share, double dropout) {
  ModelConfig c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.heads = 2;
  c.d_ff = 12;
  c.encoder_layers = 2;
  c.decoder_layers = 2;
  c.dropout = dropout;
  c.norm = norm;
  c.activation = act;
  c.share_embeddings = share;
  c.max_len = 16;
  return c;
}

struct ModulesTest : ::testing::Test {
  CpuBackend be;
  Ctx ctx{be};
  std::mt19937_64 rng{3};
};

TEST_F(ModulesTest, Linear) {
  Linear lin(be, "lin", 5, 4, f64);
  auto params = param_vars(lin, rng);
  GradVar x{"x", random_tensor({2, 3, 5}, rng), {}};
  auto fwd = [&] { return lin.forward(ctx, x.value); };
  auto bwd = [&](const Tensor& dy) {
    zero_grads(lin);
    fwd();
    x.grad = lin.backward(ctx, dy);
  };
  check_gradients(fwd, bwd, ptrs(params, {&x}));
}

TEST_F(ModulesTest, LayerNorm) {
  LayerNorm ln(be, "ln", 6, 1e-5, f64);
  auto params = param_vars(ln, rng);
  GradVar x{"x", random_tensor({4, 6}, rng, 3.0), {}};
  auto fwd = [&] { return ln.forward(ctx, x.value); };
  auto bwd = [&](const Tensor& dy) {
    zero_grads(ln);
    fwd();
    x.grad = ln.backward(ctx, dy);
  };
  check_gradients(fwd, bwd, ptrs(params, {&x}));
}

TEST_F(ModulesTest, FeedForward) {
  for (ActKind act : {ActKind::relu, ActKind::gelu}) {
    FeedForward ffn(be, "ffn", 6, 10, act, f64);
    auto params = param_vars(ffn, rng);
    GradVar x{"x", random_tensor({5, 6}, rng), {}};
    auto fwd = [&] { return ffn.forward(ctx, x.value); };
    auto bwd = [&](const Tensor& dy) {
      zero_grads(ffn);
      fwd();
      x.grad = ffn.backward(ctx, dy);
    };
    check_gradients(fwd, bwd, ptrs(params, {&x}));
  }
}

TEST_F(ModulesTest, SelfAttentionPaddedAndCausal) {
  for (bool causal : {false, true}) {
    MultiHeadAttention mha(be, "attn", 6, 3, f64);
    auto params = param_vars(mha, rng);
    GradVar x{"x", random_tensor({3, 5, 6}, rng), {}};
    AttnMask mask{{5, 2, 4}, causal};
    auto fwd = [&] { return mha.forward(ctx, x.value, x.value, mask); };
    auto bwd = [&](const Tensor& dy) {
      zero_grads(mha);
      fwd();
      x.grad = be.zeros(x.value.shape(), f64);  // the queries', keys' and values' paths add here
      mha.backward_add(ctx, dy, x.grad, x.grad);
    };
    check_gradients(fwd, bwd, ptrs(params, {&x}));
  }
}

// backward_add adds to what its sums hold (the layers pass the residual's gradient, the decoder
// the encoder output's gradient of the layers before): the same as backward's, plus that.
TEST_F(ModulesTest, AttentionBackwardAddAddsToTheSums) {
  MultiHeadAttention mha(be, "attn", 6, 2, f64);
  auto params = param_vars(mha, rng);
  const Tensor xq = random_tensor({2, 3, 6}, rng), xkv = random_tensor({2, 7, 6}, rng);
  const Tensor dy = random_tensor({2, 3, 6}, rng);
  const Tensor q0 = random_tensor({2, 3, 6}, rng), kv0 = random_tensor({2, 7, 6}, rng);
  AttnMask mask{{7, 4}, false};
  mha.forward(ctx, xq, xkv, mask);
  auto [dq, dkv] = mha.backward(ctx, dy);
  Tensor q_sum = q0.clone(), kv_sum = kv0.clone();
  mha.forward(ctx, xq, xkv, mask);
  mha.backward_add(ctx, dy, q_sum, kv_sum);
  for (int64_t i = 0; i < q_sum.numel(); ++i)
    EXPECT_NEAR(q_sum.item(i), q0.item(i) + dq.item(i), 1e-12) << "dx_q " << i;
  for (int64_t i = 0; i < kv_sum.numel(); ++i)
    EXPECT_NEAR(kv_sum.item(i), kv0.item(i) + dkv.item(i), 1e-12) << "dx_kv " << i;
}

TEST_F(ModulesTest, CrossAttention) {
  MultiHeadAttention mha(be, "attn", 6, 2, f64);
  auto params = param_vars(mha, rng);
  GradVar xq{"x_q", random_tensor({2, 3, 6}, rng), {}};
  GradVar xkv{"x_kv", random_tensor({2, 7, 6}, rng), {}};
  AttnMask mask{{7, 4}, false};
  auto fwd = [&] { return mha.forward(ctx, xq.value, xkv.value, mask); };
  auto bwd = [&](const Tensor& dy) {
    zero_grads(mha);
    fwd();
    std::tie(xq.grad, xkv.grad) = mha.backward(ctx, dy);
  };
  check_gradients(fwd, bwd, ptrs(params, {&xq, &xkv}));
}

TEST_F(ModulesTest, EncoderLayer) {
  for (NormPlacement norm : {NormPlacement::post, NormPlacement::pre}) {
    ModelConfig cfg = small_config(norm, Activation::gelu, true, 0.2);
    EncoderLayer layer(be, "enc", cfg, f64);
    auto params = param_vars(layer, rng);
    GradVar x{"x", random_tensor({2, 5, 8}, rng), {}};
    AttnMask mask{{5, 3}, false};
    ctx.training = true;  // dropout on: the same mask every forward of step 1
    auto fwd = [&] {
      ctx.begin_forward(1);
      return layer.forward(ctx, x.value, mask);
    };
    auto bwd = [&](const Tensor& dy) {
      zero_grads(layer);
      fwd();
      x.grad = layer.backward(ctx, dy);
    };
    check_gradients(fwd, bwd, ptrs(params, {&x}));
  }
}

TEST_F(ModulesTest, DecoderLayer) {
  for (NormPlacement norm : {NormPlacement::post, NormPlacement::pre}) {
    ModelConfig cfg = small_config(norm, Activation::relu, true, 0.2);
    DecoderLayer layer(be, "dec", cfg, f64);
    auto params = param_vars(layer, rng);
    GradVar x{"x", random_tensor({2, 4, 8}, rng), {}};
    GradVar memory{"memory", random_tensor({2, 6, 8}, rng), {}};
    AttnMask self_mask{{4, 2}, true}, cross_mask{{6, 3}, false};
    ctx.training = true;
    auto fwd = [&] {
      ctx.begin_forward(1);
      return layer.forward(ctx, x.value, memory.value, self_mask, cross_mask);
    };
    auto bwd = [&](const Tensor& dy) {
      zero_grads(layer);
      fwd();
      memory.grad = Tensor::zeros(memory.value.shape(), f64);
      x.grad = layer.backward(ctx, dy, memory.grad);
    };
    check_gradients(fwd, bwd, ptrs(params, {&x, &memory}));
  }
}

ModelInput small_input() {
  ModelInput in;
  // Three source sentences (lengths 5, 3, 2) and targets (decoder inputs of lengths 4, 2, 3).
  const int32_t src[3][5] = {{4, 5, 6, 7, 2}, {8, 9, 2, 0, 0}, {10, 2, 0, 0, 0}};
  const int32_t tgt[3][4] = {{1, 7, 6, 5}, {1, 9, 0, 0}, {1, 10, 3, 0}};
  in.src = Tensor::empty({3, 5}, DType::i32);
  in.tgt_in = Tensor::empty({3, 4}, DType::i32);
  for (int b = 0; b < 3; ++b) {
    for (int t = 0; t < 5; ++t) in.src.set_item(b * 5 + t, src[b][t]);
    for (int t = 0; t < 4; ++t) in.tgt_in.set_item(b * 4 + t, tgt[b][t]);
  }
  in.src_len = {5, 3, 2};
  in.tgt_len = {4, 2, 3};
  return in;
}

struct ModelCase {
  const char* name;
  NormPlacement norm;
  Activation act;
  bool share;
};

TEST_F(ModulesTest, TransformerLogitsAndLoss) {
  const ModelCase cases[] = {{"post_relu_shared", NormPlacement::post, Activation::relu, true},
                             {"pre_gelu_unshared", NormPlacement::pre, Activation::gelu, false}};
  for (const ModelCase& c : cases) {
    SCOPED_TRACE(c.name);
    Transformer model(be, small_config(c.norm, c.act, c.share, 0.1), f64);
    auto params = param_vars(model, rng);
    ModelInput in = small_input();
    Tensor labels = Tensor::empty({12}, DType::i32);
    const int32_t lab[12] = {7, 6, 5, 2, 9, 2, 0, 0, 10, 3, 2, 0};
    for (int i = 0; i < 12; ++i) labels.set_item(i, lab[i]);
    ctx.training = true;
    // The checked scalar is Σ w ∘ [loss_sum]: logits → label-smoothed xent, end to end.
    auto fwd = [&] {
      ctx.begin_forward(2);
      Tensor logits = model.forward(ctx, in);
      Tensor out = Tensor::empty({1}, f64);
      out.set_item(0, be.softmax_xent(logits, labels, 0, 0.1, 1.0, nullptr).loss_sum);
      return out;
    };
    auto bwd = [&](const Tensor& w) {
      model.zero_grad();
      ctx.begin_forward(2);
      Tensor logits = model.forward(ctx, in);
      Tensor dlogits = Tensor::empty(logits.shape(), f64);
      be.softmax_xent(logits, labels, 0, 0.1, w.item(0), &dlogits);
      model.backward(ctx, dlogits);
    };
    check_gradients(fwd, bwd, ptrs(params, {}), 11, 12);
  }
}

TEST_F(ModulesTest, ParameterNames) {
  Transformer shared(be, small_config(NormPlacement::post, Activation::relu, true, 0), f64);
  std::vector<std::string> names;
  shared.for_each_param([&](Param& p) { names.push_back(p.name); });
  EXPECT_EQ(names.front(), "embed.weight");
  EXPECT_EQ(names[1], "encoder.layers.0.self_attn.q_proj.weight");
  EXPECT_NE(std::find(names.begin(), names.end(), "decoder.layers.1.cross_attn_norm.bias"),
            names.end());
  EXPECT_EQ(names.back(), "decoder.layers.1.ffn_norm.bias");
  Transformer pre(be, small_config(NormPlacement::pre, Activation::relu, false, 0), f64);
  names.clear();
  pre.for_each_param([&](Param& p) { names.push_back(p.name); });
  EXPECT_EQ(names[0], "src_embed.weight");
  EXPECT_EQ(names[1], "tgt_embed.weight");
  EXPECT_EQ(names.back(), "out_proj.weight");
  EXPECT_NE(std::find(names.begin(), names.end(), "encoder.norm.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "decoder.norm.bias"), names.end());
}

}  // namespace
