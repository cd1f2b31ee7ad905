// The CUDA backend's fused Linear ops (cuBLASLt epilogues: BIAS, RELU_BIAS, BGRADB) against the
// CPU backend, whose linear_fwd / linear_bwd_params are Backend's composed defaults.
//   - inputs are random, never zero (|v| in [0.1, 1)), rounded on the host to what the GPU
//     multiplies (BF16, F16, or TF32 for F32), and the CPU computes in F32 on those numbers
//   - "=" outputs start NaN on the GPU; "+=" outputs (dW, db, F32) start random on both
//   - error = max|gpu − cpu| / max|cpu| per tensor: ≤ 3e-4 for F32 (TF32), 1e-2 for BF16, 2e-3
//     for F16 (its 10-bit mantissa; the GEMMs accumulate in fp32)
//   - the fused result is also compared with the same GPU's composed ops (Backend's defaults
//     called explicitly), within 2× the tolerance: each may be one tolerance off the exact result
//     (the composed ops round to the dtype once more per kernel)
//   - on shapes that are multiples of 16 the epilogue itself must be available
//     (GemmLt::gemm_epilogue returns true); BGRADB is reported (a skip) where it is not
// Sizes include odd ones (37 × 129 → 65) next to aligned ones (64 × 256 → 128).
// Without a GPU every test skips with "no CUDA device: GPU test skipped".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "gpu_test_util.h"

namespace mh {
namespace {

constexpr DType F32 = DType::f32, BF16 = DType::bf16, F16 = DType::f16;

using gpu_test::cpu;
using gpu_test::gpu;

double tolerance(DType t) {
  return t == F32 ? 3e-4 : t == BF16 ? 1e-2 : 2e-3;
}

float round_tf32(float f) {  // 10 explicit mantissa bits, round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0xFFFu + ((u >> 13) & 1u)) & ~0x1FFFu;
  std::memcpy(&f, &u, 4);
  return f;
}
float round_to(DType t, float v) {
  if (t == BF16) return __bfloat162float(__float2bfloat16(v));
  if (t == F16) return __half2float(__float2half(v));
  return round_tf32(v);
}

// A host F32 tensor of random values, rounded to what the GPU computes with in dtype t.
Tensor random_host(std::mt19937& rng, const Shape& shape, DType t) {
  std::uniform_real_distribution<float> mag(0.1f, 1.0f);
  std::bernoulli_distribution sign(0.5);
  Tensor h = Tensor::empty(shape, F32);
  for (int64_t i = 0; i < h.numel(); ++i)
    h.data<float>()[i] = round_to(t, (sign(rng) ? 1.0f : -1.0f) * mag(rng));
  return h;
}

Tensor to_gpu(const Tensor& host, DType t) {
  Tensor d = gpu().empty(host.shape(), t);
  gpu().upload(host, d);
  return d;
}
Tensor nan_gpu(const Shape& shape, DType t) {  // all bits set: NaN in every float dtype
  Tensor d = gpu().empty(shape, t);
  EXPECT_EQ(cudaMemsetAsync(d.raw(), 0xFF, d.nbytes(), gpu().compute_stream()), cudaSuccess);
  return d;
}
Tensor to_host(const Tensor& dev) {  // -> F32 on the host
  Tensor f = gpu().empty(dev.shape(), F32);
  gpu().cast(dev, f);
  Tensor h = Tensor::empty(dev.shape(), F32);
  gpu().copy(f, h);  // synchronizes
  return h;
}

// max|a − ref| / max|ref|; NaN or a size mismatch counts as infinite.
double rel_err(const Tensor& a, const Tensor& ref) {
  if (a.numel() != ref.numel()) return std::numeric_limits<double>::infinity();
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.item(i), r = ref.item(i);
    if (!std::isfinite(x) || !std::isfinite(r)) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(x - r));
    scale = std::max(scale, std::abs(r));
  }
  return scale > 0 ? diff / scale : diff;
}

struct LinearCase {
  DType t;
  std::optional<ActKind> act;
  int64_t n, in, out;
  std::string name() const {
    const char* a = !act ? "none" : *act == ActKind::relu ? "relu" : "gelu";
    return std::string(dtype_name(t)) + "_" + a + "_" + std::to_string(n) + "x" +
           std::to_string(in) + "x" + std::to_string(out);
  }
  bool aligned() const { return n % 16 == 0 && in % 16 == 0 && out % 16 == 0; }
};
std::ostream& operator<<(std::ostream& os, const LinearCase& c) {
  return os << c.name();
}

// Every dtype × shape, with each activation (forward) or none (the parameter gradients).
std::vector<LinearCase> cases(bool activations) {
  std::vector<std::optional<ActKind>> acts = {std::nullopt};
  if (activations) acts.insert(acts.end(), {ActKind::relu, ActKind::gelu});
  std::vector<LinearCase> out;
  for (DType t : {F32, BF16, F16})
    for (std::optional<ActKind> act : acts)
      for (auto [n, in, o] : {std::tuple{37, 129, 65}, std::tuple{64, 256, 128}})
        out.push_back({t, act, n, in, o});
  return out;
}
std::string case_name(const ::testing::TestParamInfo<LinearCase>& info) {
  return info.param.name();
}

class LinearFwd : public ::testing::TestWithParam<LinearCase> {};
class LinearBwd : public ::testing::TestWithParam<LinearCase> {};

// y = act(x Wᵀ + b)
TEST_P(LinearFwd, MatchesCpu) {
  MH_REQUIRE_GPU();
  const LinearCase& c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>{}(c.name())));
  const Tensor x = random_host(rng, {c.n, c.in}, c.t), w = random_host(rng, {c.out, c.in}, c.t),
               b = random_host(rng, {c.out}, c.t);
  Tensor ref = Tensor::empty({c.n, c.out}, F32);
  cpu().linear_fwd(x, w, b, c.act, ref);

  const Tensor xd = to_gpu(x, c.t), wd = to_gpu(w, c.t), bd = to_gpu(b, c.t);
  Tensor y = nan_gpu({c.n, c.out}, c.t), composed = nan_gpu({c.n, c.out}, c.t);
  gpu().linear_fwd(xd, wd, bd, c.act, y);
  gpu().Backend::linear_fwd(xd, wd, bd, c.act, composed);  // GEMM + bias (+ act) kernels
  const Tensor got = to_host(y);
  EXPECT_LE(rel_err(got, ref), tolerance(c.t)) << c.name() << ": fused vs cpu";
  EXPECT_LE(rel_err(got, to_host(composed)), 2 * tolerance(c.t))
      << c.name() << ": fused vs composed";
  EXPECT_LE(rel_err(to_host(xd), x), 0.0) << c.name() << ": x changed";

  if (c.aligned() && c.act != ActKind::gelu) {  // the epilogue itself ran, not the fallback
    const bool relu = c.act == ActKind::relu;
    Tensor y2 = nan_gpu({c.n, c.out}, c.t);
    EXPECT_TRUE(gpu().gemm_lt().gemm_epilogue(
        xd, false, wd, true, y2, 1.0, 0.0,
        relu ? cuda::GemmEpilogue::relu_bias : cuda::GemmEpilogue::bias, bd,
        gpu().compute_stream()))
        << c.name() << ": cuBLASLt offered no algorithm";
    EXPECT_LE(rel_err(to_host(y2), ref), tolerance(c.t)) << c.name() << ": GemmLt epilogue";
  }
}

// dW += dyᵀ x; db += Σ_n dy (dW, db F32)
TEST_P(LinearBwd, ParamGradsMatchCpu) {
  MH_REQUIRE_GPU();
  const LinearCase& c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>{}(c.name() + "_bwd")));
  const Tensor dy = random_host(rng, {c.n, c.out}, c.t), x = random_host(rng, {c.n, c.in}, c.t);
  const Tensor dw0 = random_host(rng, {c.out, c.in}, F32), db0 = random_host(rng, {c.out}, F32);
  Tensor dw_ref = dw0.clone(), db_ref = db0.clone();
  cpu().linear_bwd_params(dy, x, dw_ref, db_ref);

  const Tensor dyd = to_gpu(dy, c.t), xd = to_gpu(x, c.t);
  const bool was = gpu().bgrad_epilogue();
  for (const bool epilogue : {false, true}) {  // composed (the default), then BGRADB
    gpu().set_bgrad_epilogue(epilogue);
    Tensor dw = to_gpu(dw0, F32), db = to_gpu(db0, F32);
    gpu().linear_bwd_params(dyd, xd, dw, db);
    const char* how = epilogue ? " (bgrad epilogue)" : " (composed)";
    EXPECT_LE(rel_err(to_host(dw), dw_ref), tolerance(c.t)) << c.name() << ": dW" << how;
    EXPECT_LE(rel_err(to_host(db), db_ref), tolerance(c.t)) << c.name() << ": db" << how;
  }
  gpu().set_bgrad_epilogue(was);

  // BGRADB itself: dW as above, and the (overwritten) sum Σ_n dy.
  Tensor dw2 = to_gpu(dw0, F32), sum = nan_gpu({c.out}, F32);
  const bool fused =
      gpu().gemm_lt().gemm_epilogue(dyd, true, xd, false, dw2, 1.0, 1.0,
                                    cuda::GemmEpilogue::bgrad_a, sum, gpu().compute_stream());
  if (!fused)
    GTEST_SKIP() << c.name() << ": cuBLASLt has no BGRADB algorithm for " << dtype_name(c.t)
                 << " -> F32 (linear_bwd_params used the bias_grad kernel; checked above)";
  Tensor sum_ref = Tensor::zeros({c.out}, F32);
  cpu().bias_grad(dy, sum_ref);
  EXPECT_LE(rel_err(to_host(dw2), dw_ref), tolerance(c.t)) << c.name() << ": BGRADB dW";
  EXPECT_LE(rel_err(to_host(sum), sum_ref), tolerance(c.t)) << c.name() << ": BGRADB Σ dy";
}

INSTANTIATE_TEST_SUITE_P(Fused, LinearFwd, ::testing::ValuesIn(cases(true)), case_name);
INSTANTIATE_TEST_SUITE_P(Fused, LinearBwd, ::testing::ValuesIn(cases(false)), case_name);

// A bias of another dtype than y (allowed by add_bias) takes the composed path, same result.
TEST(LinearFusedFallback, F32BiasWithBf16Output) {
  MH_REQUIRE_GPU();
  std::mt19937 rng(7);
  const Tensor x = random_host(rng, {32, 64}, BF16), w = random_host(rng, {48, 64}, BF16),
               b = random_host(rng, {48}, BF16);
  Tensor ref = Tensor::empty({32, 48}, F32);
  cpu().linear_fwd(x, w, b, ActKind::relu, ref);
  Tensor y = nan_gpu({32, 48}, BF16);
  gpu().linear_fwd(to_gpu(x, BF16), to_gpu(w, BF16), to_gpu(b, F32), ActKind::relu, y);
  EXPECT_LE(rel_err(to_host(y), ref), tolerance(BF16));
}

}  // namespace
}  // namespace mh
