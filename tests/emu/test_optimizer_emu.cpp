// The optimizer kernels (optimizer_kernels.cuh: multi-tensor Adam, sum of squares) run on the CPU
// through the SIMT emulation (simt_emu.h), with the launchers' own constants and grid sizes,
// against CpuBackend::adam_step and CpuBackend::sum_squares on the same random inputs. Outputs
// the kernels write (=) are compared elementwise; sum_squares accumulates (+=) into a nonzero
// start. Sizes cover one element and partial blocks and warps. The grid-stride loops' second lap
// (tensors over kAdamMaxChunks · kAdamThreads or kSumMaxBlocks · kSumThreads elements) is left to
// the GPU tests: the emulation spends a host thread per CUDA thread, and such grids take minutes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/kernels.h"
#include "backend/cuda/kernels/optimizer_kernels.cuh"
#include "kernel_emu_util.h"

namespace mh::cuda {
namespace {

emu::Dim3 dim_of(dim3 d) {
  return {d.x, d.y, d.z};
}

std::vector<float> randn(std::mt19937_64& rng, int64_t n, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = nd(rng);
  return x;
}

Tensor host_f32(const std::vector<float>& x) {
  Tensor t = Tensor::empty({static_cast<int64_t>(x.size())});
  std::copy(x.begin(), x.end(), t.data<float>());
  return t;
}

// max |got − want| / max |want|
double rel_err(const float* got, const float* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    num = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(num, d);
    den = std::max(den, std::fabs(static_cast<double>(want[i])));
  }
  return den > 0 ? num / den : num;
}

TEST(OptimizerEmu, AdamMultiMatchesCpu) {
  std::mt19937_64 rng(31);
  const std::vector<int64_t> sizes = {1, 7, 300, 1000};  // grid (4, 4)
  const double lr = 1e-3, b1 = 0.9, b2 = 0.98, eps = 1e-9, wd = 0.01, gs = 0.5;
  CpuBackend cpu;
  const size_t count = sizes.size();
  std::vector<Tensor> p_ref, m_ref, v_ref;
  std::vector<std::vector<float>> p, m, v, g(count);
  for (int64_t s : sizes) {
    p.push_back(randn(rng, s));
    m.push_back(randn(rng, s, 0.01f));
    v.push_back(randn(rng, s, 0.01f));
    for (float& x : v.back()) x = x * x;  // second moments are positive
    p_ref.push_back(host_f32(p.back()));
    m_ref.push_back(host_f32(m.back()));
    v_ref.push_back(host_f32(v.back()));
  }
  std::vector<float*> pp, gp, mp, vp;
  // bf16 copies of the updated params for tensors 0 and 2 (none for 1 and 3), poisoned.
  std::vector<std::vector<__nv_bfloat16>> copy(count);
  std::vector<void*> cp(count, nullptr);
  for (size_t t = 0; t < count; ++t) {
    pp.push_back(p[t].data());
    mp.push_back(m[t].data());
    vp.push_back(v[t].data());
    if (t % 2 == 0) {
      copy[t].assign(static_cast<size_t>(sizes[t]), __float2bfloat16(NAN));
      cp[t] = copy[t].data();
    }
  }
  for (int64_t step = 1; step <= 3; ++step) {
    gp.clear();
    for (size_t t = 0; t < count; ++t) {
      g[t] = randn(rng, sizes[t]);
      gp.push_back(g[t].data());
      cpu.adam_step(p_ref[t], host_f32(g[t]), m_ref[t], v_ref[t], lr, b1, b2, eps, wd, step, gs);
    }
    const AdamConsts c = adam_consts(lr, b1, b2, eps, wd, step, gs);
    const dim3 grid = adam_grid(static_cast<int>(count), sizes.back());
    emu::launch(dim_of(grid), {kAdamThreads}, [&] {
      adam_multi_kernel(pp.data(), gp.data(), mp.data(), vp.data(), sizes.data(), cp.data(), true,
                        c);
    });
  }
  for (size_t t = 0; t < count; ++t) {
    SCOPED_TRACE(::testing::Message() << "tensor " << t << " of " << sizes[t]);
    EXPECT_LE(rel_err(p[t].data(), p_ref[t].data<float>(), sizes[t]), 1e-5);
    EXPECT_LE(rel_err(m[t].data(), m_ref[t].data<float>(), sizes[t]), 1e-5);
    EXPECT_LE(rel_err(v[t].data(), v_ref[t].data<float>(), sizes[t]), 1e-5);
    for (int64_t i = 0; i < static_cast<int64_t>(copy[t].size()); ++i)  // the final p, rounded
      ASSERT_EQ(__bfloat162float(copy[t][static_cast<size_t>(i)]),
                __bfloat162float(__float2bfloat16(p[t][static_cast<size_t>(i)])))
          << "copy " << i;
  }
}

// Conversions to and from the kernel's dtype (kernel_emu_util.h).
template <typename T>
T to(float x) {
  return emu_test::from_f<T>(x);
}
template <typename T>
float from(T x) {
  return emu_test::to_f(x);
}

// Σ x² of x rounded to T, by the kernel (+= onto 2.5) and by CpuBackend on the rounded values.
template <typename T>
void run_sum_squares(int64_t n, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " sizeof(T)=" << sizeof(T));
  std::mt19937_64 rng(seed);
  const std::vector<float> x0 = randn(rng, n);
  std::vector<T> x(x0.size());
  std::vector<float> xr(x0.size());
  for (size_t i = 0; i < x0.size(); ++i) {
    x[i] = to<T>(x0[i]);
    xr[i] = from(x[i]);
  }
  CpuBackend cpu;
  const double ref = cpu.sum_squares(host_f32(xr));
  double out = 2.5;
  emu::launch({static_cast<unsigned>(sum_squares_blocks(n))}, {kSumThreads},
              [&] { sum_squares_kernel<T>(x.data(), n, &out); });
  EXPECT_LE(std::fabs((out - 2.5) - ref) / ref, 1e-5) << out - 2.5 << " vs " << ref;
}

TEST(OptimizerEmu, SumSquaresMatchesCpu) {
  uint64_t seed = 41;
  for (int64_t n : {int64_t{1}, int64_t{77}, int64_t{1000}, int64_t{3001}}) {
    run_sum_squares<float>(n, seed++);
    run_sum_squares<__nv_bfloat16>(n, seed++);
    run_sum_squares<__half>(n, seed++);
  }
}

TEST(OptimizerEmu, SumSquaresNonFinite) {
  std::mt19937_64 rng(43);
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    const auto x0 = randn(rng, 5000);
    std::vector<__nv_bfloat16> x(x0.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = __float2bfloat16(x0[i]);
    x[4321] = __float2bfloat16(bad);
    double out = 0;
    emu::launch({static_cast<unsigned>(sum_squares_blocks(5000))}, {kSumThreads},
                [&] { sum_squares_kernel<__nv_bfloat16>(x.data(), 5000, &out); });
    EXPECT_FALSE(std::isfinite(out));
  }
}

// Σ x² over a list of tensors in one launch (+= onto 2.5), against CpuBackend over each tensor.
// With the launcher's chunk every tensor here is one block; a chunk of 300 splits the larger
// ones into several blocks, with a partial last chunk, and tensors into consecutive blocks.
TEST(OptimizerEmu, SumSquaresMultiMatchesCpu) {
  std::mt19937_64 rng(47);
  const std::vector<int64_t> sizes = {1000, 1, 77, 300, 2049, 5};
  std::vector<std::vector<float>> x;
  std::vector<const float*> xp;
  CpuBackend cpu;
  double ref = 0;
  for (int64_t n : sizes) {
    x.push_back(randn(rng, n));
    xp.push_back(x.back().data());
    ref += cpu.sum_squares(host_f32(x.back()));
  }
  for (int64_t chunk : {kSumSquaresChunk, int64_t{300}}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
    const std::vector<int64_t> first = sum_squares_first_blocks(sizes, chunk);
    EXPECT_EQ(first.back(), chunk == 300 ? 4 + 1 + 1 + 1 + 7 + 1 : 6);
    double out = 2.5;
    emu::launch({static_cast<unsigned>(first.back())}, {kSumThreads}, [&] {
      sum_squares_multi_kernel(xp.data(), sizes.data(), first.data(),
                               static_cast<int>(sizes.size()), chunk, &out);
    });
    EXPECT_LE(std::fabs((out - 2.5) - ref) / ref, 1e-5) << out - 2.5 << " vs " << ref;
  }
  // A non-finite element in one chunk of one tensor makes the sum non-finite.
  x[4][1500] = std::nanf("");
  const std::vector<int64_t> first = sum_squares_first_blocks(sizes, 300);
  double out = 0;
  emu::launch({static_cast<unsigned>(first.back())}, {kSumThreads}, [&] {
    sum_squares_multi_kernel(xp.data(), sizes.data(), first.data(), static_cast<int>(sizes.size()),
                             300, &out);
  });
  EXPECT_TRUE(std::isnan(out));
}

}  // namespace
}  // namespace mh::cuda
