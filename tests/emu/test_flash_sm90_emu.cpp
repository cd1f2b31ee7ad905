// The Hopper attention forward (flash_fwd_sm90_kernel.cuh) run on the CPU through the host
// emulation of wgmma, mbarrier and TMA (flash_sm90_emu.h), against CpuBackend in float64 on the
// same bf16/fp16-rounded random inputs; in some cases the sm_80 backward (flash_bwd_kernel.cuh,
// emulated by flash_emu.h) then runs on the lse this forward wrote. Outputs are poisoned (NaN)
// before each run, and in padded batches the K and V rows past a sequence's keys are NaN, so
// unwritten outputs and unmasked keys fail.
//
// The emulator is itself tested first (Sm90EmuIsa.*) against layouts as the PTX ISA states them,
// restated here independently of flash_sm90_emu.h's code: the 128B swizzle ("16-byte chunk c of
// row r of a 1024-byte atom at chunk c ^ (r % 8)"), the wgmma D fragment, the register A
// fragment, MN-major B, TMA out-of-bounds fill and mbarrier phases.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/attention/flash_bwd_kernel.cuh"
#include "backend/cuda/attention/flash_fwd_sm90_kernel.cuh"
#include "flash_case.h"

namespace mh::cuda::flash {
namespace {

// --- the emulator against the ISA ----------------------------------------------------------------

// Byte offset of element (r, c) of a [rows][64] 16-bit tile written with the 128B swizzle at a
// 1024-byte aligned base: rows of 128 bytes, 16-byte chunk c / 8 stored at chunk (c / 8) ^ (r % 8).
int sw128_offset(int r, int c) {
  return r * 128 + (((c / 8) ^ (r % 8)) * 16) + (c % 8) * 2;
}

uint16_t bits_of(__half x) {
  uint16_t u;
  std::memcpy(&u, &x, 2);
  return u;
}

// A (64 × 16) K-major and B K-major (N × 16, as [n][k]): A[r][0] = r, A[r][1] = 1, B[n][0] = 1,
// B[n][1] = 64n, everything else 0: D[r][n] = r + 64n, exact in fp16/fp32, naming its position.
// Each thread checks its d[i] against the ISA's D fragment: row 16·warp + lane / 4 + 8·((i / 2) %
// 2), column 8·(i / 4) + 2·(lane % 4) + i % 2.
TEST(Sm90EmuIsa, WgmmaKMajorDFragment) {
  constexpr int N = 128;
  const int a_base = 0, b_base = 64 * 128;  // A: 8 KiB, B: 16 KiB, both 1024-aligned
  std::atomic<int> bad{0};
  emu_launch(1, 1, 1, 128, b_base + N * 128, [&] {
    unsigned char* smem = emu_block_smem();
    const int t = thread_x();
    if (t == 0) {
      std::memset(smem, 0, b_base + N * 128);
      for (int r = 0; r < 64; ++r) {
        uint16_t v0 = bits_of(__float2half(static_cast<float>(r))), v1 = bits_of(__float2half(1.f));
        std::memcpy(smem + a_base + sw128_offset(r, 0), &v0, 2);
        std::memcpy(smem + a_base + sw128_offset(r, 1), &v1, 2);
      }
      for (int n = 0; n < N; ++n) {
        uint16_t v0 = bits_of(__float2half(1.f)), v1 = bits_of(__float2half(64.f * n));
        std::memcpy(smem + b_base + sw128_offset(n, 0), &v0, 2);
        std::memcpy(smem + b_base + sw128_offset(n, 1), &v1, 2);
      }
    }
    block_sync();
    float d[N / 2];
    for (float& x : d) x = 1e9f;  // scale_d = 0 must ignore it
    wgmma_fence();
    wgmma_ss<__half, N, 0>(d, smem_desc_sw128(a_base, 16, 1024), smem_desc_sw128(b_base, 16, 1024),
                           0);
    wgmma_commit();
    wgmma_wait<0>();
    const int warp = t / 32, lane = t % 32;
    for (int i = 0; i < N / 2; ++i) {
      const int row = 16 * warp + lane / 4 + 8 * ((i / 2) % 2);
      const int col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
      if (d[i] != static_cast<float>(row + 64 * col)) ++bad;
    }
  });
  EXPECT_EQ(bad.load(), 0);
}

// A from registers (the m16n8k16 A layout per warp: a0 = (g, 2q..2q+1), a1 = (g + 8, 2q..),
// a2 = (g, 2q+8..), a3 = (g + 8, 2q+8..), low half first) and B MN-major ([k][n] row-major, n
// contiguous) in two 64-column blocks LBO apart; k16 steps advance 16 rows. A[r][k] = (k == r %
// 16), B[k][n] = k + 16n: D[r][n] = r % 16 + 16n. Also: accumulation across two wgmma (scale_d =
// 1).
TEST(Sm90EmuIsa, WgmmaRegisterAMnMajorB) {
  constexpr int N = 128, K = 32;
  const int blk = K * 128;  // one [K][64] column block
  std::atomic<int> bad{0};
  emu_launch(1, 1, 1, 128, 2 * blk, [&] {
    unsigned char* smem = emu_block_smem();
    const int t = thread_x(), warp = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
    if (t == 0)
      for (int k = 0; k < K; ++k)
        for (int n = 0; n < N; ++n) {
          const uint16_t v = bits_of(__float2half(static_cast<float>(k % 16 + 16 * n)));
          std::memcpy(smem + (n / 64) * blk + sw128_offset(k, n % 64), &v, 2);
        }
    block_sync();
    auto a_val = [&](int r, int k) { return (k == r % 16) ? 0.5f : 0.f; };  // two steps: 2 · 0.5
    uint32_t a[4];
    const int r0 = 16 * warp + g, r1 = r0 + 8;
    a[0] = pack2<__half>(a_val(r0, 2 * q), a_val(r0, 2 * q + 1));
    a[1] = pack2<__half>(a_val(r1, 2 * q), a_val(r1, 2 * q + 1));
    a[2] = pack2<__half>(a_val(r0, 2 * q + 8), a_val(r0, 2 * q + 9));
    a[3] = pack2<__half>(a_val(r1, 2 * q + 8), a_val(r1, 2 * q + 9));
    float d[N / 2] = {};
    wgmma_fence();
    for (int kk = 0; kk < K / 16; ++kk)
      wgmma_rs<__half, N, 1>(d, a, smem_desc_sw128(kk * 16 * 128, blk, 1024), 1);
    wgmma_commit();
    wgmma_wait<0>();
    for (int i = 0; i < N / 2; ++i) {
      const int row = 16 * warp + g + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * q + i % 2;
      // Step kk reads keys 16kk..16kk+15, whose B values are k % 16 + 16n: the same for both.
      if (d[i] != static_cast<float>(row % 16 + 16 * col)) ++bad;
    }
  });
  EXPECT_EQ(bad.load(), 0);
}

// TMA: a 4-D box past the tensor's last row lands swizzled, out-of-bound rows as zeros, and its
// bytes (out-of-bound ones included) complete the barrier's transaction count.
TEST(Sm90EmuIsa, TmaBoxSwizzleAndZeroFill) {
  const int rows = 10, heads = 2, d = 128;
  std::vector<__half> g(static_cast<size_t>(rows * heads * d));
  for (size_t i = 0; i < g.size(); ++i) g[i] = __float2half(static_cast<float>(i % 2000));
  const TmaSpec spec = token_tma_spec(g.data(), rows, heads, d, 8);
  std::atomic<int> bad{0};
  emu_launch(1, 1, 1, 1, 1024 + 8 * 128 + 64, [&] {
    unsigned char* smem = emu_block_smem();
    auto* bar = reinterpret_cast<uint64_t*>(smem + 1024 + 8 * 128);
    mbar_init(bar, 1);
    mbar_arrive_expect_tx(bar, 8 * 128);
    {  // not complete yet: 1024 bytes pending
      emu::Sm90Block& B = emu::sm90_block();
      std::lock_guard<std::mutex> lock(B.mu);
      if (emu::mbar_of(B, bar).phase != 0) ++bad;
    }
    // Head 1, column block 1, rows 6..13 of a 10-row tensor: rows 10..13 are out of bounds.
    tma_load_4d(smem + 1024, &spec, 0, 1, 1, 6, bar);
    mbar_wait(bar, 0);
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 64; ++c) {
        __half got;
        std::memcpy(&got, smem + 1024 + sw128_offset(r, c), 2);
        const float want = 6 + r < rows ? __half2float(g[((6 + r) * heads + 1) * d + 64 + c]) : 0.f;
        if (__half2float(got) != want) ++bad;
      }
  });
  EXPECT_EQ(bad.load(), 0);
}

// mbarrier phases: a fresh barrier's parity-1 wait passes; parity 0 needs every arrival.
TEST(Sm90EmuIsa, MbarrierParity) {
  std::atomic<int> order{0}, bad{0};
  emu_launch(1, 1, 1, 64, 1024, [&] {
    auto* bar = reinterpret_cast<uint64_t*>(emu_block_smem());
    if (thread_x() == 0) mbar_init(bar, 2);
    block_sync();
    mbar_wait(bar, 1);  // the "previous" phase counts as complete
    block_sync();       // (everyone past it before phase 0 can complete)
    if (thread_x() == 0) {
      order = 1;
      mbar_arrive(bar);
    }
    if (thread_x() == 33) {
      while (order.load() != 1) std::this_thread::yield();
      order = 2;
      mbar_arrive(bar);
    }
    mbar_wait(bar, 0);
    if (order.load() != 2) ++bad;  // nobody passes before both arrivals
  });
  EXPECT_EQ(bad.load(), 0);
}

// --- the kernel against CpuBackend ---------------------------------------------------------------

template <typename T, int D, int BN = 64, int NWG = 1>
void run_case(const Spec& s, uint64_t seed) {
  SCOPED_TRACE(::testing::Message()
               << s.name << " D=" << D << (std::is_same_v<T, __half> ? " fp16" : " bf16")
               << " BN=" << BN << " warpgroups=" << NWG);
  using C = Sm90Fwd<T, D, BN, NWG>;
  FlashCase<T, D> c(s, seed);
  const int B = c.B, H = c.H, max_q = c.max_q, max_k = c.max_k;
  const int64_t row = c.row;

  // The reference sees only valid rows (zeros elsewhere); the kernel's padding keys become NaN.
  std::vector<int> k_valid(B);
  for (int b = 0; b < B; ++b) k_valid[b] = std::min(s.len_k[b], max_k);
  Tensor q64 = c.padded(c.q, c.cu_q, c.q_rows, max_q), k64 = c.padded(c.k, c.cu_k, k_valid, max_k);
  Tensor v64 = c.padded(c.v, c.cu_k, k_valid, max_k),
         do64 = c.padded(c.dout, c.cu_q, c.q_rows, max_q);
  const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
  if (!s.packed) {
    for (int b = 0; b < B; ++b)
      for (int i = k_valid[b]; i < max_k; ++i)
        for (int64_t e = 0; e < row; ++e) {
          c.k[static_cast<size_t>((c.cu_k[b] + i) * row + e)] = nan_t;
          c.v[static_cast<size_t>((c.cu_k[b] + i) * row + e)] = nan_t;
        }
  }
  CpuBackend cpu;
  Tensor o64 = Tensor::empty(q64.shape(), DType::f64);
  AttnSaved saved;
  cpu.attention_fwd(c.args, q64, k64, v64, o64, saved);

  std::vector<T> o(c.q.size(), nan_t);
  std::vector<float> lse(static_cast<size_t>(H * c.total_q),
                         std::numeric_limits<float>::quiet_NaN());
  const Sm90FwdParams<T> fp = sm90_fwd_params<T, D, BN, NWG>(
      c.pr, AttnFwdIO{c.q.data(), c.k.data(), c.v.data(), o.data(), lse.data()},
      [](const TmaSpec& t) { return t; });
  emu_launch((max_q + C::kBM - 1) / C::kBM, H, B, C::kThreads, C::kSmemBytes,
             [&] { flash_fwd_sm90_kernel<T, D, BN, NWG>(fp); });

  EXPECT_LE(c.err(o, o64, c.cu_q, c.q_rows, max_q), 1e-2) << "O";

  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < c.q_rows[b]; ++i) {
        int n = k_valid[b];
        if (s.causal) n = std::min(n, i + 1);
        const double want_lse = c.ref_lse(q64, k64, b, h, i, n);
        const float got_lse = lse[h * c.total_q + c.cu_q[b] + i];
        if (n == 0)
          ASSERT_EQ(got_lse, INFINITY) << "b=" << b << " h=" << h << " i=" << i;
        else
          ASSERT_NEAR(got_lse, want_lse, 2e-2 * (1 + std::abs(want_lse)))
              << "b=" << b << " h=" << h << " i=" << i;
      }

  if (!s.backward) return;
  // The sm_80 backward, unchanged, on this forward's O and lse.
  Tensor dq64 = Tensor::empty(q64.shape(), DType::f64),
         dk64 = Tensor::empty(k64.shape(), DType::f64),
         dv64 = Tensor::empty(k64.shape(), DType::f64);
  cpu.attention_bwd(c.args, do64, q64, k64, v64, saved, dq64, dk64, dv64);
  std::vector<T> dq, dk, dv;
  c.run_backward(o, lse, dq, dk, dv);
  EXPECT_LE(c.err(dq, dq64, c.cu_q, c.q_rows, max_q), 1e-2) << "dQ";
  EXPECT_LE(c.err(dk, dk64, c.cu_k, k_valid, max_k), 1e-2) << "dK";
  EXPECT_LE(c.err(dv, dv64, c.cu_k, k_valid, max_k), 1e-2) << "dV";
}
TEST(FlashSm90Emu, PaddedKeyMask) {
  // Lk = 70: two key tiles, the second partial (its V rows zeroed); 1 key; no key at all.
  run_case<__nv_bfloat16, 64>({"padded", 2, {70, 70, 70, 70}, {70, 33, 1, 0}}, 1);
}

TEST(FlashSm90Emu, CausalAcrossTiles) {
  run_case<__nv_bfloat16, 64>({"causal", 1, {130, 130}, {130, 97}, true}, 2);
}

TEST(FlashSm90Emu, CrossAttentionLqNeLk) {
  run_case<__half, 64>({"cross", 1, {37, 37}, {129, 64}}, 3);
  run_case<__nv_bfloat16, 64>({"causal Lq>Lk", 1, {70}, {20}, true}, 5);
}

TEST(FlashSm90Emu, HeadDim128) {
  run_case<__nv_bfloat16, 128>({"d128", 1, {65, 65}, {65, 7}, true}, 6);
  run_case<__half, 128>({"d128 cross", 1, {33}, {100}}, 7);
}

TEST(FlashSm90Emu, Dropout) {
  // The kept elements must be CpuBackend's (the same Philox bits as the sm_80 kernels).
  run_case<__nv_bfloat16, 64>({"dropout", 1, {67, 67}, {67, 40}, true, 0.3f}, 8);
  run_case<__half, 128>({"dropout d128", 1, {40}, {70}, false, 0.5f}, 9);
}

TEST(FlashSm90Emu, PackedVariableLength) {
  // Sentences back to back: TMA boxes run into the next sentence (masked) or past the tensor's
  // end (zero-filled).
  run_case<__nv_bfloat16, 64>({"packed", 1, {7, 65, 1, 40}, {7, 65, 1, 40}, false, 0, true}, 10);
  run_case<__half, 64>({"packed causal", 1, {129, 3, 100}, {129, 3, 100}, true, 0, true}, 11);
  run_case<__nv_bfloat16, 64>({"packed cross dropout", 1, {9, 30}, {70, 5}, false, 0.2f, true}, 12);
}

TEST(FlashSm90Emu, LauncherTilesAndSm80Backward) {
  // The tiles the launcher instantiates (two consumer warpgroups, BN 64), then the unchanged
  // sm_80 backward on the lse this forward wrote.
  run_case<__nv_bfloat16, 64, 64, 2>(
      {"launcher tiles d64", 1, {129, 7}, {65, 129}, true, 0.1f, false, true}, 13);
  run_case<__half, 128, 64, 2>({"launcher tiles d128", 1, {1, 65}, {7, 65}, false, 0, true, true},
                               14);
}

TEST(FlashSm90Emu, KeyTile128) {
  run_case<__nv_bfloat16, 64, 128>({"BN 128", 1, {70, 20}, {150, 129}, true}, 15);
}

}  // namespace
}  // namespace mh::cuda::flash
