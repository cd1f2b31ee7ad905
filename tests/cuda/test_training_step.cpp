// Whole training steps on the GPU against the CPU backend: one step (forward, backward, Adam)
// in fp32 (TF32 GEMMs) gives the CPU's weights within TF32 tolerance, and 50 steps of toy
// training in bf16 track the fp32 loss curve. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_available.h"
#include "config/config.h"
#include "data/batcher.h"
#include "gpu_test_util.h"
#include "train/trainer.h"

using namespace mh;

namespace {

Config toy(Precision precision) {
  Config c = load_config_text(R"(
model: {vocab_size: 32, d_model: 64, heads: 4, d_ff: 256, encoder_layers: 2, decoder_layers: 2,
        dropout: 0.0, max_len: 64}
data: {task: reverse, batch_size: 32, toy_min_len: 4, toy_max_len: 10}
train: {seed: 5, warmup: 50, lr_scale: 1.0, label_smoothing: 0.1}
)",
                              "test");
  c.train.precision = precision;
  return c;
}

// Every parameter of `a` and `b` as one vector of host floats (device values widened to f32).
std::vector<float> weights(Trainer& t) {
  std::vector<float> out;
  Backend& be = t.backend();
  t.model().for_each_param([&](Param& p) {
    Tensor f32 = p.value;
    if (p.value.dtype() != DType::f32) {
      f32 = be.empty(p.value.shape(), DType::f32);
      be.cast(p.value, f32);
    }
    Tensor host = Tensor::empty(f32.shape(), DType::f32);
    be.copy(f32, host);
    out.insert(out.end(), host.data<float>(), host.data<float>() + host.numel());
  });
  return out;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    ref += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff / ref);
}

TEST(GpuTraining, OneStepEqualsTheCpuStep) {
  MH_REQUIRE_GPU();
  const Config cfg = toy(Precision::fp32);
  Dataset data = load_dataset(cfg.model, cfg.data);
  const Batch batch = data.train.next_batch();
  CpuBackend cpu;
  std::unique_ptr<Backend> gpu = make_cuda_backend(0);
  Trainer on_cpu(cfg, cpu), on_gpu(cfg, *gpu);
  on_cpu.init();
  on_gpu.init();
  ASSERT_LT(relative_error(weights(on_gpu), weights(on_cpu)), 1e-6) << "same init";
  StepResult rc = on_cpu.train_step([&] { return batch; });
  StepResult rg = on_gpu.train_step([&] { return batch; });
  EXPECT_NEAR(rg.loss, rc.loss, 3e-4 * rc.loss);
  EXPECT_NEAR(rg.grad_norm, rc.grad_norm, 3e-3 * rc.grad_norm);
  EXPECT_LT(relative_error(weights(on_gpu), weights(on_cpu)), 3e-4);
}

TEST(GpuTraining, Bf16TracksFp32For50Steps) {
  MH_REQUIRE_GPU();
  std::vector<double> losses[2];
  const Precision precisions[2] = {Precision::fp32, Precision::bf16};
  for (int k = 0; k < 2; ++k) {
    const Config cfg = toy(precisions[k]);
    Dataset data = load_dataset(cfg.model, cfg.data);
    std::unique_ptr<Backend> gpu = make_cuda_backend(0);
    Trainer t(cfg, *gpu);
    t.init();
    for (int s = 0; s < 50; ++s)
      losses[k].push_back(t.train_step([&] { return data.train.next_batch(); }).loss);
  }
  EXPECT_LT(losses[0].back(), 0.9 * losses[0].front()) << "fp32 training did not learn";
  for (int s = 0; s < 50; ++s)
    EXPECT_NEAR(losses[1][s], losses[0][s], 0.05 * losses[0][s]) << "step " << s + 1;
}

}  // namespace
