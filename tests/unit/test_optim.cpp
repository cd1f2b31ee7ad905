// The learning-rate schedule's values, and Adam's clipping, skipping and master weights.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "backend/cpu/cpu_backend.h"
#include "optim/adam.h"
#include "optim/schedule.h"

using namespace mh;

TEST(NoamSchedule, PaperValues) {
  // d_model 512, warmup 4000 (the paper's base model).
  const double d = 512, w = 4000;
  EXPECT_NEAR(noam_lr(1, 512, 4000, 1.0), std::pow(d, -0.5) * std::pow(w, -1.5), 1e-15);
  EXPECT_NEAR(noam_lr(1, 512, 4000, 1.0), 1.7469e-7, 1e-10);
  EXPECT_NEAR(noam_lr(4000, 512, 4000, 1.0), 6.9877e-4, 1e-8);   // the peak, at step = warmup
  EXPECT_NEAR(noam_lr(16000, 512, 4000, 1.0), 3.4939e-4, 1e-8);  // then ∝ step^-0.5
  EXPECT_NEAR(noam_lr(2000, 512, 4000, 1.0), 0.5 * noam_lr(4000, 512, 4000, 1.0), 1e-15);
  EXPECT_NEAR(noam_lr(100, 256, 400, 2.0), 2.0 * noam_lr(100, 256, 400, 1.0), 1e-15);
  EXPECT_GT(noam_lr(4000, 512, 4000, 1.0), noam_lr(3999, 512, 4000, 1.0));
  EXPECT_GT(noam_lr(4000, 512, 4000, 1.0), noam_lr(4001, 512, 4000, 1.0));
}

namespace {
struct AdamFixture : ::testing::Test {
  CpuBackend be;
  TrainConfig cfg;
  Param p;
  void SetUp() override {
    p = make_param(be, "w", {2}, DType::f32);
    p.value.set_item(0, 1.0);
    p.value.set_item(1, -1.0);
  }
};
}  // namespace

TEST_F(AdamFixture, ClipsTheGlobalNorm) {
  // Adam is invariant to the gradient's scale except through ε, so a large ε makes clipping
  // visible in the first update: lr · ĝ / (|ĝ| + ε) with ĝ the clipped gradient.
  cfg.clip_norm = 1.0;
  cfg.adam_eps = 1.0;
  Adam adam(be, cfg);
  adam.add_params({&p});
  p.grad.set_item(0, 30.0);  // norm 50 with the next one; clipped to (0.6, 0.8)
  p.grad.set_item(1, 40.0);
  EXPECT_NEAR(adam.step(0.1, 1.0), 50.0, 1e-4);  // the norm before clipping
  EXPECT_NEAR(p.value.item(0), 1.0 - 0.1 * 0.6 / 1.6, 1e-6);
  EXPECT_NEAR(p.value.item(1), -1.0 - 0.1 * 0.8 / 1.8, 1e-6);
  EXPECT_EQ(adam.steps_done(), 1);
}

TEST_F(AdamFixture, SkipsNonFiniteGradients) {
  Adam adam(be, cfg);
  adam.add_params({&p});
  p.grad.set_item(0, std::numeric_limits<double>::infinity());
  p.grad.set_item(1, 1.0);
  EXPECT_FALSE(std::isfinite(adam.step(0.1, 1.0)));
  EXPECT_EQ(p.value.item(0), 1.0);  // untouched
  EXPECT_EQ(p.value.item(1), -1.0);
  EXPECT_EQ(adam.steps_done(), 0);  // not counted: bias correction stays right
  p.grad.set_item(0, 1.0);
  EXPECT_TRUE(std::isfinite(adam.step(0.1, 1.0)));
  EXPECT_EQ(adam.steps_done(), 1);
  EXPECT_NEAR(p.value.item(0), 0.9, 1e-6);
}

TEST_F(AdamFixture, GradScaleDividesOut) {
  // The trainer passes gradients of the summed loss and grad_scale = 1/tokens: the norm it
  // reports is the mean loss's.
  Adam adam(be, cfg);
  adam.add_params({&p});
  p.grad.set_item(0, 300.0);
  p.grad.set_item(1, 400.0);
  EXPECT_NEAR(adam.grad_norm(1.0 / 100), 5.0, 1e-9);
}
