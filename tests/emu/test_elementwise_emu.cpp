// The elementwise kernels of the CUDA backend (src/backend/cuda/kernels/elementwise_kernels.cuh),
// run on the CPU through the SIMT emulation (simt_emu.h) with the launchers' own grids, against
// CpuBackend in F32 on the same dtype-rounded random inputs: the cases of the GPU test
// (tests/cuda/test_kernels_a.cpp) at sizes the emulation runs quickly. Odd sizes and buffers
// misaligned by one element cover the vector packs, the scalar tail and the scalar-only path; "="
// outputs are poisoned with NaN first, "+=" outputs start from random values.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <utility>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/elementwise_kernels.cuh"
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

// fn(Tag<T>{}) for T = F32, BF16, F16.
template <typename Fn>
void for_each_dtype(Fn&& fn) {
  fn(Tag<float>{});
  fn(Tag<__nv_bfloat16>{});
  fn(Tag<__half>{});
}

// What the launchers do (elementwise.cu ew_launch): ew_map_kernel over n on ew_grid(n, vec), or on
// `grid` blocks when given (a small grid that makes the grid-stride loop go round).
template <typename Op>
void run_map(const Op& op, int64_t n, bool vec, unsigned grid = 0) {
  if (n == 0) return;
  emu::launch({grid ? grid : ew_grid(n, vec)}, {kEwThreads},
              [&] { ew_map_kernel<Op>(op, n, vec); });
}

constexpr int kSms = 132;  // an H100's multiprocessors, for bias_grad's chunking

class ElementwiseEmu : public ::testing::Test {
 protected:
  CpuBackend cpu;
  std::mt19937 rng{20240611};
};

TEST_F(ElementwiseEmu, AddBias) {
  for_each_dtype([&](auto tag) {
    using T = typename decltype(tag)::type;
    auto run = [&](auto btag) {
      using B = typename decltype(btag)::type;
      for (int64_t f : {203, 132})
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message() << dtype_name(emu_test::dtype_t<T>()) << " bias "
                                            << dtype_name(emu_test::dtype_t<B>()) << " F=" << f
                                            << " misaligned=" << mis);
          const int64_t n = 5;
          const Vec y0 = random_values<T>(rng, n * f), b = random_values<B>(rng, f);
          Tensor ref = host(y0, {n, f});
          cpu.add_bias(ref, host(b, {f}));
          Buf<T> y(y0, mis);
          const Buf<B> bias(b);
          const bool vec = f % kEwVec == 0 && ew_aligned(y.p(), kEwVec * sizeof(T));
          EXPECT_EQ(vec, f == 132 && !mis);
          run_map(AddBiasOp<T, B>{y.p(), bias.p(), f}, n * f, vec);
          EXPECT_CLOSE(y.values(), values(ref), emu_test::dtype_t<T>());
        }
    };
    run(Tag<float>{});
    if constexpr (!std::is_same_v<T, float>) run(Tag<T>{});
  });
}

TEST_F(ElementwiseEmu, BiasGrad) {
  for_each_dtype([&](auto tag) {
    using T = typename decltype(tag)::type;
    auto run = [&](auto gtag) {
      using G = typename decltype(gtag)::type;
      constexpr bool f32 = std::is_same_v<G, float>;
      // By columns: odd F, or a BF16/F16 dbias. By rows (F32 dbias): one block (1 x 100, 3 x 2048
      // with a warp without rows), several with atomics (50 x 132, 12 x 2048: the widest rows;
      // 30 x 4: one chunk per row).
      for (auto [n, f] : {std::pair<int64_t, int64_t>{37, 203},
                          {300, 67},
                          {1, 100},
                          {50, 132},
                          {3, 2048},
                          {12, 2048},
                          {30, 4}}) {
        const BiasGradGrid bg = bias_grad_grid(n, f, f32, kSms);
        SCOPED_TRACE(::testing::Message()
                     << dtype_name(emu_test::dtype_t<T>()) << " dbias "
                     << dtype_name(emu_test::dtype_t<G>()) << " N=" << n << " F=" << f << " grid "
                     << bg.col_blocks << "x" << bg.chunks);
        if (!f32) {
          EXPECT_EQ(bg.chunks, 1);
        }
        const Vec dy = random_values<T>(rng, n * f), db0 = random_values<G>(rng, f);
        Tensor ref = host(db0, {f});
        cpu.bias_grad(host(dy, {n, f}), ref);
        const Buf<T> g(dy);
        Buf<G> db(db0);
        // The launcher's choice: by rows (F32 dbias, F % 4 == 0, F ≤ 2048), else by columns.
        const BiasGradRows rows =
            bias_grad_rows_plan(n, f, f32, ew_aligned(g.p(), kEwVec * sizeof(T)), kSms);
        EXPECT_EQ(rows.use, f32 && f % 4 == 0 && f <= 2048);
        if constexpr (f32) {
          if (rows.use) {
            emu::launch({rows.blocks}, {32 * kBgRowWarps},
                        [&] { bias_grad_rows_kernel<T>(g.p(), db.p(), n, f); });
            EXPECT_CLOSE(db.values(), values(ref), DType::f32);
            // Fewer blocks than the launcher's (a GPU with fewer SMs, or more rows): each warp
            // then walks several rows.
            Buf<G> db2(db0);
            emu::launch({std::min(rows.blocks, 2u)}, {32 * kBgRowWarps},
                        [&] { bias_grad_rows_kernel<T>(g.p(), db2.p(), n, f); });
            EXPECT_CLOSE(db2.values(), values(ref), DType::f32) << "2 blocks";
            continue;
          }
        }
        emu::launch({static_cast<unsigned>(bg.col_blocks), static_cast<unsigned>(bg.chunks)},
                    {kBgCols, kBgRows},
                    [&] { bias_grad_kernel<T, G>(g.p(), db.p(), n, f, bg.rows_per_chunk); });
        EXPECT_CLOSE(db.values(), values(ref), f32 ? DType::f32 : emu_test::dtype_t<T>());
      }
    };
    run(Tag<float>{});
    if constexpr (!std::is_same_v<T, float>) run(Tag<T>{});
  });
}

TEST_F(ElementwiseEmu, AddAndAliasedAdd) {
  for_each_dtype([&](auto tag) {
    using T = typename decltype(tag)::type;
    for (bool mis : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << dtype_name(emu_test::dtype_t<T>()) << " misaligned=" << mis);
      const int64_t n = 1001;
      const Vec a = random_values<T>(rng, n), b = random_values<T>(rng, n);
      Tensor ref = host(Vec(n, 0.f), {n});
      cpu.add(host(a, {n}), host(b, {n}), ref);
      Buf<T> ga(a, mis), out(n, mis);
      const Buf<T> gb(b, mis);
      out.poison();
      const size_t al = kEwVec * sizeof(T);
      const bool vec = ew_aligned(ga.p(), al) && ew_aligned(gb.p(), al) && ew_aligned(out.p(), al);
      run_map(AddOp<T>{ga.p(), gb.p(), out.p()}, n, vec);
      EXPECT_CLOSE(out.values(), values(ref), emu_test::dtype_t<T>());
      run_map(AddOp<T>{ga.p(), gb.p(), ga.p()}, n, vec);  // out aliases a
      EXPECT_CLOSE(ga.values(), values(ref), emu_test::dtype_t<T>());
    }
  });
}

TEST_F(ElementwiseEmu, Scale) {
  for_each_dtype([&](auto tag) {
    using T = typename decltype(tag)::type;
    for (bool mis : {false, true})
      for (unsigned grid : {0u, 1u}) {  // the launcher's grid; one block, striding
        SCOPED_TRACE(::testing::Message() << dtype_name(emu_test::dtype_t<T>())
                                          << " misaligned=" << mis << " grid=" << grid);
        const int64_t n = 1003;
        const Vec x = random_values<T>(rng, n);
        Tensor ref = host(x, {n});
        cpu.scale(ref, -0.37);
        Buf<T> gx(x, mis);
        run_map(ScaleOp<T>{gx.p(), static_cast<float>(-0.37)}, n,
                ew_aligned(gx.p(), kEwVec * sizeof(T)), grid);
        EXPECT_CLOSE(gx.values(), values(ref), emu_test::dtype_t<T>());
      }
  });
}

// Every pair of distinct dtypes (the launcher copies bytes when they are equal); RN rounding, so
// the result must equal the host's conversion exactly.
TEST_F(ElementwiseEmu, CastEveryPair) {
  for_each_dtype([&](auto stag) {
    using S = typename decltype(stag)::type;
    for_each_dtype([&](auto dtag) {
      using D = typename decltype(dtag)::type;
      if constexpr (!std::is_same_v<S, D>) {
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << dtype_name(emu_test::dtype_t<S>()) << " -> "
                       << dtype_name(emu_test::dtype_t<D>()) << " misaligned=" << mis);
          const int64_t n = 1027;
          const Vec x = random_values<S>(rng, n);
          Vec ref(x.size());
          for (size_t i = 0; i < x.size(); ++i) ref[i] = emu_test::round_t<D>(x[i]);
          const Buf<S> src(x, mis);
          Buf<D> dst(n, mis);
          dst.poison();
          run_map(
              CastOp<S, D>{src.p(), dst.p()}, n,
              ew_aligned(src.p(), kEwVec * sizeof(S)) && ew_aligned(dst.p(), kEwVec * sizeof(D)));
          EXPECT_EQ(emu_test::rel_err(dst.values(), ref), 0.0);
        }
      }
    });
  });
}

TEST_F(ElementwiseEmu, Activations) {
  for_each_dtype([&](auto tag) {
    using T = typename decltype(tag)::type;
    for (ActKind kind : {ActKind::relu, ActKind::gelu})
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_name(emu_test::dtype_t<T>())
                     << (kind == ActKind::relu ? " relu" : " gelu") << " misaligned=" << mis);
        const int64_t n = 2053;
        const Vec x = random_values<T>(rng, n, 0.01f, 4.f), dy = random_values<T>(rng, n);
        Tensor ref_y = host(Vec(n, 0.f), {n}), ref_dx = host(Vec(n, 0.f), {n});
        cpu.activation_fwd(kind, host(x, {n}), ref_y);
        cpu.activation_bwd(kind, host(dy, {n}), host(x, {n}), ref_dx);
        const Buf<T> gx(x, mis), gdy(dy, mis);
        Buf<T> y(n, mis), dx(n, mis);
        y.poison();
        dx.poison();
        const size_t al = kEwVec * sizeof(T);
        const bool gelu = kind == ActKind::gelu;
        run_map(ActFwdOp<T>{gx.p(), y.p(), gelu}, n,
                ew_aligned(gx.p(), al) && ew_aligned(y.p(), al));
        run_map(ActBwdOp<T>{gdy.p(), gx.p(), dx.p(), gelu}, n,
                ew_aligned(gdy.p(), al) && ew_aligned(gx.p(), al) && ew_aligned(dx.p(), al));
        EXPECT_CLOSE(y.values(), values(ref_y), emu_test::dtype_t<T>());
        EXPECT_CLOSE(dx.values(), values(ref_dx), emu_test::dtype_t<T>());
      }
  });
}

}  // namespace
}  // namespace mh::cuda
