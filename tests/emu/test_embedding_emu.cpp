// The embedding kernels of the CUDA backend (src/backend/cuda/kernels/embedding_kernels.cuh), run
// on the CPU through the SIMT emulation (simt_emu.h) with the launchers' own grids, against
// CpuBackend::embed_fwd / embed_bwd in F32 on the same dtype-rounded random inputs: D not a
// multiple of 4 (scalar path) and D % 4 == 0 aligned (vector path) and misaligned (scalar), a
// repeated id (the backward's atomics sum two rows), F32 and BF16/F16 tables for the backward, a
// grid smaller than the rows (grid-stride), and ids outside [0, V): a NaN row forward, skipped
// backward. Forward outputs are poisoned with NaN first; dtable starts from random values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/embedding_kernels.cuh"
#include "kernel_emu_util.h"

namespace mh::cuda {
namespace {

using emu_test::Buf;
using emu_test::host;
using emu_test::random_values;
using emu_test::values;
using emu_test::Vec;

Tensor host_ids(const std::vector<int32_t>& ids, int64_t b, int64_t l) {
  Tensor t = Tensor::empty({b, l}, DType::i32);
  std::copy(ids.begin(), ids.end(), t.data<int32_t>());
  return t;
}

// What embed_fwd does, on `grid` blocks when given instead of emb_grid(rows).
template <typename T>
void run_fwd(const std::vector<int32_t>& ids, const Buf<T>& table, const Buf<T>& pe, Buf<T>& y,
             int64_t l, int64_t v, int64_t d, double scale, unsigned grid = 0) {
  const int64_t rows = static_cast<int64_t>(ids.size());
  const bool vec = emb_vec(d, table.p(), pe.p(), y.p());
  emu::launch({grid ? grid : emb_grid(rows)}, {kEmbThreads}, [&] {
    embed_fwd_kernel<T>(ids.data(), table.p(), pe.p(), y.p(), rows, l, v, d,
                        static_cast<float>(scale), vec);
  });
}

// What embed_bwd does, likewise.
template <typename T, typename G>
void run_bwd(const std::vector<int32_t>& ids, const Buf<T>& dy, Buf<G>& dtable, int64_t v,
             int64_t d, double scale, unsigned grid = 0) {
  const int64_t rows = static_cast<int64_t>(ids.size());
  emu::launch({grid ? grid : emb_grid(rows)}, {kEmbThreads}, [&] {
    embed_bwd_kernel<T, G>(ids.data(), dy.p(), dtable.p(), rows, v, d, static_cast<float>(scale));
  });
}

template <typename T>
void check_forward_backward(std::mt19937& rng) {
  CpuBackend cpu;
  const DType t = emu_test::dtype_t<T>();
  const int64_t b = 3, l = 7, v = 50, max_len = 10;
  for (int64_t d : {37, 64})
    for (bool mis : {false, true})
      for (unsigned grid : {0u, 4u}) {
        if (grid != 0 && mis) continue;
        SCOPED_TRACE(::testing::Message()
                     << dtype_name(t) << " D=" << d << " misaligned=" << mis << " grid=" << grid);
        std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(v - 1));
        std::vector<int32_t> ids(static_cast<size_t>(b * l));
        for (int32_t& id : ids) id = tok(rng);
        ids[1] = ids[0];  // a repeated id: the backward sums two rows into one
        const double sc = std::sqrt(static_cast<double>(d));
        const Vec table = random_values<T>(rng, v * d), pe = random_values<T>(rng, max_len * d);
        const Vec dy = random_values<T>(rng, b * l * d);
        const Vec dt0 = random_values<float>(rng, v * d);

        const Tensor hids = host_ids(ids, b, l);
        Tensor ref_y = host(Vec(b * l * d, 0.f), {b, l, d}), ref_dt = host(dt0, {v, d});
        cpu.embed_fwd(hids, host(table, {v, d}), host(pe, {max_len, d}), sc, ref_y);
        cpu.embed_bwd(hids, host(dy, {b, l, d}), sc, ref_dt);

        const Buf<T> gtable(table), gpe(pe, mis), gdy(dy);
        Buf<T> y(b * l * d, mis);
        y.poison();
        EXPECT_EQ(emb_vec(d, gtable.p(), gpe.p(), y.p()), d % 4 == 0 && !mis);
        run_fwd(ids, gtable, gpe, y, l, v, d, sc, grid);
        EXPECT_CLOSE(y.values(), values(ref_y), t);

        Buf<float> dt(dt0);
        run_bwd(ids, gdy, dt, v, d, sc, grid);
        EXPECT_CLOSE(dt.values(), values(ref_dt), DType::f32);
      }
}

TEST(EmbeddingEmu, ForwardBackwardF32) {
  std::mt19937 rng{20240611};
  check_forward_backward<float>(rng);
}
TEST(EmbeddingEmu, ForwardBackwardBF16) {
  std::mt19937 rng{20240612};
  check_forward_backward<__nv_bfloat16>(rng);
}
TEST(EmbeddingEmu, ForwardBackwardF16) {
  std::mt19937 rng{20240613};
  check_forward_backward<__half>(rng);
}

// A BF16/F16 dtable (the native 16-bit atomicAdd) with distinct ids: one rounding per element.
template <typename T>
void check_low_precision_table(std::mt19937& rng) {
  CpuBackend cpu;
  const int64_t v = 40, d = 29;
  std::vector<int32_t> ids(static_cast<size_t>(v));
  for (int32_t i = 0; i < v; ++i) ids[static_cast<size_t>(i)] = (i * 7) % static_cast<int32_t>(v);
  const Vec dy = random_values<T>(rng, v * d), dt0 = random_values<T>(rng, v * d);
  Tensor ref = host(dt0, {v, d});
  cpu.embed_bwd(host_ids(ids, 1, v), host(dy, {1, v, d}), 0.5, ref);
  const Buf<T> gdy(dy);
  Buf<T> dt(dt0);
  run_bwd(ids, gdy, dt, v, d, 0.5);
  EXPECT_CLOSE(dt.values(), values(ref), emu_test::dtype_t<T>());
}

TEST(EmbeddingEmu, BackwardLowPrecisionTable) {
  std::mt19937 rng{5};
  check_low_precision_table<__nv_bfloat16>(rng);
  check_low_precision_table<__half>(rng);
}

// Ids outside [0, V): the forward writes a NaN row, the backward skips it; every other row is the
// CPU's (computed with the bad ids replaced by 0 and their dy rows zeroed).
TEST(EmbeddingEmu, OutOfRangeIds) {
  std::mt19937 rng{11};
  CpuBackend cpu;
  const int64_t b = 2, l = 5, v = 20, d = 36;
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(v - 1));
  std::vector<int32_t> ids(static_cast<size_t>(b * l));
  for (int32_t& id : ids) id = tok(rng);
  ids[2] = -1;
  ids[7] = static_cast<int32_t>(v);
  std::vector<int32_t> safe = ids;
  safe[2] = safe[7] = 0;
  const Vec table = random_values<float>(rng, v * d), pe = random_values<float>(rng, l * d);
  Vec dy = random_values<float>(rng, b * l * d);
  const Vec dt0 = random_values<float>(rng, v * d);

  Buf<float> y(b * l * d);
  y.poison();
  run_fwd(ids, Buf<float>(table), Buf<float>(pe), y, l, v, d, 1.5);
  Buf<float> dt(dt0);
  run_bwd(ids, Buf<float>(dy), dt, v, d, 1.5);

  Tensor ref_y = host(Vec(b * l * d, 0.f), {b, l, d});
  cpu.embed_fwd(host_ids(safe, b, l), host(table, {v, d}), host(pe, {l, d}), 1.5, ref_y);
  for (int64_t j = 0; j < d; ++j) dy[static_cast<size_t>(2 * d + j)] = 0.f;
  for (int64_t j = 0; j < d; ++j) dy[static_cast<size_t>(7 * d + j)] = 0.f;
  Tensor ref_dt = host(dt0, {v, d});
  cpu.embed_bwd(host_ids(safe, b, l), host(dy, {b, l, d}), 1.5, ref_dt);

  const Vec got = y.values(), want = values(ref_y);
  for (int64_t r = 0; r < b * l; ++r)
    for (int64_t j = 0; j < d; ++j) {
      const size_t i = static_cast<size_t>(r * d + j);
      if (r == 2 || r == 7)
        EXPECT_TRUE(std::isnan(got[i])) << "row " << r << " col " << j;
      else
        EXPECT_NEAR(got[i], want[i], 1e-5 * std::fabs(want[i]) + 1e-6) << "row " << r;
    }
  EXPECT_LE(emu_test::rel_err(dt.values(), values(ref_dt)), 1e-6);
}

}  // namespace
}  // namespace mh::cuda
