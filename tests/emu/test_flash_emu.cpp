// The custom attention kernels (flash_fwd_kernel.cuh, flash_bwd_kernel.cuh), run on the CPU
// through the host emulation of their GPU primitives (flash_emu.h), against CpuBackend in
// float64 on the same bf16/fp16-rounded random inputs. This checks the kernels' indexing,
// masking, online softmax, recompute-from-lse backward, dropout bits, tile edges and barriers
// without a GPU; the GPU tests (tests/cuda/test_attention.cpp) check the same on real hardware.
// Outputs are poisoned (NaN) before each run, so unwritten elements fail.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "../common/attention_given_output.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/attention/flash_bwd_kernel.cuh"
#include "backend/cuda/attention/flash_fwd_kernel.cuh"
#include "flash_case.h"

namespace mh::cuda::flash {
namespace {

template <typename T, int D, int FBM = kFwdBM, int FBN = kFwdBN, int BBN = kBwdBN,
          int BBM = kBwdBMOf<D>, int FWM = kFwdWM, bool BTILES = false>
void run_case(const Spec& s, uint64_t seed) {
  SCOPED_TRACE(::testing::Message()
               << s.name << " D=" << D << (std::is_same_v<T, __half> ? " fp16" : " bf16")
               << " tiles: forward " << FBM << "x" << FBN << " (" << FWM
               << " rows per warp), backward " << BBN << "x" << BBM);
  FlashCase<T, D> c(s, seed);
  const int B = c.B, H = c.H, max_q = c.max_q, max_k = c.max_k;

  // The reference reads the rounded inputs in float64, in the padded layout, with zero rows where
  // the packed form has none (their dO = 0 adds nothing to dK, dV). Query rows: all of them in
  // the padded form; key rows: the valid ones (the rest are padding the kernel must mask; give
  // them junk in the padded form to prove it does).
  const std::vector<int> k_rows = s.packed ? s.len_k : std::vector<int>(B, max_k);
  Tensor q64 = c.padded(c.q, c.cu_q, c.q_rows, max_q), k64 = c.padded(c.k, c.cu_k, k_rows, max_k);
  Tensor v64 = c.padded(c.v, c.cu_k, k_rows, max_k),
         do64 = c.padded(c.dout, c.cu_q, c.q_rows, max_q);
  CpuBackend cpu;
  Tensor o64 = Tensor::empty(q64.shape(), DType::f64);
  AttnSaved saved;
  cpu.attention_fwd(c.args, q64, k64, v64, o64, saved);
  Tensor dq64 = Tensor::empty(q64.shape(), DType::f64),
         dk64 = Tensor::empty(k64.shape(), DType::f64),
         dv64 = Tensor::empty(k64.shape(), DType::f64);
  cpu.attention_bwd(c.args, do64, q64, k64, v64, saved, dq64, dk64, dv64);

  const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
  std::vector<T> o(c.q.size(), nan_t);
  std::vector<float> lse(static_cast<size_t>(H * c.total_q),
                         std::numeric_limits<float>::quiet_NaN());
  const FwdParams<T> fp =
      fwd_params<T>(c.pr, AttnFwdIO{c.q.data(), c.k.data(), c.v.data(), o.data(), lse.data()});
  emu_launch((max_q + FBM - 1) / FBM, H, B, fwd_threads(FBM, FWM), fwd_smem_bytes<T, D, FBM, FBN>(),
             [&] { flash_fwd_kernel<T, D, FBM, FBN, FWM>(fp); });
  std::vector<T> dq, dk, dv;
  c.template run_backward<BBN, BBM, BTILES>(o, lse, dq, dk, dv);

  // Compare the rows the kernels own against the padded reference.
  EXPECT_LE(c.err(o, o64, c.cu_q, c.q_rows, max_q), 1e-2) << "O";
  // dQ and dK against the gradients for the O the backward read (attention_given_output.h).
  attention_test::correct_for_stored_output(c.args, q64, k64, v64, do64, o64,
                                            c.padded(o, c.cu_q, c.q_rows, max_q), dq64, dk64);
  EXPECT_LE(c.err(dq, dq64, c.cu_q, c.q_rows, max_q), 1e-2) << "dQ";
  EXPECT_LE(c.err(dk, dk64, c.cu_k, k_rows, max_k), 1e-2) << "dK";
  EXPECT_LE(c.err(dv, dv64, c.cu_k, k_rows, max_k), 1e-2) << "dV";

  // The log-sum-exp of the scaled scores, row by row (+inf where no key is visible).
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < c.q_rows[b]; ++i) {
        int n = std::min(s.len_k[b], max_k);
        if (s.causal) n = std::min(n, i + 1);
        const double want_lse = c.ref_lse(q64, k64, b, h, i, n);
        const float got_lse = lse[h * c.total_q + c.cu_q[b] + i];
        if (n == 0)
          EXPECT_EQ(got_lse, INFINITY) << "b=" << b << " h=" << h << " i=" << i;
        else
          ASSERT_NEAR(got_lse, want_lse, 2e-2 * (1 + std::abs(want_lse)))
              << "b=" << b << " h=" << h << " i=" << i;
      }
}

TEST(FlashEmu, PaddedKeyMask) {
  // Lk = 70: two key tiles, the second partial; a sequence with 1 key and one with none.
  run_case<__nv_bfloat16, 64>({"padded", 2, {70, 70, 70, 70}, {70, 33, 1, 0}}, 1);
}

TEST(FlashEmu, CausalAcrossTiles) {
  run_case<__nv_bfloat16, 64>({"causal", 2, {130, 130}, {130, 97}, true}, 2);
}

TEST(FlashEmu, CrossAttentionLqNeLk) {
  run_case<__half, 64>({"cross", 2, {37, 37}, {129, 64}}, 3);
  run_case<__nv_bfloat16, 64>({"causal Lq<Lk", 1, {20, 20}, {70, 70}, true}, 4);
  run_case<__nv_bfloat16, 64>({"causal Lq>Lk", 1, {70}, {20}, true}, 5);
}

TEST(FlashEmu, HeadDim128) {
  run_case<__nv_bfloat16, 128>({"d128", 1, {65, 65}, {65, 7}, true}, 6);
  run_case<__half, 128>({"d128 cross", 1, {33}, {100}}, 7);
}

TEST(FlashEmu, Dropout) {
  // The mask must be CpuBackend's (AttnArgs' definition), in forward and in backward.
  run_case<__nv_bfloat16, 64>({"dropout", 2, {67, 67}, {67, 40}, true, 0.3f}, 8);
  run_case<__nv_bfloat16, 128>({"dropout d128", 1, {40}, {70}, false, 0.5f}, 9);
  // A sequence with one key under a causal mask: every query row has P = 1, so its exact dS is
  // 0 and dK there is only what D computed from the rounded O leaves (the GPU test's geometry).
  run_case<__nv_bfloat16, 64>({"dropout one key", 2, {129, 129, 129}, {129, 1, 70}, true, 0.1f},
                              21);
}

TEST(FlashEmu, PackedVariableLength) {
  // Sentences of different lengths back to back: no padding rows exist, none are computed.
  run_case<__nv_bfloat16, 64>({"packed", 2, {13, 70, 1, 40}, {13, 70, 1, 40}, false, 0, true}, 10);
  run_case<__half, 64>({"packed causal", 1, {65, 3, 100}, {65, 3, 100}, true, 0, true}, 11);
  run_case<__nv_bfloat16, 64>({"packed cross dropout", 1, {9, 30}, {70, 5}, false, 0.2f, true}, 12);
}

TEST(FlashEmu, OddLengthsAroundTiles) {
  // Lengths on both sides of the 64-row tiles, packed (and causal, so the diagonal tile varies).
  run_case<__nv_bfloat16, 64>(
      {"odd lengths", 1, {1, 63, 65, 127, 129}, {1, 63, 65, 127, 129}, true, 0, true}, 15);
  run_case<__half, 64>({"odd cross", 1, {129, 7}, {63, 127}, false, 0, true}, 16);
}

TEST(FlashEmu, OtherTileSizes) {
  // The tile sizes are template parameters: smaller and larger tiles compute the same function.
  run_case<__nv_bfloat16, 64, 32, 32, 32, 32>({"tiles 32", 1, {70, 70}, {70, 45}, true}, 13);
  run_case<__nv_bfloat16, 64, 32, 128, 128, 32>({"tiles 128", 1, {150}, {150}, false, 0.1f}, 14);
}

TEST(FlashEmu, ForwardTilings) {
  // The launcher's other head_dim-64 forwards (MH_FLASH_FWD_TILE): 64x128 (4 warps of 16 rows),
  // 128x64 and 128x128 (4 warps of 32 rows: two row tiles per warp; at 128 keys Q is read from
  // shared memory per k-step instead of held in registers).
  run_case<__nv_bfloat16, 64, 64, 128>({"fwd 64x128", 1, {150}, {150}, true}, 19);
  run_case<__half, 64, 128, 64, kBwdBN, kBwdBMOf<64>, 32>(
      {"fwd 128x64 packed cross", 1, {9, 140}, {200, 5}, false, 0.2f, true}, 20);
  run_case<__nv_bfloat16, 64, 128, 128, kBwdBN, kBwdBMOf<64>, 32>(
      {"fwd 128x128", 1, {140, 140}, {140, 61}, true}, 21);
  run_case<__nv_bfloat16, 64, 128, 128, kBwdBN, kBwdBMOf<64>, 32>(
      {"fwd 128x128 odd padded dropout", 2, {129, 129, 129}, {129, 1, 70}, true, 0.1f}, 22);
  // 32 rows per warp at other sizes: a single warp, and head_dim 128.
  run_case<__half, 64, 32, 64, kBwdBN, kBwdBMOf<64>, 32>(
      {"fwd 32x64 one warp", 1, {70, 70}, {70, 45}, true}, 23);
  run_case<__nv_bfloat16, 128, 64, 64, kBwdBN, kBwdBMOf<128>, 32>(
      {"fwd d128 64x64 2 warps", 1, {65, 65}, {65, 7}, true, 0.2f}, 24);
}

TEST(FlashEmu, BackwardWith128Keys) {
  // The launcher's other head_dim-64 backward (MH_FLASH_BWD_KEYS=128): 8 warps, 64 query rows.
  run_case<__half, 64, kFwdBM, kFwdBN, 128, 64>(
      {"bwd 128 keys", 2, {200, 200}, {200, 61}, true, 0, false}, 17);
  run_case<__nv_bfloat16, 64, kFwdBM, kFwdBN, 128, 64>(
      {"bwd 128 keys packed cross dropout", 1, {9, 140, 30}, {300, 5, 129}, false, 0.2f, true}, 18);
}

// The backward in FlashAttention-2's layout (MH_FLASH_BWD=tiles): 128 keys × 128 queries per step,
// 2-D warp tiles, P and dS through shared memory. Several steps per key block (the Q/dO buffers
// alternate), partial key and query blocks, padding keys, causal blocks no query sees, packed
// sequences, dropout, Lq != Lk, short sequences (dQ stored directly) and long ones (atomics).
template <typename T>
void tiles_case(const Spec& s, uint64_t seed) {
  run_case<T, 64, kFwdBM, kFwdBN, kTilesBN, kTilesBM, kFwdWM, true>(s, seed);
}
TEST(FlashEmu, BackwardTiles) {
  tiles_case<__nv_bfloat16>({"tiles padded causal", 1, {300, 300}, {300, 61}, true}, 70);
  tiles_case<__half>(
      {"tiles packed cross dropout", 1, {9, 200, 30}, {260, 5, 129}, false, 0.2f, true}, 71);
  tiles_case<__nv_bfloat16>(
      {"tiles short (dQ stored)", 1, {100, 100, 100}, {100, 37, 0}, true, 0.1f}, 72);
  tiles_case<__half>({"tiles causal Lq>Lk packed", 1, {200, 1, 70}, {130, 1, 70}, true, 0, true},
                     73);
}

TEST(FlashEmu, ShortSequencesStoreDq) {
  // No sequence longer than the backward's key block (bwd_dq_direct): each block stores its
  // queries' dQ, with no fp32 accumulator; rows no block writes (a sequence without keys,
  // padding query rows) keep the launcher's zeros.
  run_case<__nv_bfloat16, 64>({"short padded", 2, {50, 50, 50}, {50, 17, 0}}, 30);
  run_case<__half, 64>({"short packed causal", 1, {64, 3, 40}, {64, 3, 40}, true, 0, true}, 31);
  run_case<__nv_bfloat16, 64>({"short dropout", 2, {33, 33}, {33, 20}, true, 0.2f}, 32);
  run_case<__nv_bfloat16, 128>({"short d128", 1, {40, 40}, {40, 11}, true}, 33);
  run_case<__half, 64>({"short packed cross", 1, {100, 7}, {30, 64}, false, 0, true}, 34);
  run_case<__nv_bfloat16, 64, kFwdBM, kFwdBN, 128, 64>(
      {"short for 128 keys", 1, {128, 100}, {128, 70}, true, 0.1f, true}, 35);
}

// The stored dQ is the accumulator's, value for value: one block's sum, rounded once, either way.
template <typename T, int D, int BBN = kBwdBN, int BBM = kBwdBMOf<D>>
void direct_equals_accumulated(const Spec& s, uint64_t seed) {
  SCOPED_TRACE(s.name);
  FlashCase<T, D> c(s, seed);
  ASSERT_TRUE(bwd_dq_direct(c.pr, BBN)) << "the case must fit one key block";
  const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
  std::vector<T> o(c.q.size(), nan_t);
  std::vector<float> lse(static_cast<size_t>(c.H * c.total_q));
  const FwdParams<T> fp =
      fwd_params<T>(c.pr, AttnFwdIO{c.q.data(), c.k.data(), c.v.data(), o.data(), lse.data()});
  emu_launch((c.max_q + kFwdBM - 1) / kFwdBM, c.H, c.B, fwd_threads(kFwdBM),
             fwd_smem_bytes<T, D, kFwdBM, kFwdBN>(), [&] { flash_fwd_kernel<T, D>(fp); });
  std::vector<T> dq1, dk1, dv1, dq2, dk2, dv2;
  c.template run_backward<BBN, BBM>(o, lse, dq1, dk1, dv1);
  c.template run_backward<BBN, BBM>(o, lse, dq2, dk2, dv2, /*accumulate=*/true);
  auto same = [](const std::vector<T>& a, const std::vector<T>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_TRUE(to_f(a[i]) == to_f(b[i]))
          << what << "[" << i << "]: stored " << to_f(a[i]) << ", accumulated " << to_f(b[i]);
  };
  same(dq1, dq2, "dQ");
  same(dk1, dk2, "dK");
  same(dv1, dv2, "dV");
}

TEST(FlashEmu, StoredDqEqualsAccumulatedDq) {
  direct_equals_accumulated<__nv_bfloat16, 64>({"padded", 2, {50, 50, 50}, {50, 17, 0}, true}, 40);
  direct_equals_accumulated<__half, 128>({"packed d128", 1, {40, 9}, {64, 9}, false, 0.3f, true},
                                         41);
}

}  // namespace
}  // namespace mh::cuda::flash
