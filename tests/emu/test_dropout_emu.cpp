// The dropout kernel of the CUDA backend (src/backend/cuda/kernels/dropout_kernels.cuh), run on the
// CPU through the SIMT emulation (simt_emu.h) with the launcher's own grid and arguments, against
// CpuBackend::dropout_fwd in F32 on the same dtype-rounded random inputs. The kernel draws the
// CPU's Philox bits and scales in fp32 as the CPU does, so the result must equal the CPU's rounded
// to the dtype exactly, in every dtype: mask and values. Covers the vector path, the scalar path
// (misaligned), a ragged last Philox block (n % 4 != 0), in place (y aliases x) and a grid smaller
// than the work (the grid-stride loop). Outputs are poisoned with NaN first.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/dropout_kernels.cuh"
#include "kernel_emu_util.h"

namespace mh::cuda {
namespace {

using emu_test::Buf;
using emu_test::host;
using emu_test::random_values;
using emu_test::values;
using emu_test::Vec;

template <typename T>
struct Tag {
  using type = T;
};

// What dropout_launch does, on `grid` blocks when given instead of dropout_grid(n).
template <typename T>
void run_dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset,
                 unsigned grid = 0) {
  const DropoutArgs a = dropout_args(p);
  const bool vec = dropout_vec(x, y);
  emu::launch({grid ? grid : dropout_grid(n)}, {kDropThreads},
              [&] { dropout_kernel<T>(x, y, n, a.threshold, a.scale, seed, offset, vec); });
}

template <typename T>
void check_dropout(std::mt19937& rng) {
  CpuBackend cpu;
  const uint64_t seed = 0x0123456789abcdefULL, offset = (7ULL << 32) | 5;
  for (double p : {0.1, 0.5, 0.0})
    for (int64_t n : {2503, 3, 1028})
      for (bool mis : {false, true})
        for (bool in_place : {false, true}) {
          const unsigned grid = n > 1024 && in_place ? 1 : 0;  // 1 block: grid-strided
          SCOPED_TRACE(::testing::Message()
                       << dtype_name(emu_test::dtype_t<T>()) << " p=" << p << " n=" << n
                       << " misaligned=" << mis << " in_place=" << in_place << " grid=" << grid);
          const Vec x = random_values<T>(rng, n);
          Tensor ref = host(Vec(n, 0.f), {n});
          cpu.dropout_fwd(host(x, {n}), p, seed, offset, ref);
          const Vec r = values(ref);
          Buf<T> gx(x, mis), out(n, mis);
          out.poison();
          Buf<T>& y = in_place ? gx : out;
          run_dropout<T>(gx.p(), y.p(), n, p, seed, offset, grid);
          const Vec got = y.values();
          int64_t wrong = 0, dropped = 0;
          for (int64_t i = 0; i < n; ++i) {
            const float want = emu_test::round_t<T>(r[static_cast<size_t>(i)]);
            const float g = got[static_cast<size_t>(i)];
            wrong += std::memcmp(&g, &want, sizeof g) != 0;
            dropped += want == 0.f;
          }
          EXPECT_EQ(wrong, 0);
          if (p == 0.0) {
            EXPECT_EQ(dropped, 0);
          }
          if (p == 0.5 && n > 1000) {
            EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(n), 0.5, 0.05);
          }
        }
}

TEST(DropoutEmu, MatchesCpuBitsF32) {
  std::mt19937 rng{20240611};
  check_dropout<float>(rng);
}
TEST(DropoutEmu, MatchesCpuBitsBF16) {
  std::mt19937 rng{20240612};
  check_dropout<__nv_bfloat16>(rng);
}
TEST(DropoutEmu, MatchesCpuBitsF16) {
  std::mt19937 rng{20240613};
  check_dropout<__half>(rng);
}

// Another offset and another seed give another mask (the kernel reads both).
TEST(DropoutEmu, SeedAndOffsetChangeTheMask) {
  std::mt19937 rng{7};
  const int64_t n = 1001;
  const Vec x = random_values<float>(rng, n);
  const Buf<float> gx(x);
  auto mask = [&](uint64_t seed, uint64_t offset) {
    Buf<float> y(n);
    y.poison();
    run_dropout<float>(gx.p(), y.p(), n, 0.5, seed, offset);
    std::vector<bool> m(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) m[static_cast<size_t>(i)] = y.p()[i] != 0.f;
    return m;
  };
  const auto m0 = mask(1, 2);
  EXPECT_NE(m0, mask(1, 3));
  EXPECT_NE(m0, mask(1, 2 + (1ULL << 32)));
  EXPECT_NE(m0, mask(2, 2));
  EXPECT_NE(m0, mask(1 + (1ULL << 32), 2));
  EXPECT_EQ(m0, mask(1, 2));
}

}  // namespace
}  // namespace mh::cuda
