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

struct Spec {
  const char* name;
  int heads;
  std::vector<int> len_q, len_k;
  bool causal = false;
  float dropout = 0;
  bool packed = false;
  bool backward = false;  // also run the sm_80 backward on this forward's lse
};

template <typename T>
T round_to(float x) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half(x);
  else
    return __float2bfloat16(x);
}

double rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (!std::isfinite(num)) return std::numeric_limits<double>::infinity();
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <typename T, int D, int BN = 64, int NWG = 1>
void run_case(const Spec& s, uint64_t seed) {
  SCOPED_TRACE(::testing::Message()
               << s.name << " D=" << D << (std::is_same_v<T, __half> ? " fp16" : " bf16")
               << " BN=" << BN << " warpgroups=" << NWG);
  using C = Sm90Fwd<T, D, BN, NWG>;
  const int B = static_cast<int>(s.len_q.size()), H = s.heads;
  int max_q = 0, max_k = 0;
  for (int b = 0; b < B; ++b)
    max_q = std::max(max_q, s.len_q[b]), max_k = std::max(max_k, s.len_k[b]);
  const int64_t row = int64_t{H} * D;
  std::vector<int32_t> cu_q(B + 1, 0), cu_k(B + 1, 0);
  for (int b = 0; b < B; ++b) {
    cu_q[b + 1] = cu_q[b] + (s.packed ? s.len_q[b] : max_q);
    cu_k[b + 1] = cu_k[b] + (s.packed ? s.len_k[b] : max_k);
  }
  const int64_t total_q = cu_q[B], total_k = cu_k[B];

  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto make = [&](int64_t rows, std::vector<T>& dev) {
    dev.resize(static_cast<size_t>(rows * row));
    for (T& x : dev) x = round_to<T>(nd(rng));
  };
  std::vector<T> q, k, v, dout;
  make(total_q, q);
  make(total_k, k);
  make(total_k, v);
  make(total_q, dout);
  CpuBackend cpu;
  // The reference sees only valid rows (zeros elsewhere); the kernel's padding keys become NaN.
  auto padded = [&](const std::vector<T>& dev, const std::vector<int32_t>& cu,
                    const std::vector<int>& len, int max_len) {
    Tensor t = Tensor::zeros({B, max_len, row}, DType::f64);
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < len[b]; ++i)
        for (int64_t e = 0; e < row; ++e)
          t.data<double>()[(int64_t{b} * max_len + i) * row + e] =
              to_f(dev[static_cast<size_t>((cu[b] + i) * row + e)]);
    return t;
  };
  const std::vector<int> q_rows = s.packed ? s.len_q : std::vector<int>(B, max_q);
  std::vector<int> k_valid(B);
  for (int b = 0; b < B; ++b) k_valid[b] = std::min(s.len_k[b], max_k);
  Tensor q64 = padded(q, cu_q, q_rows, max_q), k64 = padded(k, cu_k, k_valid, max_k);
  Tensor v64 = padded(v, cu_k, k_valid, max_k), do64 = padded(dout, cu_q, q_rows, max_q);
  if (!s.packed) {
    const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
    for (int b = 0; b < B; ++b)
      for (int i = k_valid[b]; i < max_k; ++i)
        for (int64_t e = 0; e < row; ++e) {
          k[static_cast<size_t>((cu_k[b] + i) * row + e)] = nan_t;
          v[static_cast<size_t>((cu_k[b] + i) * row + e)] = nan_t;
        }
  }
  AttnArgs a;
  a.batch = B;
  a.heads = H;
  a.len_q = max_q;
  a.len_k = max_k;
  a.head_dim = D;
  std::vector<int32_t> key_len(s.len_k.begin(), s.len_k.end());
  a.key_len = key_len.data();
  a.causal = s.causal;
  a.scale = 1.0 / std::sqrt(static_cast<double>(D));
  a.dropout = s.dropout;
  a.seed = 1234567;
  a.offset = 89;
  Tensor o64 = Tensor::empty(q64.shape(), DType::f64);
  AttnSaved saved;
  cpu.attention_fwd(a, q64, k64, v64, o64, saved);

  AttnProblem pr;
  pr.dtype = std::is_same_v<T, __half> ? DType::f16 : DType::bf16;
  pr.batch = B;
  pr.heads = H;
  pr.head_dim = D;
  pr.max_len_q = max_q;
  pr.max_len_k = max_k;
  pr.total_q = total_q;
  pr.total_k = total_k;
  if (s.packed) {
    pr.cu_seqlens_q = cu_q.data();
    pr.cu_seqlens_k = cu_k.data();
  } else {
    pr.key_len = key_len.data();
  }
  pr.causal = s.causal;
  pr.scale = static_cast<float>(a.scale);
  pr.dropout = s.dropout;
  pr.seed = a.seed;
  pr.offset = a.offset;

  const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
  std::vector<T> o(q.size(), nan_t);
  std::vector<float> lse(static_cast<size_t>(H * total_q), std::numeric_limits<float>::quiet_NaN());
  const Sm90FwdParams<T> fp = sm90_fwd_params<T, D, BN, NWG>(
      pr, AttnFwdIO{q.data(), k.data(), v.data(), o.data(), lse.data()},
      [](const TmaSpec& t) { return t; });
  emu_launch((max_q + C::kBM - 1) / C::kBM, H, B, C::kThreads, C::kSmemBytes,
             [&] { flash_fwd_sm90_kernel<T, D, BN, NWG>(fp); });

  auto gather = [&](const std::vector<T>& dev, const Tensor& ref, const std::vector<int32_t>& cu,
                    const std::vector<int>& rows, int max_len, std::vector<double>& got,
                    std::vector<double>& want) {
    got.clear();
    want.clear();
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < rows[b]; ++i)
        for (int64_t e = 0; e < row; ++e) {
          got.push_back(to_f(dev[static_cast<size_t>((cu[b] + i) * row + e)]));
          want.push_back(ref.data<double>()[(int64_t{b} * max_len + i) * row + e]);
        }
  };
  std::vector<double> got, want;
  gather(o, o64, cu_q, q_rows, max_q, got, want);
  EXPECT_LE(rel_err(got, want), 1e-2) << "O";

  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < q_rows[b]; ++i) {
        int n = k_valid[b];
        if (s.causal) n = std::min(n, i + 1);
        double m = -INFINITY, sum = 0;
        std::vector<double> sc(static_cast<size_t>(std::max(n, 0)));
        for (int j = 0; j < n; ++j) {
          double dot = 0;
          for (int e = 0; e < D; ++e)
            dot += q64.data<double>()[(int64_t{b} * max_q + i) * row + h * D + e] *
                   k64.data<double>()[(int64_t{b} * max_k + j) * row + h * D + e];
          sc[j] = dot * a.scale;
          m = std::max(m, sc[j]);
        }
        for (int j = 0; j < n; ++j) sum += std::exp(sc[j] - m);
        const double want_lse = n > 0 ? m + std::log(sum) : INFINITY;
        const float got_lse = lse[h * total_q + cu_q[b] + i];
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
  cpu.attention_bwd(a, do64, q64, k64, v64, saved, dq64, dk64, dv64);
  std::vector<float> dsum(static_cast<size_t>(H * total_q)), dq_acc(q.size(), 0.f);
  for (int64_t r = 0; r < total_q; ++r)
    for (int h = 0; h < H; ++h) {
      float acc = 0;
      for (int e = 0; e < D; ++e)
        acc += to_f(dout[r * row + h * D + e]) * to_f(o[r * row + h * D + e]);
      dsum[h * total_q + r] = acc;
    }
  std::vector<T> dq(q.size(), nan_t), dk(k.size(), nan_t), dv(k.size(), nan_t);
  const BwdParams<T> bp =
      bwd_params<T>(pr,
                    AttnBwdIO{q.data(), k.data(), v.data(), o.data(), dout.data(), lse.data(),
                              dq.data(), dk.data(), dv.data()},
                    dq_acc.data(), dsum.data());
  emu_launch((max_k + kBwdBN - 1) / kBwdBN, H, B, bwd_threads(kBwdBN), bwd_smem_bytes<T, D>(),
             [&] { flash_bwd_kernel<T, D>(bp); });
  for (size_t i = 0; i < dq.size(); ++i) dq[i] = round_to<T>(dq_acc[i]);
  gather(dq, dq64, cu_q, q_rows, max_q, got, want);
  EXPECT_LE(rel_err(got, want), 1e-2) << "dQ";
  gather(dk, dk64, cu_k, k_valid, max_k, got, want);
  EXPECT_LE(rel_err(got, want), 1e-2) << "dK";
  gather(dv, dv64, cu_k, k_valid, max_k, got, want);
  EXPECT_LE(rel_err(got, want), 1e-2) << "dV";
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
