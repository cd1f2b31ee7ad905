// The Hopper attention kernels (flash_fwd_sm90_kernel.cuh, flash_bwd_sm90_kernel.cuh) run on the
// CPU through the host emulation of wgmma, mbarrier, TMA and stmatrix (flash_sm90_emu.h), against
// CpuBackend in float64 on the same bf16/fp16-rounded random inputs: the forward, and in the cases
// with Spec::backward both backwards (the sm_80 one, flash_bwd_kernel.cuh, and the Hopper one) on
// the lse this forward wrote. Outputs are poisoned (NaN) before each run, and in padded batches
// the K and V rows past a sequence's keys are NaN, so unwritten outputs and unmasked keys fail.
//
// The emulator is itself tested first (Sm90EmuIsa.*) against layouts as the PTX ISA states them,
// restated here independently of flash_sm90_emu.h's code: the 128B swizzle ("16-byte chunk c of
// row r of a 1024-byte atom at chunk c ^ (r % 8)"), the wgmma D fragment, the register A
// fragment, MN-major B, TMA out-of-bounds fill, stmatrix against ldmatrix, and mbarrier phases.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/attention/flash_bwd_kernel.cuh"
#include "backend/cuda/attention/flash_bwd_sm90_kernel.cuh"
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

template <typename T>
uint16_t bits_of(T x) {
  static_assert(sizeof(T) == 2);
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

// stmatrix .trans is the inverse of ldmatrix .trans (the PTX ISA defines both on the same
// fragment layout; flash_emu.h's ldmatrix has run against a GPU through the sm_80 kernels): four
// 8 × 8 matrices stored transposed and loaded back transposed come back as they were, and the
// stored rows are the fragments' columns.
TEST(Sm90EmuIsa, StmatrixTransInvertsLdmatrixTrans) {
  std::atomic<int> bad{0};
  emu_launch(1, 1, 1, 32, 4 * 8 * 16, [&] {
    unsigned char* smem = emu_block_smem();
    const int l = thread_x();
    uint32_t r[4], back[4];
    // Fragment (row l / 4, cols 2·(l % 4), +1) of matrix m holds 64m + 8·row + col.
    for (int m = 0; m < 4; ++m) {
      const int row = l / 4, col = 2 * (l % 4);
      r[m] = bits_of(__float2half(static_cast<float>(64 * m + 8 * row + col))) |
             (static_cast<uint32_t>(
                  bits_of(__float2half(static_cast<float>(64 * m + 8 * row + col + 1))))
              << 16);
    }
    // Lane 8m + x: row x of stored matrix m, 16 bytes at (8m + x)·16.
    stmatrix_x4_trans(r, smem + l * 16);
    fence_proxy_async();
    block_sync();
    for (int m = 0; m < 4; ++m)
      for (int x = 0; x < 8; ++x)
        for (int e = 0; e < 8; ++e) {  // stored (row x, col e) = fragment (row e, col x)
          __half got;
          std::memcpy(&got, smem + (8 * m + x) * 16 + 2 * e, 2);
          if (l == 0 && __half2float(got) != static_cast<float>(64 * m + 8 * e + x)) ++bad;
        }
    ldsm_x4_trans(back, smem + l * 16);
    for (int m = 0; m < 4; ++m)
      if (back[m] != r[m]) ++bad;
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

// --- the kernels against CpuBackend --------------------------------------------------------------

// The Hopper backward (flash_bwd_sm90_kernel) on the forward's O and lse, with D and the dQ
// conversion as flash_bwd.cu's small kernels compute them; dq, dk, dv start poisoned.
// The Hopper backward as its launcher runs it: dQ stored directly where every sequence fits one
// key block (sm90_bwd_dq_direct; dQ zeroed first, as the prologue does), else added into a zeroed
// fp32 accumulator and rounded afterwards. accumulate = true forces the accumulator; bulk adds
// into it by bulk reductions (MH_HOPPER_BWD_DQ=bulk) instead of atomics.
template <typename T, int D>
void run_sm90_backward(FlashCase<T, D>& c, std::vector<T>& o, std::vector<float>& lse,
                       std::vector<T>& dq, std::vector<T>& dk, std::vector<T>& dv,
                       bool accumulate = false, bool bulk = false) {
  using C = Sm90Bwd<T, D>;
  const bool direct = !accumulate && sm90_bwd_dq_direct(c.pr);
  // Past the accumulator's rows, 128 rows of -0.0: a write past the last row (of a partial
  // query step) shows, even one adding +0.0.
  const size_t canary = direct ? 0 : static_cast<size_t>(128 * c.row);
  std::vector<float> dsum = c.row_dsum(o), dq_acc(direct ? 0 : c.q.size() + canary, 0.f);
  std::fill(dq_acc.end() - static_cast<std::ptrdiff_t>(canary), dq_acc.end(), -0.f);
  const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
  dq.assign(c.q.size(), direct ? round_to<T>(0.f) : nan_t);
  dk.assign(c.k.size(), nan_t);
  dv.assign(c.k.size(), nan_t);
  const Sm90BwdParams<T> bp =
      sm90_bwd_params<T, D>(c.pr,
                            AttnBwdIO{c.q.data(), c.k.data(), c.v.data(), o.data(), c.dout.data(),
                                      lse.data(), dq.data(), dk.data(), dv.data()},
                            direct ? nullptr : dq_acc.data(), dsum.data(), direct, bulk,
                            [](const TmaSpec& t) { return t; });
  const int grid_x = (c.max_k + C::kBN - 1) / C::kBN;
  // The launcher's shared memory: without dq_bulk, none for the dQ buffer (the last region).
  const int smem = bp.dq_bulk ? C::kSmemBytes : C::kSmemBytes - C::kDqBytes;
  if (c.pr.dropout > 0)
    emu_launch(grid_x, c.H, c.B, C::kThreads, smem, [&] { flash_bwd_sm90_kernel<T, D, true>(bp); });
  else
    emu_launch(grid_x, c.H, c.B, C::kThreads, smem,
               [&] { flash_bwd_sm90_kernel<T, D, false>(bp); });
  if (!direct)
    for (size_t i = 0; i < dq.size(); ++i) dq[i] = round_to<T>(dq_acc[i]);
  for (size_t i = dq_acc.size() - canary; i < dq_acc.size(); ++i)
    ASSERT_TRUE(std::signbit(dq_acc[i]) && dq_acc[i] == 0.f)
        << "dQ accumulator written past its last row, " << i - c.q.size() << " elements past";
}

// Consumer warpgroup `wg` runs late (flash_sm90_emu.h's delayed_warpgroup) while this lives.
struct DelayedWarpgroup {
  explicit DelayedWarpgroup(int wg) { emu::delayed_warpgroup = wg; }
  ~DelayedWarpgroup() { emu::delayed_warpgroup = -1; }
  DelayedWarpgroup(const DelayedWarpgroup&) = delete;
  DelayedWarpgroup& operator=(const DelayedWarpgroup&) = delete;
};

// Two runs' gradients bit for bit (`a` and `b` name the runs in the message).
template <typename T>
void expect_same_gradients(const std::vector<T>& dq1, const std::vector<T>& dk1,
                           const std::vector<T>& dv1, const std::vector<T>& dq2,
                           const std::vector<T>& dk2, const std::vector<T>& dv2, const char* a,
                           const char* b) {
  for (size_t i = 0; i < dq1.size(); ++i)
    ASSERT_EQ(bits_of(dq1[i]), bits_of(dq2[i]))
        << "dQ[" << i << "]: " << a << " " << to_f(dq1[i]) << ", " << b << " " << to_f(dq2[i]);
  for (size_t i = 0; i < dk1.size(); ++i) {
    ASSERT_EQ(bits_of(dk1[i]), bits_of(dk2[i])) << "dK[" << i << "]";
    ASSERT_EQ(bits_of(dv1[i]), bits_of(dv2[i])) << "dV[" << i << "]";
  }
}

// The Hopper forward into o and lse (sized, and poisoned as the caller wants), as its launcher runs
// it.
template <typename T, int D, int BN = 64, int NWG = 2, bool OVL = false>
void run_sm90_forward(FlashCase<T, D>& c, std::vector<T>& o, std::vector<float>& lse) {
  using C = Sm90Fwd<T, D, BN, NWG, OVL>;
  const Sm90FwdParams<T> fp = sm90_fwd_params<T, D, BN, NWG, OVL>(
      c.pr, AttnFwdIO{c.q.data(), c.k.data(), c.v.data(), o.data(), lse.data()},
      [](const TmaSpec& t) { return t; });
  emu_launch((c.max_q + C::kBM - 1) / C::kBM, c.H, c.B, C::kThreads, C::kSmemBytes,
             [&] { flash_fwd_sm90_kernel<T, D, BN, NWG, OVL>(fp); });
}

// bulk_dq: the Hopper backward adds dQ up by bulk reductions (MH_HOPPER_BWD_DQ=bulk).
template <typename T, int D, int BN = 64, int NWG = 1, bool OVL = false>
void run_case(const Spec& s, uint64_t seed, bool bulk_dq = false) {
  SCOPED_TRACE(::testing::Message()
               << s.name << " D=" << D << (std::is_same_v<T, __half> ? " fp16" : " bf16")
               << " BN=" << BN << " warpgroups=" << NWG << (OVL ? " overlapped" : "")
               << (bulk_dq ? " bulk dQ" : ""));
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
  run_sm90_forward<T, D, BN, NWG, OVL>(c, o, lse);

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
  // Both backwards on this forward's O and lse: the sm_80 one (custom's) and the Hopper one.
  Tensor dq64 = Tensor::empty(q64.shape(), DType::f64),
         dk64 = Tensor::empty(k64.shape(), DType::f64),
         dv64 = Tensor::empty(k64.shape(), DType::f64);
  cpu.attention_bwd(c.args, do64, q64, k64, v64, saved, dq64, dk64, dv64);
  std::vector<T> dq, dk, dv;
  c.run_backward(o, lse, dq, dk, dv);
  EXPECT_LE(c.err(dq, dq64, c.cu_q, c.q_rows, max_q), 1e-2) << "dQ (sm_80 backward)";
  EXPECT_LE(c.err(dk, dk64, c.cu_k, k_valid, max_k), 1e-2) << "dK (sm_80 backward)";
  EXPECT_LE(c.err(dv, dv64, c.cu_k, k_valid, max_k), 1e-2) << "dV (sm_80 backward)";
  std::vector<T> dq9, dk9, dv9;
  run_sm90_backward(c, o, lse, dq9, dk9, dv9, false, bulk_dq);
  EXPECT_LE(c.err(dq9, dq64, c.cu_q, c.q_rows, max_q), 1e-2) << "dQ (Hopper backward)";
  EXPECT_LE(c.err(dk9, dk64, c.cu_k, k_valid, max_k), 1e-2) << "dK (Hopper backward)";
  EXPECT_LE(c.err(dv9, dv64, c.cu_k, k_valid, max_k), 1e-2) << "dV (Hopper backward)";
  // Padded batches: the key rows past key_len belong to the sequence and get dK = dV = 0.
  if (!s.packed)
    for (int b = 0; b < B; ++b)
      for (int i = k_valid[b]; i < max_k; ++i)
        for (int64_t e = 0; e < row; ++e) {
          const size_t at = static_cast<size_t>((c.cu_k[b] + i) * row + e);
          ASSERT_EQ(to_f(dk9[at]), 0.f) << "dK of padding key b=" << b << " i=" << i;
          ASSERT_EQ(to_f(dv9[at]), 0.f) << "dV of padding key b=" << b << " i=" << i;
        }
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
  // The tiles the launcher instantiates (two consumer warpgroups, BN 64), then both backwards
  // (the sm_80 one and the Hopper one) on the lse this forward wrote.
  run_case<__nv_bfloat16, 64, 64, 2>(
      {"launcher tiles d64", 1, {129, 7}, {65, 129}, true, 0.1f, false, true}, 13);
  run_case<__half, 128, 64, 2>({"launcher tiles d128", 1, {1, 65}, {7, 65}, false, 0, true, true},
                               14);
}

// The Hopper backward's own cases (run_case runs it whenever Spec::backward is set): several query
// steps per key block (the 2-stage ring and the two dS buffers wrap around: 128 queries per step
// at head_dim 64, 64 at 128), key blocks of 128 with a partial last one, padding keys (NaN in K
// and V) in blocks with and without a valid key, causal blocks no query sees.
TEST(FlashSm90Emu, HopperBackwardSteps) {
  run_case<__nv_bfloat16, 64, 64, 2>(
      {"bwd steps d64", 1, {300, 300}, {300, 150}, false, 0, false, true}, 16);
  run_case<__half, 128, 64, 2>(
      {"bwd steps d128 cross", 1, {200, 70}, {150, 190}, false, 0, false, true}, 17);
}

TEST(FlashSm90Emu, HopperBackwardCausalPacked) {
  run_case<__half, 64, 64, 2>(
      {"bwd causal packed d64", 1, {260, 5, 130}, {260, 5, 130}, true, 0, true, true}, 18);
  run_case<__nv_bfloat16, 128, 64, 2>(
      {"bwd causal padded d128", 1, {140, 140}, {140, 61}, true, 0, false, true}, 19);
}

TEST(FlashSm90Emu, HopperBackwardDropout) {
  run_case<__nv_bfloat16, 64, 64, 2>(
      {"bwd dropout d64", 1, {150, 150}, {140, 33}, false, 0.2f, false, true}, 20);
  run_case<__half, 128, 64, 2>(
      {"bwd dropout causal packed d128", 1, {70, 129}, {70, 129}, true, 0.3f, true, true}, 21);
}

// Warpgroups out of step: each consumer warpgroup in turn runs late (flash_sm90_emu.h's
// delayed_warpgroup), so that a missing barrier between them, or a dS buffer written again while
// the other warpgroup still reads it, gives wrong gradients here.
TEST(FlashSm90Emu, HopperBackwardWarpgroupsOutOfStep) {
  for (int wg : {0, 1}) {
    const DelayedWarpgroup late(wg);
    run_case<__nv_bfloat16, 64, 64, 2>({"warpgroup late", 1, {300}, {140}, false, 0, false, true},
                                       22 + static_cast<uint64_t>(wg));
  }
}

// Packed sequences share TMA tiles: the rows past a sequence's end are the next sequence's. NaN in
// the next sequence's Q, dO, K and V must not reach this one's gradients through 0 · NaN (the
// kernel zeroes those rows in shared memory): sequence 0's gradients stay bit for bit the same.
TEST(FlashSm90Emu, HopperBackwardSequencesIsolated) {
  using T = __nv_bfloat16;
  constexpr int D = 64;
  const Spec s{"isolation", 1, {70, 50}, {90, 50}, false, 0, true};
  FlashCase<T, D> c(s, 24);
  std::vector<T> o(c.q.size());
  std::vector<float> lse(static_cast<size_t>(c.H * c.total_q));
  run_sm90_forward(c, o, lse);
  std::vector<T> dq, dk, dv, dq_nan, dk_nan, dv_nan;
  run_sm90_backward(c, o, lse, dq, dk, dv);
  const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
  for (int64_t r = c.cu_q[1] * c.row; r < c.cu_q[2] * c.row; ++r) c.q[r] = c.dout[r] = nan_t;
  for (int64_t r = c.cu_k[1] * c.row; r < c.cu_k[2] * c.row; ++r) c.k[r] = c.v[r] = nan_t;
  run_sm90_backward(c, o, lse, dq_nan, dk_nan, dv_nan);
  auto same = [](const std::vector<T>& a, const std::vector<T>& b, int64_t n, const char* what) {
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(to_f(a[i]))) << what << " element " << i;
      ASSERT_EQ(bits_of(a[i]), bits_of(b[i])) << what << " element " << i;
    }
  };
  same(dq, dq_nan, c.cu_q[1] * c.row, "dQ");
  same(dk, dk_nan, c.cu_k[1] * c.row, "dK");
  same(dv, dv_nan, c.cu_k[1] * c.row, "dV");
}

// Stored dQ (sequences of up to 128 keys) equals the accumulated one, value for value: one
// block's sum, rounded once, either way. Cases across both head_dims, a sequence without keys,
// causal packed and dropout; run_case's other cases with max_k <= 128 check it against the
// reference.
TEST(FlashSm90Emu, HopperBackwardShortSequencesStoreDq) {
  // Every sequence within one key block: dQ stored by the blocks (against the reference).
  run_case<__nv_bfloat16, 64, 64, 2>(
      {"bwd stored dQ d64", 1, {128, 128}, {128, 100}, true, 0, false, true}, 63);
  run_case<__half, 128, 64, 2>(
      {"bwd stored dQ d128 packed dropout", 1, {70, 9}, {128, 40}, false, 0.2f, true, true}, 64);
}

TEST(FlashSm90Emu, HopperBackwardStoredDqEqualsAccumulated) {
  auto check = [](auto tag, const Spec& s, uint64_t seed) {
    using T = typename decltype(tag)::first_type;
    constexpr int D = decltype(tag)::second_type::value;
    SCOPED_TRACE(s.name);
    FlashCase<T, D> c(s, seed);
    ASSERT_TRUE(sm90_bwd_dq_direct(c.pr));
    std::vector<T> o(c.q.size());
    std::vector<float> lse(static_cast<size_t>(c.H * c.total_q));
    run_sm90_forward(c, o, lse);
    std::vector<T> dq1, dk1, dv1, dq2, dk2, dv2;
    run_sm90_backward(c, o, lse, dq1, dk1, dv1);
    run_sm90_backward(c, o, lse, dq2, dk2, dv2, /*accumulate=*/true);
    expect_same_gradients(dq1, dk1, dv1, dq2, dk2, dv2, "stored", "accumulated");
  };
  check(std::pair<__nv_bfloat16, std::integral_constant<int, 64>>{},
        {"stored dQ padded", 1, {100, 100, 100}, {100, 40, 0}, false, 0}, 60);
  check(std::pair<__half, std::integral_constant<int, 64>>{},
        {"stored dQ causal packed dropout", 1, {3, 128}, {3, 128}, true, 0.2f, true}, 61);
  check(std::pair<__nv_bfloat16, std::integral_constant<int, 128>>{},
        {"stored dQ d128 cross", 1, {150, 20}, {90, 128}, false, 0}, 62);
}

// dQ by bulk reductions (MH_HOPPER_BWD_DQ=bulk): through the padded shared-memory buffer and the
// writer warp, against the reference, on several query steps, both head_dims, causal packed
// sequences and dropout (the next test covers more shapes, against the atomic form).
TEST(FlashSm90Emu, HopperBackwardBulkDq) {
  run_case<__nv_bfloat16, 64, 64, 2>(
      {"bulk dQ steps d64", 1, {300, 300}, {300, 150}, false, 0, false, true}, 70, true);
  run_case<__nv_bfloat16, 128, 64, 2>({"bulk dQ dropout causal packed d128",
                                       1,
                                       {70, 129, 200},
                                       {70, 129, 200},
                                       true,
                                       0.3f,
                                       true,
                                       true},
                                      73, true);
}

// Both ways add the same fp32 terms in the same order here (the emulation runs the blocks one
// after another, each adding a row's term once per step), so dQ must agree bit for bit, in every
// row: a bulk copy that reached past its sequence (into the next one's rows of a packed batch) or
// missed a row shows. And with each warpgroup late in turn, the writer warp included (warpgroup
// 2): a consumer store that bypassed the full/empty handshake, or a missing fence, differs too.
TEST(FlashSm90Emu, HopperBackwardBulkDqEqualsAtomic) {
  auto check = [](auto tag, const Spec& s, uint64_t seed, int late) {
    using T = typename decltype(tag)::first_type;
    constexpr int D = decltype(tag)::second_type::value;
    SCOPED_TRACE(::testing::Message() << s.name << ", late warpgroup " << late);
    FlashCase<T, D> c(s, seed);
    std::vector<T> o(c.q.size());
    std::vector<float> lse(static_cast<size_t>(c.H * c.total_q));
    run_sm90_forward(c, o, lse);
    std::vector<T> dq1, dk1, dv1, dq2, dk2, dv2;
    run_sm90_backward(c, o, lse, dq1, dk1, dv1, /*accumulate=*/true);
    {
      const DelayedWarpgroup delayed(late);
      run_sm90_backward(c, o, lse, dq2, dk2, dv2, /*accumulate=*/true, /*bulk=*/true);
    }
    expect_same_gradients(dq1, dk1, dv1, dq2, dk2, dv2, "atomic", "bulk");
  };
  using Bf64 = std::pair<__nv_bfloat16, std::integral_constant<int, 64>>;
  using H128 = std::pair<__half, std::integral_constant<int, 128>>;
  check(Bf64{}, {"packed d64", 1, {150, 40, 300}, {150, 40, 300}, false, 0, true}, 74, -1);
  check(H128{}, {"padded causal d128", 1, {200, 90}, {260, 70}, true, 0, false}, 75, -1);
  for (int late : {0, 1, 2})
    check(Bf64{}, {"out of step", 1, {300, 20}, {140, 20}, false, 0, true}, 76, late);
}

TEST(FlashSm90Emu, KeyTile128) {
  run_case<__nv_bfloat16, 64, 128>({"BN 128", 1, {70, 20}, {150, 129}, true}, 15);
}

// The overlapped forward (MH_HOPPER_FWD=overlap): 128-key tiles, two consumer warpgroups, a
// producer warpgroup; tile n's softmax runs while O += P V of tile n − 1 is in flight, and the
// stage ring (3 at head_dim 64, 2 at 128) wraps several times. The emulation executes a wgmma
// group only when it is waited for, so reading S before its wait, or rescaling O while its MMA
// is in flight, gives wrong results here.
TEST(FlashSm90Emu, OverlappedForward) {
  run_case<__nv_bfloat16, 64, 128, 2, true>(
      {"overlap padded", 1, {300, 300, 300}, {300, 129, 1}, false, 0, false}, 50);
  run_case<__half, 64, 128, 2, true>(
      {"overlap causal packed dropout", 1, {520, 7, 130}, {520, 7, 130}, true, 0.2f, true}, 51);
  run_case<__nv_bfloat16, 128, 128, 2, true>(
      {"overlap d128 cross", 1, {200, 70}, {450, 0}, false, 0, false}, 52);
  run_case<__half, 128, 128, 2, true>(
      {"overlap d128 causal Lq>Lk dropout", 1, {260}, {140}, true, 0.1f, true}, 53);
}

// The overlapped forward with three consumer warpgroups (MH_HOPPER_FWD_WG=3, head_dim 64): 192-row
// blocks, so the causal diagonal crosses 128-key tiles mid-tile, and a last block only partly
// filled; the third warpgroup late in turn.
TEST(FlashSm90Emu, OverlappedForwardThreeWarpgroups) {
  run_case<__nv_bfloat16, 64, 128, 3, true>({"overlap 3 warpgroups causal packed dropout",
                                             1,
                                             {450, 5, 200},
                                             {450, 5, 200},
                                             true,
                                             0.2f,
                                             true},
                                            56);
  run_case<__half, 64, 128, 3, true>(
      {"overlap 3 warpgroups padded cross", 1, {200, 200}, {300, 129}, false, 0, false}, 57);
  const DelayedWarpgroup late(2);
  run_case<__nv_bfloat16, 64, 128, 3, true>(
      {"overlap 3 warpgroups, the third late", 1, {200}, {300}, true, 0, false}, 58);
}

// The overlapped forward with each consumer warpgroup in turn running late.
TEST(FlashSm90Emu, OverlappedForwardWarpgroupsOutOfStep) {
  for (int wg : {0, 1}) {
    const DelayedWarpgroup late(wg);
    run_case<__nv_bfloat16, 64, 128, 2, true>(
        {"overlap warpgroup late", 1, {140, 140}, {400, 77}, true, 0, false},
        54 + static_cast<uint64_t>(wg));
  }
}

}  // namespace
}  // namespace mh::cuda::flash
