// Every CPU backend op's backward against central finite differences in float64.
#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "core/philox.h"
#include "gradcheck.h"

using namespace mh;
using mh::test::check_gradients;
using mh::test::GradVar;
using mh::test::random_tensor;

namespace {

struct OpsTest : ::testing::Test {
  CpuBackend be;
  std::mt19937_64 rng{42};
};

TEST_F(OpsTest, Gemm) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      GradVar a{"a", random_tensor(ta ? Shape{4, 3} : Shape{3, 4}, rng), {}};
      GradVar b{"b", random_tensor(tb ? Shape{5, 4} : Shape{4, 5}, rng), {}};
      auto fwd = [&] {
        Tensor c = Tensor::zeros({3, 5}, DType::f64);
        be.gemm(a.value, ta, b.value, tb, c, 1.0, 0.0);
        return c;
      };
      auto bwd = [&](const Tensor& dc) {
        // C = op(A) op(B):  dop(A) = dC op(B)ᵀ,  dop(B) = op(A)ᵀ dC, transposed back as needed.
        a.grad = Tensor::zeros(a.value.shape(), DType::f64);
        b.grad = Tensor::zeros(b.value.shape(), DType::f64);
        if (!ta)
          be.gemm(dc, false, b.value, !tb, a.grad, 1.0, 0.0);
        else
          be.gemm(b.value, tb, dc, true, a.grad, 1.0, 0.0);
        if (!tb)
          be.gemm(a.value, !ta, dc, false, b.grad, 1.0, 0.0);
        else
          be.gemm(dc, true, a.value, ta, b.grad, 1.0, 0.0);
      };
      check_gradients(fwd, bwd, {&a, &b});
    }
}

TEST_F(OpsTest, BiasAdd) {
  GradVar bias{"bias", random_tensor({5}, rng), {}};
  Tensor x = random_tensor({3, 5}, rng);
  auto fwd = [&] {
    Tensor y = x.clone();
    be.add_bias(y, bias.value);
    return y;
  };
  auto bwd = [&](const Tensor& dy) {
    bias.grad = Tensor::zeros({5}, DType::f64);
    be.bias_grad(dy, bias.grad);
  };
  check_gradients(fwd, bwd, {&bias});
}

TEST_F(OpsTest, LayerNorm) {
  GradVar x{"x", random_tensor({4, 7}, rng, 2.0), {}};
  GradVar w{"weight", random_tensor({7}, rng), {}};
  GradVar b{"bias", random_tensor({7}, rng), {}};
  Tensor mean = Tensor::empty({4}, DType::f64), rstd = Tensor::empty({4}, DType::f64);
  auto fwd = [&] {
    Tensor y = Tensor::empty({4, 7}, DType::f64);
    be.layernorm_fwd(x.value, w.value, b.value, 1e-5, y, mean, rstd);
    return y;
  };
  auto bwd = [&](const Tensor& dy) {
    fwd();
    x.grad = Tensor::empty({4, 7}, DType::f64);
    w.grad = Tensor::zeros({7}, DType::f64);
    b.grad = Tensor::zeros({7}, DType::f64);
    be.layernorm_bwd(dy, x.value, w.value, mean, rstd, x.grad, w.grad, b.grad);
  };
  check_gradients(fwd, bwd, {&x, &w, &b});
}

TEST_F(OpsTest, Activations) {
  for (ActKind kind : {ActKind::relu, ActKind::gelu}) {
    GradVar x{"x", random_tensor({6, 5}, rng, 2.0), {}};
    auto fwd = [&] {
      Tensor y = Tensor::empty(x.value.shape(), DType::f64);
      be.activation_fwd(kind, x.value, y);
      return y;
    };
    auto bwd = [&](const Tensor& dy) {
      x.grad = Tensor::empty(x.value.shape(), DType::f64);
      be.activation_bwd(kind, dy, x.value, x.grad);
    };
    check_gradients(fwd, bwd, {&x});
  }
}

TEST_F(OpsTest, GeluMatchesErfForm) {
  Tensor x = Tensor::empty({3}, DType::f64), y = Tensor::empty({3}, DType::f64);
  x.set_item(0, -1.5);
  x.set_item(1, 0.0);
  x.set_item(2, 2.0);
  be.activation_fwd(ActKind::gelu, x, y);
  EXPECT_NEAR(y.item(0), -1.5 * 0.5 * (1 + std::erf(-1.5 / std::sqrt(2.0))), 1e-15);
  EXPECT_EQ(y.item(1), 0.0);
  EXPECT_NEAR(y.item(2), 1.9544997361036416, 1e-14);  // torch.nn.functional.gelu(2.0)
}

TEST_F(OpsTest, Dropout) {
  GradVar x{"x", random_tensor({8, 9}, rng), {}};
  auto fwd = [&] {
    Tensor y = Tensor::empty(x.value.shape(), DType::f64);
    be.dropout_fwd(x.value, 0.3, 99, 5, y);
    return y;
  };
  auto bwd = [&](const Tensor& dy) {
    x.grad = Tensor::empty(x.value.shape(), DType::f64);
    be.dropout_bwd(dy, 0.3, 99, 5, x.grad);
  };
  check_gradients(fwd, bwd, {&x});
}

TEST_F(OpsTest, DropoutStatistics) {
  Tensor x = Tensor::empty({1000, 100}, DType::f32), y = Tensor::empty({1000, 100}, DType::f32);
  for (int64_t i = 0; i < x.numel(); ++i) x.set_item(i, 1.0);
  be.dropout_fwd(x, 0.1, 1, 0, y);
  int64_t kept = 0;
  double sum = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    kept += y.item(i) != 0;
    sum += y.item(i);
  }
  // 100k Bernoulli(0.9) draws: std of the kept fraction is ~0.001, so 0.5% is > 5 sigma.
  EXPECT_NEAR(static_cast<double>(kept) / y.numel(), 0.9, 0.005);
  EXPECT_NEAR(sum / y.numel(), 1.0, 0.006);  // inverted dropout keeps the expectation
  Tensor y2 = Tensor::empty({1000, 100}, DType::f32);
  be.dropout_fwd(x, 0.1, 1, 1, y2);  // another offset: another mask
  int64_t same = 0;
  for (int64_t i = 0; i < y.numel(); ++i) same += (y.item(i) != 0) == (y2.item(i) != 0);
  EXPECT_LT(same, y.numel() * 0.85);
}

// The CPU mask is the Philox stream of core/philox.h, element by element: what GPU kernels draw.
TEST_F(OpsTest, DropoutMaskIsThePhiloxStream) {
  const int64_t n = 1001;  // not a multiple of the 64-element blocks
  Tensor x = Tensor::empty({n}, DType::f32), y = Tensor::empty({n}, DType::f32);
  for (int64_t i = 0; i < n; ++i) x.set_item(i, 1.0 + i);
  const uint64_t seed = 0x1234567890abcdefULL, offset = (7ULL << 24) | 3;
  be.dropout_fwd(x, 0.3, seed, offset, y);
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = philox_uniform_at(seed, offset, static_cast<uint64_t>(i)) >= 0.3f;
    ASSERT_EQ(y.item(i) != 0, keep) << "element " << i;
    if (keep) {
      ASSERT_FLOAT_EQ(y.item(i), (1.0 + i) / 0.7);
    }
  }
}

TEST_F(OpsTest, Embedding) {
  GradVar table{"table", random_tensor({7, 4}, rng), {}};
  Tensor pe = random_tensor({6, 4}, rng);
  Tensor ids = Tensor::empty({2, 3}, DType::i32);
  const int32_t id_values[] = {1, 3, 1, 0, 6, 3};  // repeats: gradients must accumulate
  for (int i = 0; i < 6; ++i) ids.set_item(i, id_values[i]);
  auto fwd = [&] {
    Tensor y = Tensor::empty({2, 3, 4}, DType::f64);
    be.embed_fwd(ids, table.value, pe, 2.0, y);
    return y;
  };
  auto bwd = [&](const Tensor& dy) {
    table.grad = Tensor::zeros({7, 4}, DType::f64);
    be.embed_bwd(ids, dy, 2.0, table.grad);
  };
  check_gradients(fwd, bwd, {&table});
}

struct AttnCase {
  const char* name;
  int64_t b, h, lq, lk, dk;
  std::vector<int32_t> key_len;
  bool causal;
  double dropout = 0;  // attention dropout (a fixed mask: seed and offset below)
};

TEST_F(OpsTest, Attention) {
  const AttnCase cases[] = {
      {"self_padded", 3, 2, 5, 5, 3, {5, 3, 1}, false},
      {"causal_padded", 3, 2, 6, 6, 2, {6, 4, 2}, true},
      {"cross", 2, 3, 4, 7, 2, {7, 5}, false},
      {"causal_dropout", 2, 2, 6, 6, 2, {6, 3}, true, 0.3},
      {"cross_dropout", 2, 2, 4, 5, 3, {5, 2}, false, 0.5},
  };
  for (const AttnCase& c : cases) {
    SCOPED_TRACE(c.name);
    const int64_t d = c.h * c.dk;
    GradVar q{"q", random_tensor({c.b, c.lq, d}, rng), {}};
    GradVar k{"k", random_tensor({c.b, c.lk, d}, rng), {}};
    GradVar v{"v", random_tensor({c.b, c.lk, d}, rng), {}};
    AttnArgs args{
        c.b, c.h, c.lq, c.lk, c.dk, c.key_len.data(), c.causal, 1 / std::sqrt(c.dk * 1.0)};
    args.dropout = c.dropout;
    args.seed = 99;
    args.offset = 7;
    AttnSaved saved;
    auto fwd = [&] {
      Tensor out = Tensor::empty(q.value.shape(), DType::f64);
      be.attention_fwd(args, q.value, k.value, v.value, out, saved);
      return out;
    };
    auto bwd = [&](const Tensor& dout) {
      fwd();
      q.grad = Tensor::empty(q.value.shape(), DType::f64);
      k.grad = Tensor::empty(k.value.shape(), DType::f64);
      v.grad = Tensor::empty(v.value.shape(), DType::f64);
      be.attention_bwd(args, dout, q.value, k.value, v.value, saved, q.grad, k.grad, v.grad);
    };
    check_gradients(fwd, bwd, {&q, &k, &v}, 7, 40);
    // Masked keys carry no probability.
    Tensor out = fwd();
    const Tensor& probs = saved.probs;
    for (int64_t b = 0; b < c.b; ++b)
      for (int64_t i = 0; i < c.lq; ++i)
        for (int64_t j = 0; j < c.lk; ++j)
          if (j >= c.key_len[b] || (c.causal && j > i)) {
            EXPECT_EQ(probs.item(((b * c.h) * c.lq + i) * c.lk + j), 0.0);
          }
    if (c.dropout > 0) {
      // The output is dropout(P) V with dropout_fwd's mask over the [B, H, Lq, Lk] tensor.
      Tensor dropped = Tensor::empty(probs.shape(), DType::f64);
      be.dropout_fwd(probs, c.dropout, args.seed, args.offset, dropped);
      int64_t zeros = 0, kept = 0;
      for (int64_t b = 0; b < c.b; ++b)
        for (int64_t h = 0; h < c.h; ++h)
          for (int64_t i = 0; i < c.lq; ++i) {
            for (int64_t e = 0; e < c.dk; ++e) {
              double want = 0;
              for (int64_t j = 0; j < c.lk; ++j)
                want += dropped.item(((b * c.h + h) * c.lq + i) * c.lk + j) *
                        v.value.item((b * c.lk + j) * d + h * c.dk + e);
              EXPECT_NEAR(out.item((b * c.lq + i) * d + h * c.dk + e), want, 1e-12);
            }
            for (int64_t j = 0; j < c.key_len[b] && (!c.causal || j <= i); ++j)
              (dropped.item(((b * c.h + h) * c.lq + i) * c.lk + j) == 0 ? zeros : kept)++;
          }
      EXPECT_GT(zeros, 0);  // the mask really drops some visible probabilities
      EXPECT_GT(kept, 0);
    }
  }
}

TEST_F(OpsTest, SoftmaxXent) {
  for (double eps : {0.0, 0.1}) {
    GradVar logits{"logits", random_tensor({5, 6}, rng, 2.0), {}};
    Tensor labels = Tensor::empty({5}, DType::i32);
    const int32_t lab[] = {3, 0, 5, 1, 0};  // 0 is pad: ignored
    for (int i = 0; i < 5; ++i) labels.set_item(i, lab[i]);
    auto fwd = [&] {
      XentResult r = be.softmax_xent(logits.value, labels, 0, eps, 1.0, nullptr);
      EXPECT_EQ(r.tokens, 3);
      Tensor out = Tensor::empty({2}, DType::f64);
      out.set_item(0, r.loss_sum);
      out.set_item(1, r.nll_sum);
      return out;
    };
    // d(w0 loss + w1 nll)/dx = w0 dloss + w1 dnll, each from the fused gradient.
    auto bwd = [&](const Tensor& w) {
      Tensor g_loss = Tensor::empty({5, 6}, DType::f64), g_nll = Tensor::empty({5, 6}, DType::f64);
      be.softmax_xent(logits.value, labels, 0, eps, w.item(0), &g_loss);
      be.softmax_xent(logits.value, labels, 0, 0.0, w.item(1), &g_nll);
      logits.grad = Tensor::empty({5, 6}, DType::f64);
      be.add(g_loss, g_nll, logits.grad);
    };
    check_gradients(fwd, bwd, {&logits});
  }
}

TEST_F(OpsTest, SoftmaxXentValues) {
  // Uniform logits over V classes: nll = log V whatever the smoothing.
  Tensor logits = Tensor::zeros({2, 4}, DType::f64);
  Tensor labels = Tensor::empty({2}, DType::i32);
  labels.set_item(0, 1);
  labels.set_item(1, 2);
  XentResult r = be.softmax_xent(logits, labels, 0, 0.1, 1.0, nullptr);
  EXPECT_NEAR(r.nll_sum, 2 * std::log(4.0), 1e-12);
  EXPECT_NEAR(r.loss_sum, 2 * std::log(4.0), 1e-12);
  // logits (0, 1, 2), label 2, ε = 0.1 (checked against torch.nn.functional.cross_entropy).
  Tensor l3 = Tensor::empty({1, 3}, DType::f64);
  for (int i = 0; i < 3; ++i) l3.set_item(i, i);
  Tensor y3 = Tensor::empty({1}, DType::i32);
  y3.set_item(0, 2);
  r = be.softmax_xent(l3, y3, -1, 0.1, 1.0, nullptr);
  const double lse = std::log(1 + std::exp(1.0) + std::exp(2.0));
  EXPECT_NEAR(r.nll_sum, lse - 2, 1e-12);
  EXPECT_NEAR(r.loss_sum, 0.9 * (lse - 2) + 0.1 * (lse - 1.0), 1e-12);
  EXPECT_NEAR(r.loss_sum, 0.5076059644443804, 1e-12);  // torch, float64
}

TEST_F(OpsTest, AdamMatchesFormula) {
  Tensor p = Tensor::empty({1}, DType::f64), g = Tensor::empty({1}, DType::f64);
  Tensor m = Tensor::zeros({1}, DType::f64), v = Tensor::zeros({1}, DType::f64);
  p.set_item(0, 1.0);
  g.set_item(0, 0.5);
  be.adam_step(p, g, m, v, 0.1, 0.9, 0.98, 1e-9, 0.0, 1, 1.0);
  // Step 1 with bias correction: m̂ = g, v̂ = g², update = lr · g/|g| = 0.1.
  EXPECT_NEAR(p.item(0), 0.9, 1e-8);
  be.adam_step(p, g, m, v, 0.1, 0.9, 0.98, 1e-9, 0.0, 2, 1.0);
  EXPECT_NEAR(p.item(0), 0.8, 1e-8);  // constant gradient: m̂/√v̂ stays 1
}

}  // namespace
