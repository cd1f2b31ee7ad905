// The LayerNorm kernels (src/backend/cuda/kernels/layernorm_kernels.cuh) run on the CPU through
// the SIMT emulation (simt_emu.h), launched with the launchers' own geometry (ln_row_grid,
// ln_col_chunks), against CpuBackend in float64 on the same T-rounded random inputs. Covers
// F32 / BF16 / F16 activations with F32 or same-dtype weights, the vector (D % 4 == 0, aligned)
// and scalar (odd D, or buffers misaligned by one element) paths, rows not filling the last
// block's warps, the row kernels' grid-stride loop, the column kernel both with one chunk
// (plain stores) and with several (atomicAdd), and the fused backward (dx and the column sums in
// one kernel) likewise with one block and with several. Outputs are poisoned (NaN) before each run,
// so unwritten elements fail; dweight / dbias start from random values, since the kernel adds.
// Tolerances (max |kernel − reference| / max |reference|): F32 1e-5, BF16 1e-2, F16 2e-3, as in
// the GPU test (tests/cuda/test_kernels_a.cpp, LayerNorm).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/dropout_kernels.cuh"
#include "backend/cuda/kernels/layernorm_kernels.cuh"
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

// A device-like buffer of count elements starting `offset` elements into its allocation (offset 1
// misaligns it for the 4-element vector loads).
template <typename T>
struct Buf {
  std::vector<T> store;
  T* p;
  Buf(int64_t count, bool misaligned)
      : store(static_cast<size_t>(count + 4)), p(store.data() + (misaligned ? 1 : 0)) {}
  T& operator[](int64_t i) { return p[i]; }
};

// Random values rounded to T; the reference gets the rounded values.
template <typename T>
Buf<T> random_buf(std::mt19937_64& rng, int64_t count, float mean, bool misaligned = false) {
  std::normal_distribution<float> nd(mean, 1.f);
  Buf<T> b(count, misaligned);
  for (int64_t i = 0; i < count; ++i) b[i] = from_f<T>(nd(rng));
  return b;
}

template <typename T>
void poison(Buf<T>& b, int64_t count) {
  for (int64_t i = 0; i < count; ++i) b[i] = from_f<T>(std::numeric_limits<float>::quiet_NaN());
}

template <typename T>
Tensor to_f64(Buf<T>& b, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = to_f(b[i]);
  return t;
}

// max |got − want| / max |want|; a NaN anywhere is infinite.
template <typename T>
double rel_err(Buf<T>& got, const Tensor& want) {
  double diff = 0, mag = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double w = want.data<double>()[i], d = std::fabs(to_f(got[i]) - w);
    if (!(d <= diff)) diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
    mag = std::max(mag, std::fabs(w));
  }
  return mag > 0 ? diff / mag : diff;
}

struct Case {
  int64_t n, d;
  bool misaligned = false;
  int sms = 4;                // the column kernel's chunking follows the GPU's SM count
  unsigned row_grid_cap = 0;  // > 0: fewer row blocks than the launcher's, to run the row loop
  bool fused = false;         // the backward is expected to take the fused kernel
  bool one_block = false;     // ... with one block (plain += instead of atomicAdd)
};

template <typename T, typename W>
void run_case(const Case& c, uint64_t seed) {
  const int64_t n = c.n, d = c.d;
  const LnColChunks cc = ln_col_chunks(n, d, c.sms);
  SCOPED_TRACE(::testing::Message()
               << type_name<T>() << " weight " << type_name<W>() << " N=" << n << " D=" << d
               << " misaligned=" << c.misaligned << " column chunks=" << cc.chunks);
  const double eps = 1e-5;
  std::mt19937_64 rng(seed);
  Buf<T> x = random_buf<T>(rng, n * d, 3.f, c.misaligned);  // an offset mean: centred variance
  Buf<W> w = random_buf<W>(rng, d, 0.f), b = random_buf<W>(rng, d, 0.f);
  Buf<T> dy = random_buf<T>(rng, n * d, 0.f, c.misaligned);
  Buf<float> dw = random_buf<float>(rng, d, 0.f), db = random_buf<float>(rng, d, 0.f);

  CpuBackend cpu;
  Tensor ref_y = Tensor::empty({n, d}, DType::f64), ref_mean = Tensor::empty({n}, DType::f64),
         ref_rstd = Tensor::empty({n}, DType::f64);
  Tensor x64 = to_f64(x, {n, d}), w64 = to_f64(w, {d});
  cpu.layernorm_fwd(x64, w64, to_f64(b, {d}), eps, ref_y, ref_mean, ref_rstd);

  // Forward, as layernorm_fwd launches it.
  Buf<T> y(n * d, c.misaligned);
  Buf<float> mean(n, false), rstd(n, false);
  poison(y, n * d);
  poison(mean, n);
  poison(rstd, n);
  const bool vec = d % 4 == 0 && ln_aligned(x.p, 4 * sizeof(T)) && ln_aligned(y.p, 4 * sizeof(T));
  ASSERT_EQ(vec, d % 4 == 0 && !c.misaligned) << "the case does not take the path it means to";
  const unsigned grid =
      c.row_grid_cap > 0 ? std::min(c.row_grid_cap, ln_row_grid(n)) : ln_row_grid(n);
  emu::launch({grid}, {kLnThreads}, [&] {
    layernorm_fwd_kernel<T, W>(x.p, w.p, b.p, y.p, mean.p, rstd.p, n, d, static_cast<float>(eps),
                               vec);
  });
  EXPECT_LE(rel_err(y, ref_y), tolerance<T>()) << "y";
  EXPECT_LE(rel_err(mean, ref_mean), 1e-5) << "mean";  // F32 statistics
  EXPECT_LE(rel_err(rstd, ref_rstd), 1e-5) << "rstd";

  // Backward from the reference's statistics (rounded to F32, as the kernel takes them), so only
  // the backward is under test here.
  for (int64_t i = 0; i < n; ++i) {
    mean[i] = static_cast<float>(ref_mean.data<double>()[i]);
    rstd[i] = static_cast<float>(ref_rstd.data<double>()[i]);
  }
  Tensor ref_dx = Tensor::empty({n, d}, DType::f64);
  Tensor ref_dw = to_f64(dw, {d}), ref_db = to_f64(db, {d});
  cpu.layernorm_bwd(to_f64(dy, {n, d}), x64, w64, to_f64(mean, {n}), to_f64(rstd, {n}), ref_dx,
                    ref_dw, ref_db);

  Buf<T> dx(n * d, c.misaligned);
  poison(dx, n * d);
  const size_t al = 4 * sizeof(T);
  const bool bvec =
      d % 4 == 0 && ln_aligned(dy.p, al) && ln_aligned(x.p, al) && ln_aligned(dx.p, al);
  ASSERT_EQ(bvec, vec);
  const LnBwdPlan plan = ln_bwd_plan(n, d, bvec, c.sms);
  ASSERT_EQ(plan.fused, c.fused) << "the case does not take the backward path it means to";
  if (plan.fused) {
    const unsigned blocks =
        c.row_grid_cap > 0 ? std::min(c.row_grid_cap, plan.blocks) : plan.blocks;
    ASSERT_EQ(blocks == 1, c.one_block) << blocks << " blocks";
    emu::launch({blocks}, {kLnThreads}, [&] {
      layernorm_bwd_fused_kernel<T, W>(dy.p, x.p, w.p, mean.p, rstd.p, dx.p, dw.p, db.p, n, d);
    });
  } else {
    emu::launch({static_cast<unsigned>(cc.col_blocks), static_cast<unsigned>(cc.chunks)},
                {kLnCols, kLnRows}, [&] {
                  layernorm_bwd_cols_kernel<T>(dy.p, x.p, mean.p, rstd.p, dw.p, db.p, n, d,
                                               cc.rows_per_chunk);
                });
    emu::launch({grid}, {kLnThreads}, [&] {
      layernorm_bwd_dx_kernel<T, W>(dy.p, x.p, w.p, mean.p, rstd.p, dx.p, n, d, bvec);
    });
  }
  EXPECT_LE(rel_err(dx, ref_dx), tolerance<T>()) << "dx";
  EXPECT_LE(rel_err(dw, ref_dw), 1e-5) << "dweight";  // F32 sums of the same inputs
  EXPECT_LE(rel_err(db, ref_db), 1e-5) << "dbias";
}

// The backward's paths: fused (vector loads, D ≤ 1024) with several blocks or one, and the
// column kernel + dx kernel otherwise.
const Case kCases[] = {
    {37, 203},                           // odd D: scalar path; 37 rows: a partial last block
    {37, 132, false, 4, 0, true},        // vector path; fused backward, a partial 128-column chunk
    {37, 132, true},                     // D % 4 == 0 but misaligned: scalar path, two kernels
    {300, 68, false, 132, 0, true},      // fused, 75 blocks (atomicAdd), H100's 132 SMs
    {150, 67, true, 132},                // several column chunks (atomicAdd), scalar
    {4, 1024, false, 4, 0, true, true},  // the longest fused rows, one block
    {9, 1028, false, 4},                 // vector loads but too long to fuse: two kernels
    {37, 96, false, 4, 2, true},         // 2 row blocks for 10 blocks' rows: the row loops
    {200, 512, false, 4, 0, true},       // paper-base's rows; 16 fused blocks, 3-4 rows a warp
    {3, 256, false, 4, 0, true, true},   // fused, one block with warps that get no row
    {3, 1},                              // D = 1: a row of one element
};

template <typename T, typename W>
void run_all(uint64_t seed) {
  for (const Case& c : kCases) run_case<T, W>(c, seed++);
}

TEST(LayerNormEmu, F32) {
  run_all<float, float>(100);
}
TEST(LayerNormEmu, BF16WeightF32) {
  run_all<__nv_bfloat16, float>(200);
}
TEST(LayerNormEmu, BF16WeightBF16) {
  run_all<__nv_bfloat16, __nv_bfloat16>(300);
}
TEST(LayerNormEmu, F16WeightF32) {
  run_all<__half, float>(400);
}
TEST(LayerNormEmu, F16WeightF16) {
  run_all<__half, __half>(500);
}

// residual_layernorm_fwd_kernel against the ops it fuses: dropout_kernel (emulated, so the very
// mask and rounding of dropout_fwd), the add kernel's rounding of x + dropped to T, then the sum
// normalized by CpuBackend in float64. The sum must equal that composition bit for bit (it is
// what layernorm_bwd reads back); y, mean and rstd within the tolerances above.
struct ResidualCase {
  int64_t n, d;
  double p;
  unsigned row_grid_cap = 0;  // > 0: fewer blocks than the launcher's, to run the row loop
};

template <typename T, typename W>
void run_residual_case(const ResidualCase& c, uint64_t seed) {
  const int64_t n = c.n, d = c.d, nd = n * d;
  SCOPED_TRACE(::testing::Message() << type_name<T>() << " weight " << type_name<W>() << " N=" << n
                                    << " D=" << d << " p=" << c.p);
  ASSERT_TRUE(ln_residual_fusable(d, true));
  std::mt19937_64 rng(seed);
  Buf<T> x = random_buf<T>(rng, nd, 3.f), body = random_buf<T>(rng, nd, 0.f);
  Buf<W> w = random_buf<W>(rng, d, 0.f), b = random_buf<W>(rng, d, 0.f);
  const uint64_t drop_seed = 1234 + seed, offset = (uint64_t{7} << 24) | 3;
  const DropoutArgs da = dropout_args(c.p);

  // The composition: dropout_fwd's kernel, then the add kernel's rounding.
  Buf<T> dropped(nd, false), want_sum(nd, false);
  if (c.p > 0)
    emu::launch({dropout_grid(nd)}, {kDropThreads}, [&] {
      dropout_kernel<T>(body.p, dropped.p, nd, da.threshold, da.scale, drop_seed, offset, true);
    });
  else
    for (int64_t i = 0; i < nd; ++i) dropped[i] = body[i];
  for (int64_t i = 0; i < nd; ++i) want_sum[i] = from_f<T>(to_f(x[i]) + to_f(dropped[i]));
  const double eps = 1e-5;
  CpuBackend cpu;
  Tensor ref_y = Tensor::empty({n, d}, DType::f64), ref_mean = Tensor::empty({n}, DType::f64),
         ref_rstd = Tensor::empty({n}, DType::f64);
  cpu.layernorm_fwd(to_f64(want_sum, {n, d}), to_f64(w, {d}), to_f64(b, {d}), eps, ref_y, ref_mean,
                    ref_rstd);

  Buf<T> sum(nd, false), y(nd, false);
  Buf<float> mean(n, false), rstd(n, false);
  poison(sum, nd);
  poison(y, nd);
  poison(mean, n);
  poison(rstd, n);
  const unsigned grid =
      c.row_grid_cap > 0 ? std::min(c.row_grid_cap, ln_row_grid(n)) : ln_row_grid(n);
  emu::launch({grid}, {kLnThreads}, [&] {
    residual_layernorm_fwd_kernel<T, W>(x.p, body.p, w.p, b.p, sum.p, y.p, mean.p, rstd.p, n, d,
                                        static_cast<float>(eps), c.p > 0, da.threshold, da.scale,
                                        drop_seed, offset);
  });
  for (int64_t i = 0; i < nd; ++i)
    ASSERT_EQ(std::memcmp(&sum[i], &want_sum[i], sizeof(T)), 0)
        << "sum[" << i << "] = " << to_f(sum[i]) << ", the composition's " << to_f(want_sum[i]);
  EXPECT_LE(rel_err(y, ref_y), tolerance<T>()) << "y";
  EXPECT_LE(rel_err(mean, ref_mean), 1e-5) << "mean";
  EXPECT_LE(rel_err(rstd, ref_rstd), 1e-5) << "rstd";
}

const ResidualCase kResidualCases[] = {
    {37, 132, 0.1},    // a partial 128-column chunk; 37 rows: a partial last block
    {64, 512, 0.25},   // paper-base's rows
    {3, 1024, 0.0},    // the longest rows, no dropout
    {37, 96, 0.5, 2},  // 2 blocks for 10 blocks' rows: the row loop
    {5, 4, 0.3},       // a row of one 4-element chunk
};

template <typename T, typename W>
void run_residual_all(uint64_t seed) {
  for (const ResidualCase& c : kResidualCases) run_residual_case<T, W>(c, seed++);
}

TEST(ResidualLayerNormEmu, F32) {
  run_residual_all<float, float>(600);
}
TEST(ResidualLayerNormEmu, BF16WeightF32) {
  run_residual_all<__nv_bfloat16, float>(700);
}
TEST(ResidualLayerNormEmu, BF16WeightBF16) {
  run_residual_all<__nv_bfloat16, __nv_bfloat16>(800);
}
TEST(ResidualLayerNormEmu, F16WeightF16) {
  run_residual_all<__half, __half>(900);
}

}  // namespace
}  // namespace mh::cuda
