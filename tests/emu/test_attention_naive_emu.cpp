// The masked softmax kernels of the naive attention (attention_naive_kernels.cuh) run on the CPU
// through the SIMT emulation (simt_emu.h), with the launchers' grid (sm_blocks), against
// CpuBackend's attention in F32 on the same random inputs (rounded to BF16/F16 first for those
// paths). The CPU attention is made to compute a given score matrix S: with head_dim = Lk and
// K = V = identity per head, Q Kᵀ = Q carries S, dO Vᵀ = dO carries dP, and dQ = dS K is dS.
// Masking must be exact: the kernels see NaN in the masked entries of their inputs (the CPU
// reference finite values), and every masked output must be exactly 0. Error measure:
// max |emu − cpu| / max |cpu| over the tensor, at most 1e-5 (F32), 1e-2 (BF16), 2e-3 (F16).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/attention_naive_kernels.cuh"
#include "kernel_emu_util.h"

namespace mh::cuda {
namespace {

// Conversions to and from the kernel's dtype (kernel_emu_util.h).
template <typename T>
T to(float x) {
  return emu_test::from_f<T>(x);
}
template <typename T>
float from(T x) {
  return emu_test::to_f(x);
}
template <typename T>
double tol() {
  return emu_test::tolerance(emu_test::dtype_t<T>());
}
template <typename T>
const char* name() {
  if constexpr (std::is_same_v<T, __half>)
    return "f16";
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return "bf16";
  else
    return "f32";
}

// Random values rounded to T (stored as float).
template <typename T>
std::vector<float> randn(std::mt19937_64& rng, size_t n, float sd) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> x(n);
  for (float& v : x) v = from(to<T>(nd(rng)));
  return x;
}

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    num = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(num, d);
    den = std::max(den, std::fabs(static_cast<double>(want[i])));
  }
  return den > 0 ? num / den : num;
}

struct SmCase {
  int64_t b, h, lq, lk;
  std::vector<int32_t> key_len;
  bool causal;
};

std::vector<SmCase> sm_cases() {
  return {
      {3, 2, 33, 37, {37, 20, 0}, false},  // Lk not a warp multiple; a sequence with no keys
      {3, 2, 33, 37, {40, 20, 0}, true},   // causal, Lq < Lk; key_len past Lk is clamped
      {2, 1, 70, 70, {70, 45}, true},      // causal square, rows longer than two warps
      {1, 1, 5, 300, {300}, false},        // one block with idle warps
  };
}

// Keys row i of sequence b sees: [0, n).
int64_t visible(const SmCase& c, int64_t b, int64_t i) {
  const int64_t n = std::min<int64_t>(std::max(c.key_len[b], 0), c.lk);
  return c.causal ? std::min(n, i + 1) : n;
}

Tensor host_f32(const std::vector<float>& x, const Shape& shape) {
  Tensor t = Tensor::empty(shape);
  std::copy(x.begin(), x.end(), t.data<float>());
  return t;
}

// The CPU attention on scores S [B, H, Lq, Lk] (before the scale): its probabilities, and with
// dp given, dS for P = `probs` (the rounded probabilities the kernel sees).
struct CpuAttn {
  const SmCase& c;
  double scale;
  int64_t d() const { return c.h * c.lk; }
  AttnArgs args() const {
    AttnArgs a;
    a.batch = c.b;
    a.heads = c.h;
    a.len_q = c.lq;
    a.len_k = c.lk;
    a.head_dim = c.lk;
    a.key_len = c.key_len.data();
    a.causal = c.causal;
    a.scale = scale;
    return a;
  }
  // [B, H, Lq, Lk] ↔ the per-head columns of [B, Lq, H·Lk].
  std::vector<float> to_rows(const std::vector<float>& s) const {
    std::vector<float> q(static_cast<size_t>(c.b * c.lq * d()));
    for (int64_t b = 0; b < c.b; ++b)
      for (int64_t h = 0; h < c.h; ++h)
        for (int64_t i = 0; i < c.lq; ++i)
          for (int64_t j = 0; j < c.lk; ++j)
            q[(b * c.lq + i) * d() + h * c.lk + j] = s[((b * c.h + h) * c.lq + i) * c.lk + j];
    return q;
  }
  std::vector<float> from_rows(const float* q) const {
    std::vector<float> s(static_cast<size_t>(c.b * c.h * c.lq * c.lk));
    for (int64_t b = 0; b < c.b; ++b)
      for (int64_t h = 0; h < c.h; ++h)
        for (int64_t i = 0; i < c.lq; ++i)
          for (int64_t j = 0; j < c.lk; ++j)
            s[((b * c.h + h) * c.lq + i) * c.lk + j] = q[(b * c.lq + i) * d() + h * c.lk + j];
    return s;
  }
  Tensor identity() const {
    Tensor k = Tensor::zeros({c.b, c.lk, d()});
    for (int64_t b = 0; b < c.b; ++b)
      for (int64_t h = 0; h < c.h; ++h)
        for (int64_t j = 0; j < c.lk; ++j) k.data<float>()[(b * c.lk + j) * d() + h * c.lk + j] = 1;
    return k;
  }
  std::vector<float> probs(const std::vector<float>& s) const {
    CpuBackend cpu;
    Tensor out = Tensor::empty({c.b, c.lq, d()});
    AttnSaved saved;
    const Tensor id = identity();
    cpu.attention_fwd(args(), host_f32(to_rows(s), {c.b, c.lq, d()}), id, id, out, saved);
    const float* p = saved.probs.data<float>();
    return std::vector<float>(p, p + saved.probs.numel());
  }
  std::vector<float> dscores(const std::vector<float>& p, const std::vector<float>& dp) const {
    CpuBackend cpu;
    AttnSaved saved;
    saved.probs = host_f32(p, {c.b, c.h, c.lq, c.lk});
    const Tensor id = identity();
    const Tensor q = Tensor::zeros({c.b, c.lq, d()});
    Tensor dq = Tensor::empty({c.b, c.lq, d()}), dk = Tensor::empty({c.b, c.lk, d()}),
           dv = Tensor::empty({c.b, c.lk, d()});
    cpu.attention_bwd(args(), host_f32(to_rows(dp), {c.b, c.lq, d()}), q, id, id, saved, dq, dk,
                      dv);
    return from_rows(dq.data<float>());
  }
};

template <typename T>
void run_fwd(const SmCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "B=" << c.b << " H=" << c.h << " Lq=" << c.lq << " Lk="
                                    << c.lk << " causal=" << c.causal << " " << name<T>());
  std::mt19937_64 rng(seed);
  const double scale = 0.35;
  const size_t n = static_cast<size_t>(c.b * c.h * c.lq * c.lk);
  const auto s = randn<T>(rng, n, 4.f);
  const auto ref = CpuAttn{c, scale}.probs(s);
  // The kernel's scores: NaN where masked, which must not leak into any output.
  const int64_t rows = c.b * c.h * c.lq;
  std::vector<T> x(n);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < c.lk; ++j) {
      const size_t e = static_cast<size_t>(r * c.lk + j);
      x[e] = j < visible(c, r / (c.h * c.lq), r % c.lq) ? to<T>(s[e]) : to<T>(std::nanf(""));
    }
  emu::launch({sm_blocks(rows)}, {kSmThreads}, [&] {
    masked_softmax_fwd_kernel<T>(x.data(), c.key_len.data(), rows, c.h, c.lq,
                                 static_cast<int>(c.lk), c.causal, static_cast<float>(scale));
  });
  std::vector<float> got(n);
  for (size_t e = 0; e < n; ++e) got[e] = from(x[e]);
  EXPECT_LE(rel_err(got, ref), tol<T>());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = visible(c, r / (c.h * c.lq), r % c.lq); j < c.lk; ++j)
      ASSERT_EQ(got[static_cast<size_t>(r * c.lk + j)], 0.f) << "masked entry " << r << ", " << j;
}

template <typename T>
void run_bwd(const SmCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "B=" << c.b << " H=" << c.h << " Lq=" << c.lq << " Lk="
                                    << c.lk << " causal=" << c.causal << " " << name<T>());
  std::mt19937_64 rng(seed);
  const double scale = 0.35;
  const size_t n = static_cast<size_t>(c.b * c.h * c.lq * c.lk);
  const CpuAttn cpu{c, scale};
  auto p = cpu.probs(randn<T>(rng, n, 3.f));
  for (float& v : p) v = from(to<T>(v));
  const auto dp = randn<T>(rng, n, 1.f);
  const auto ref = cpu.dscores(p, dp);
  // The kernel's dP: NaN where P = 0 (masked), which must give exactly 0 and not leak in.
  std::vector<T> pt(n), g(n);
  for (size_t e = 0; e < n; ++e) {
    pt[e] = to<T>(p[e]);
    g[e] = to<T>(p[e] != 0.f ? dp[e] : std::nanf(""));
  }
  const int64_t rows = c.b * c.h * c.lq;
  emu::launch({sm_blocks(rows)}, {kSmThreads}, [&] {
    masked_softmax_bwd_kernel<T>(pt.data(), g.data(), rows, static_cast<int>(c.lk),
                                 static_cast<float>(scale));
  });
  std::vector<float> got(n);
  for (size_t e = 0; e < n; ++e) got[e] = from(g[e]);
  EXPECT_LE(rel_err(got, ref), tol<T>());
  for (size_t e = 0; e < n; ++e)
    if (p[e] == 0.f) {
      ASSERT_EQ(got[e], 0.f) << "masked entry " << e;
    }
}

TEST(AttentionNaiveEmu, MaskedSoftmaxFwd) {
  uint64_t seed = 51;
  for (const auto& c : sm_cases()) {
    run_fwd<float>(c, seed++);
    run_fwd<__nv_bfloat16>(c, seed++);
    run_fwd<__half>(c, seed++);
  }
}

TEST(AttentionNaiveEmu, MaskedSoftmaxBwd) {
  uint64_t seed = 71;
  for (const auto& c : sm_cases()) {
    run_bwd<float>(c, seed++);
    run_bwd<__nv_bfloat16>(c, seed++);
    run_bwd<__half>(c, seed++);
  }
}

}  // namespace
}  // namespace mh::cuda
