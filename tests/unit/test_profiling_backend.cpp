// ProfilingBackend (bench train --profile): it must change nothing the model computes, and its
// table must count every op of a step. On the CPU backend; the CUDA clock differs only in where
// the marks come from.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/profiling_backend.h"
#include "config/config.h"
#include "data/batch.h"
#include "model/module.h"
#include "train/trainer.h"

namespace mh {
namespace {

Config toy_config() {
  return load_config(std::string(MH_SOURCE_DIR) + "/configs/toy.yaml",
                     {"model.dropout=0.1", "train.tokens_per_step=0", "data.batch_size=6"});
}

Batch random_batch(const Config& cfg, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(4, static_cast<int32_t>(cfg.model.vocab_size - 1));
  std::uniform_int_distribution<int> len(2, 7);
  std::vector<Example> ex(6);
  for (Example& e : ex) {
    for (int i = 0, n = len(rng); i < n; ++i) e.src.push_back(tok(rng));
    for (int i = 0, n = len(rng); i <= n; ++i) e.tgt.push_back(tok(rng));
  }
  return make_batch(ex, static_cast<int32_t>(cfg.model.pad_id));
}

// Every parameter of a model, flattened (bit patterns compared).
std::vector<float> weights(Trainer& t) {
  std::vector<float> out;
  t.model().for_each_param([&](Param& p) {
    const float* d = p.value.data<float>();
    out.insert(out.end(), d, d + p.value.numel());
  });
  return out;
}

TEST(ProfilingBackend, TrainingThroughItIsBitIdentical) {
  const Config cfg = toy_config();
  CpuBackend plain_be, inner_be;
  ProfilingBackend prof(inner_be, make_host_op_clock());
  Trainer plain(cfg, plain_be), profiled(cfg, prof);
  plain.init();
  profiled.init();
  for (int step = 0; step < 3; ++step) {
    prof.set_enabled(step != 1);  // marks on, off, on: neither may change a bit
    const Batch b = random_batch(cfg, 100 + static_cast<uint64_t>(step));
    const StepResult r1 = plain.train_step([&] { return b; });
    const StepResult r2 = profiled.train_step([&] { return b; });
    prof.end_step();
    EXPECT_EQ(r1.loss, r2.loss) << "step " << step;
    EXPECT_EQ(r1.grad_norm, r2.grad_norm) << "step " << step;
  }
  const std::vector<float> a = weights(plain), b = weights(profiled);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  EXPECT_EQ(prof.steps(), 2);  // the step with marks off is not counted
}

TEST(ProfilingBackend, CountsEveryOpOfAStep) {
  const Config cfg = toy_config();
  CpuBackend inner_be;
  ProfilingBackend prof(inner_be, make_host_op_clock());
  Trainer t(cfg, prof);
  t.init();
  EXPECT_TRUE(prof.rows().empty());  // marks are off until enabled
  prof.set_enabled(true);
  const Batch b = random_batch(cfg, 7);
  for (int step = 0; step < 2; ++step) {
    t.train_step([&] { return b; });
    prof.end_step();
  }
  std::map<std::string, int64_t> calls;  // per op name (shapes dropped), over both steps
  double total = 0;
  for (const auto& r : prof.rows()) {
    EXPECT_GE(r.seconds, 0.0) << r.op;
    calls[r.op.substr(0, r.op.find(' '))] += r.calls;
    if (r.op.rfind("attention_fwd causal", 0) == 0) calls["attention_fwd causal"] += r.calls;
    total += r.seconds;
  }
  EXPECT_GT(total, 0.0);
  const int64_t enc = cfg.model.encoder_layers, dec = cfg.model.decoder_layers;
  // Per step: self-attention in every encoder and decoder layer (causal in the decoder's),
  // cross-attention in every decoder layer; one loss; one optimizer step over all parameters.
  EXPECT_EQ(calls["attention_fwd"], 2 * (enc + 2 * dec));
  EXPECT_EQ(calls["attention_bwd"], 2 * (enc + 2 * dec));
  EXPECT_EQ(calls["attention_fwd causal"], 2 * dec);
  EXPECT_EQ(calls["softmax_xent"], 2);
  EXPECT_EQ(calls["adam_step_all"], 2);
  EXPECT_EQ(calls["sum_squares_all"], 2);
  EXPECT_EQ(calls["embed_fwd"], 2 * 2);  // source and target embeddings
  EXPECT_GT(calls["linear_fwd"], 0);
  // Post-LN: every sublayer ends in one residual_layernorm_fwd, which applies the sublayer's
  // dropout itself (the toy model's dropout is active) and whose norm has a layernorm_bwd.
  ASSERT_EQ(cfg.model.norm, NormPlacement::post);
  ASSERT_GT(cfg.model.dropout, 0.0);
  EXPECT_EQ(calls["residual_layernorm_fwd"], 2 * (2 * enc + 3 * dec));
  EXPECT_EQ(calls["layernorm_fwd"] + calls["residual_layernorm_fwd"], calls["layernorm_bwd"]);
  EXPECT_EQ(calls["dropout_fwd"] + calls["residual_layernorm_fwd"], calls["dropout_bwd"]);
  EXPECT_GT(calls["dropout_fwd"], 0);
}

TEST(ProfilingBackend, HostClockTimesEachGap) {
  auto clock = make_host_op_clock();
  for (size_t i = 0; i < 4; ++i) clock->mark(i);
  std::vector<double> s;
  clock->elapsed(4, s);
  ASSERT_EQ(s.size(), 3u);
  for (double x : s) EXPECT_GE(x, 0.0);
  clock->elapsed(0, s);
  EXPECT_TRUE(s.empty());
}

}  // namespace
}  // namespace mh
