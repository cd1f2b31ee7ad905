// Central finite differences in float64 against a hand-written backward.
// The scalar checked is L = Σ w ∘ forward() with a fixed random w, so backward gets dy = w.
// Step h = 1e-5: truncation error O(h²) ~ 1e-10 and round-off ~ 1e-16·|L|/h ~ 1e-10 for the
// small problems here. Pass: |analytic - numeric| <= tol · max(|analytic|, |numeric|) + 1e-8.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace mh::test {

inline Tensor random_tensor(const Shape& shape, std::mt19937_64& rng, double scale = 1.0,
                            DType dtype = DType::f64) {
  std::normal_distribution<double> n(0.0, scale);
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) t.set_item(i, n(rng));
  return t;
}

// Something the gradient is taken with respect to: its value (perturbed in place) and where the
// analytic gradient ends up after `backward` ran.
struct GradVar {
  std::string name;
  Tensor value;
  Tensor grad;
};

inline double weighted_sum(const Tensor& y, const Tensor& w) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += y.item(i) * w.item(i);
  return s;
}

// forward() computes the output; backward(dy) must leave each var's analytic gradient in its
// .grad (zeroing/accumulating is the caller's business: grads are read right after one call).
inline void check_gradients(const std::function<Tensor()>& forward,
                            const std::function<void(const Tensor&)>& backward,
                            const std::vector<GradVar*>& vars, uint64_t seed = 7,
                            int samples_per_var = 24, double tol = 1e-6) {
  std::mt19937_64 rng(seed);
  Tensor y = forward();
  Tensor w = random_tensor(y.shape(), rng);
  backward(w);
  std::vector<Tensor> analytic;
  for (GradVar* v : vars) {
    ASSERT_TRUE(v->grad.defined()) << v->name << ": no gradient";
    ASSERT_EQ(v->grad.numel(), v->value.numel()) << v->name;
    analytic.push_back(v->grad.clone());
  }
  const double h = 1e-5;
  for (size_t k = 0; k < vars.size(); ++k) {
    Tensor& x = vars[k]->value;
    std::vector<int64_t> idx(static_cast<size_t>(x.numel()));
    for (int64_t i = 0; i < x.numel(); ++i) idx[static_cast<size_t>(i)] = i;
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(std::min<size_t>(idx.size(), static_cast<size_t>(samples_per_var)));
    double worst = 0;
    for (int64_t i : idx) {
      const double x0 = x.item(i);
      x.set_item(i, x0 + h);
      const double lp = weighted_sum(forward(), w);
      x.set_item(i, x0 - h);
      const double lm = weighted_sum(forward(), w);
      x.set_item(i, x0);
      const double numeric = (lp - lm) / (2 * h);
      const double a = analytic[k].item(i);
      const double err =
          std::abs(a - numeric) / (std::max(std::abs(a), std::abs(numeric)) + 1e-8 / tol);
      worst = std::max(worst, err);
      EXPECT_LE(err, tol) << vars[k]->name << "[" << i << "]: analytic " << a << " numeric "
                          << numeric;
    }
    ::testing::Test::RecordProperty(vars[k]->name, std::to_string(worst));
  }
}

}  // namespace mh::test
