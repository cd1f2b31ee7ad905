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

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/attention/flash_bwd_kernel.cuh"
#include "backend/cuda/attention/flash_fwd_kernel.cuh"

namespace mh::cuda::flash {
namespace {

// One attention problem: sequences b = 0..B-1 with (len_q[b], len_k[b]); in the padded form all
// sequences have max_len_q query rows and max_len_k key rows, of which len_k[b] are valid keys.
struct Spec {
  const char* name;
  int heads;
  std::vector<int> len_q, len_k;
  bool causal = false;
  float dropout = 0;
  bool packed = false;
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

template <typename T, int D, int FBM = kFwdBM, int FBN = kFwdBN, int BBN = kBwdBN,
          int BBM = kBwdBMOf<D>>
void run_case(const Spec& s, uint64_t seed) {
  SCOPED_TRACE(::testing::Message()
               << s.name << " D=" << D << (std::is_same_v<T, __half> ? " fp16" : " bf16")
               << " tiles: forward " << FBM << "x" << FBN << ", backward " << BBN << "x" << BBM);
  const int B = static_cast<int>(s.len_q.size()), H = s.heads;
  int max_q = 0, max_k = 0;
  for (int b = 0; b < B; ++b)
    max_q = std::max(max_q, s.len_q[b]), max_k = std::max(max_k, s.len_k[b]);
  const int64_t row = int64_t{H} * D;
  // Row offsets of each sequence in the kernel's buffers (packed: back to back; padded: fixed).
  std::vector<int32_t> cu_q(B + 1, 0), cu_k(B + 1, 0);
  for (int b = 0; b < B; ++b) {
    cu_q[b + 1] = cu_q[b] + (s.packed ? s.len_q[b] : max_q);
    cu_k[b + 1] = cu_k[b] + (s.packed ? s.len_k[b] : max_k);
  }
  const int64_t total_q = cu_q[B], total_k = cu_k[B];

  // Inputs: rounded to T once; the reference reads the rounded values in float64, in the padded
  // layout, with zero rows where the packed form has none (their dO = 0 adds nothing to dK, dV).
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
  // Query rows: all of them in the padded form; key rows: the valid ones (the rest are padding
  // the kernel must mask; give them junk in the padded form to prove it does).
  const std::vector<int> q_rows = s.packed ? s.len_q : std::vector<int>(B, max_q);
  const std::vector<int> k_rows = s.packed ? s.len_k : std::vector<int>(B, max_k);
  Tensor q64 = padded(q, cu_q, q_rows, max_q), k64 = padded(k, cu_k, k_rows, max_k);
  Tensor v64 = padded(v, cu_k, k_rows, max_k), do64 = padded(dout, cu_q, q_rows, max_q);
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
  Tensor dq64 = Tensor::empty(q64.shape(), DType::f64),
         dk64 = Tensor::empty(k64.shape(), DType::f64),
         dv64 = Tensor::empty(k64.shape(), DType::f64);
  cpu.attention_bwd(a, do64, q64, k64, v64, saved, dq64, dk64, dv64);

  // The problem as the kernels see it.
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
  const FwdParams<T> fp =
      fwd_params<T>(pr, AttnFwdIO{q.data(), k.data(), v.data(), o.data(), lse.data()});
  emu_launch((max_q + FBM - 1) / FBM, H, B, fwd_threads(FBM), fwd_smem_bytes<T, D, FBM, FBN>(),
             [&] { flash_fwd_kernel<T, D, FBM, FBN>(fp); });

  // Backward: D = rowsum(dO ∘ O) and the dQ conversion as flash_bwd.cu's small kernels do.
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
  emu_launch((max_k + BBN - 1) / BBN, H, B, bwd_threads(BBN), bwd_smem_bytes<T, D, BBN, BBM>(),
             [&] { flash_bwd_kernel<T, D, BBN, BBM>(bp); });
  for (size_t i = 0; i < dq.size(); ++i) dq[i] = round_to<T>(dq_acc[i]);

  // Compare the rows the kernels own against the padded reference.
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
  gather(dq, dq64, cu_q, q_rows, max_q, got, want);
  EXPECT_LE(rel_err(got, want), 1e-2) << "dQ";
  gather(dk, dk64, cu_k, k_rows, max_k, got, want);
  EXPECT_LE(rel_err(got, want), 1e-2) << "dK";
  gather(dv, dv64, cu_k, k_rows, max_k, got, want);
  EXPECT_LE(rel_err(got, want), 1e-2) << "dV";

  // The log-sum-exp of the scaled scores, row by row (+inf where no key is visible).
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < q_rows[b]; ++i) {
        int n = std::min(s.len_k[b], max_k);
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

}  // namespace
}  // namespace mh::cuda::flash
