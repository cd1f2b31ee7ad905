// The fused softmax + cross-entropy kernel (src/backend/cuda/kernels/softmax_xent_kernels.cuh)
// runs on the CPU through the SIMT emulation (simt_emu.h), launched with the launcher's own block
// count (xent_blocks) for a small GPU of 4 SMs × 2 blocks, so most cases loop over rows; checked
// against CpuBackend::softmax_xent in float64 on the same T-rounded logits. Covers F32 / BF16 /
// F16, label smoothing on and off, V smaller than a warp / odd / larger than the block many times,
// forward only, dlogits aliasing logits, padding rows (exact zero gradient), the loss sums added
// to (+=) preset values, an all-padding batch, and labels outside the vocabulary (NaN sums, zero
// gradient). dlogits is poisoned (NaN) first. Tolerances as the GPU test's
// (tests/cuda/test_kernels_b.cpp): gradient max |Δ| / max |ref| F32 1e-5, BF16 1e-2, F16 2e-3;
// sums relative 1e-5 (F32) / 1e-4; token counts exact.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/softmax_xent_kernels.cuh"
#include "kernel_emu_util.h"

namespace mh::cuda {
namespace {

using emu_test::from_f;
using emu_test::to_f;
// The dtype's name and error tolerance (kernel_emu_util.h).
template <typename T>
const char* type_name() {
  return dtype_name(emu_test::dtype_t<T>());
}
template <typename T>
double tolerance() {
  return emu_test::tolerance(emu_test::dtype_t<T>());
}

constexpr int kSms = 4, kPerSm = 2;  // the emulated GPU: xent_blocks gives at most 8 blocks
constexpr int64_t kPad = 1;
constexpr double kGradScale = 0.37;

double rel(double got, double want) {
  return std::fabs(got - want) / std::max(std::fabs(want), 1e-300);
}

struct Case {
  int64_t n, v;
  double smoothing;
  bool with_grad = true;
  bool aliased = false;   // dlogits is the logits buffer
  int64_t bad_every = 0;  // > 0: rows i % bad_every == 0 get labels outside [0, V)
  float sd = 3.f;         // of the logits; 100: exp overflows unless the row max is subtracted
};

template <typename T>
void run_case(const Case& c, uint64_t seed) {
  const int64_t n = c.n, v = c.v;
  const int blocks = xent_blocks(n, kSms, kPerSm);
  SCOPED_TRACE(::testing::Message()
               << type_name<T>() << " N=" << n << " V=" << v << " eps=" << c.smoothing
               << " grad=" << c.with_grad << " aliased=" << c.aliased << " blocks=" << blocks);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, c.sd);
  std::vector<T> logits(static_cast<size_t>(n * v));
  for (T& x : logits) x = from_f<T>(nd(rng));
  std::vector<int32_t> labels(static_cast<size_t>(n));
  std::uniform_int_distribution<int32_t> lab(0, static_cast<int32_t>(v - 1));
  bool any_bad = false;
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = i % 4 == 2 ? static_cast<int32_t>(kPad) : lab(rng);
    if (c.bad_every > 0 && i % c.bad_every == 0) {
      labels[i] = i % 2 ? static_cast<int32_t>(v) : -5;
      any_bad = true;
    }
  }
  auto bad = [&](int64_t i) { return labels[i] != kPad && (labels[i] < 0 || labels[i] >= v); };

  // Reference: bad rows (the CPU backend throws on them) as padding; the kernel zeroes their
  // gradient too and makes the loss sums NaN.
  CpuBackend cpu;
  Tensor x64 = Tensor::empty({n, v}, DType::f64), lab64 = Tensor::empty({n}, DType::i32);
  for (int64_t i = 0; i < n * v; ++i) x64.data<double>()[i] = to_f(logits[i]);
  for (int64_t i = 0; i < n; ++i)
    lab64.data<int32_t>()[i] = bad(i) ? static_cast<int32_t>(kPad) : labels[i];
  Tensor dx64 = Tensor::empty({n, v}, DType::f64);
  const XentResult ref =
      cpu.softmax_xent(x64, lab64, kPad, c.smoothing, kGradScale, c.with_grad ? &dx64 : nullptr);

  std::vector<T> dx_buf(static_cast<size_t>(n * v),
                        from_f<T>(std::numeric_limits<float>::quiet_NaN()));
  T* dx = c.with_grad ? (c.aliased ? logits.data() : dx_buf.data()) : nullptr;
  // V a multiple of the vector width takes the 16-byte path (the buffers are 16-byte aligned).
  if (v % kXentVec<T> == 0) {
    ASSERT_TRUE(xent_vectorized<T>(logits.data(), dx, static_cast<int>(v)))
        << "the vectorized path is not exercised";
  }
  const double preset[3] = {0.5, -1.25, 3.0};  // the sums are accumulated (+=)
  double sums[3] = {preset[0], preset[1], preset[2]};
  emu::launch({static_cast<unsigned>(blocks)}, {kXentThreads}, [&] {
    softmax_xent_kernel<T>(logits.data(), labels.data(), n, static_cast<int>(v), kPad,
                           static_cast<float>(c.smoothing), static_cast<float>(kGradScale), dx,
                           sums);
  });

  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-4;
  if (any_bad) {
    EXPECT_TRUE(std::isnan(sums[0])) << sums[0];
    EXPECT_TRUE(std::isnan(sums[1])) << sums[1];
  } else {
    EXPECT_LE(rel(sums[0] - preset[0], ref.loss_sum), tol) << sums[0] << " " << ref.loss_sum;
    EXPECT_LE(rel(sums[1] - preset[1], ref.nll_sum), tol) << sums[1] << " " << ref.nll_sum;
  }
  EXPECT_EQ(sums[2] - preset[2], static_cast<double>(ref.tokens));
  if (!dx) return;
  double diff = 0, mag = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < v; ++j) {
      const float got = to_f(dx[i * v + j]);
      if (labels[i] == kPad || bad(i)) {
        ASSERT_EQ(got, 0.f) << "padding / bad-label row " << i << " column " << j;
        continue;
      }
      const double want = dx64.data<double>()[i * v + j], d = std::fabs(got - want);
      if (!(d <= diff)) diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
      mag = std::max(mag, std::fabs(want));
    }
  EXPECT_LE(diff / mag, tolerance<T>()) << "dlogits";
}

TEST(SoftmaxXentEmu, F32) {
  run_case<float>({13, 8003, 0.0}, 1);
  run_case<float>({37, 8003, 0.1}, 2);
  run_case<float>({5, 7, 0.1}, 3);                  // V smaller than a warp; fewer rows than blocks
  run_case<float>({3, 50021, 0.1}, 4);              // vocabulary of the paper's size
  run_case<float>({70, 515, 0.1}, 5);               // many rows per block
  run_case<float>({13, 8003, 0.1, false}, 6);       // forward only
  run_case<float>({20, 1001, 0.1, true, true}, 7);  // dlogits aliases logits
}

TEST(SoftmaxXentEmu, BF16) {
  run_case<__nv_bfloat16>({13, 8003, 0.0}, 11);
  run_case<__nv_bfloat16>({37, 8003, 0.1}, 12);
  run_case<__nv_bfloat16>({3, 50021, 0.1}, 13);
  run_case<__nv_bfloat16>({20, 1001, 0.1, true, true}, 14);
}

TEST(SoftmaxXentEmu, F16) {
  run_case<__half>({37, 8003, 0.1}, 21);
  run_case<__half>({9, 33, 0.1, true, true}, 22);
}

TEST(SoftmaxXentEmu, Vectorized) {
  // V a multiple of 8 (bf16/fp16) or 4 (fp32): rows in 16-byte vectors.
  run_case<float>({13, 8000, 0.1}, 41);
  run_case<float>({20, 1000, 0.1, true, true}, 42);  // in place
  run_case<__nv_bfloat16>({13, 8000, 0.0}, 43);
  run_case<__nv_bfloat16>({3, 37000, 0.1}, 44);  // paper-base's vocabulary
  run_case<__half>({9, 40, 0.1, true, true}, 45);
  run_case<__half>({19, 304, 0.1, true, false, 5}, 46);        // labels outside [0, V): zero rows
  run_case<__nv_bfloat16>({70, 512, 0.1, false}, 47);          // forward only, many rows per block
  run_case<float>({7, 4000, 0.1, true, false, 0, 100.f}, 48);  // logits beyond exp's range
  run_case<float>({7, 4001, 0.1, true, false, 0, 100.f}, 49);  // the same element by element
}

TEST(SoftmaxXentEmu, LabelsOutsideVocabulary) {
  run_case<float>({19, 301, 0.1, true, false, 5}, 31);
  run_case<__nv_bfloat16>({19, 301, 0.0, true, false, 7}, 32);
}

TEST(SoftmaxXentEmu, AllPadding) {
  const int64_t n = 4, v = 33;
  std::vector<float> logits(n * v), dx(n * v, std::numeric_limits<float>::quiet_NaN());
  std::mt19937_64 rng(41);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (float& x : logits) x = nd(rng);
  const std::vector<int32_t> labels(n, 0);  // pad_id 0: every row is padding
  double sums[3] = {0, 0, 0};
  emu::launch({static_cast<unsigned>(xent_blocks(n, kSms, kPerSm))}, {kXentThreads}, [&] {
    softmax_xent_kernel<float>(logits.data(), labels.data(), n, static_cast<int>(v), 0, 0.1f, 1.f,
                               dx.data(), sums);
  });
  for (double s : sums) EXPECT_EQ(s, 0.0);
  for (float d : dx) ASSERT_EQ(d, 0.f);
}

}  // namespace
}  // namespace mh::cuda
