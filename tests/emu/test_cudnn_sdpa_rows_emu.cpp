// The bookkeeping kernels around cuDNN's SDPA (cudnn_sdpa_rows_kernels.cuh) run on the CPU through
// the SIMT emulation (simt_emu.h), with the launchers' grids and arguments, against a plain host
// computation of what cudnn_sdpa_rows.h promises. Everything is integer or bit copies: the checks
// are exact. Outputs are poisoned first; sdpa_zero_rows' untouched rows must keep their bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/cudnn_sdpa_rows_kernels.cuh"

namespace mh::cuda {
namespace {

emu::Dim3 dim_of(dim3 d) {
  return {d.x, d.y, d.z};
}

constexpr int32_t kPoison32 = -123456789;
constexpr int64_t kPoison64 = -1234567890123LL;

// Runs sdpa_seq_info_kernel as sdpa_seq_info launches it and checks every output against the
// header's definitions (offsets only in the packed form).
void check_seq_info(const AttnProblem& p, const std::vector<int32_t>& key_len,
                    const std::vector<int32_t>& cu_q, const std::vector<int32_t>& cu_k) {
  const int B = p.batch;
  std::vector<int32_t> seq_q(B, kPoison32), seq_kv(B, kPoison32);
  std::vector<int64_t> off_q(B + 1, kPoison64), off_k(B + 1, kPoison64), off_lse(B + 1, kPoison64);
  const bool packed = p.packed();
  emu::launch({static_cast<unsigned>(sdpa_seq_info_blocks(B))}, {kInfoThreads}, [&] {
    sdpa_seq_info_kernel(p.batch, p.max_len_q, p.max_len_k, p.row_elems(), p.heads, p.key_len,
                         p.cu_seqlens_q, p.cu_seqlens_k, seq_q.data(), seq_kv.data(),
                         packed ? off_q.data() : nullptr, packed ? off_k.data() : nullptr,
                         packed ? off_lse.data() : nullptr);
  });
  for (int b = 0; b < B; ++b) {
    const int kv = packed ? cu_k[b + 1] - cu_k[b] : std::clamp(key_len[b], 0, p.max_len_k);
    const int q = packed ? cu_q[b + 1] - cu_q[b] : p.max_len_q;
    EXPECT_EQ(seq_kv[b], kv) << "sequence " << b;
    EXPECT_EQ(seq_q[b], kv > 0 ? q : 0) << "sequence " << b;
  }
  for (int b = 0; b <= B; ++b) {
    if (packed) {
      EXPECT_EQ(off_q[b], int64_t{cu_q[b]} * p.heads * p.head_dim) << "b " << b;
      EXPECT_EQ(off_k[b], int64_t{cu_k[b]} * p.heads * p.head_dim) << "b " << b;
      EXPECT_EQ(off_lse[b], int64_t{cu_q[b]} * p.heads) << "b " << b;
    } else {  // not the kernel's to write (null in the padded form): still poisoned
      EXPECT_EQ(off_q[b], kPoison64);
    }
  }
}

TEST(CudnnSdpaRowsEmu, SeqInfoPadded) {
  std::mt19937 rng(7);
  AttnProblem p;
  p.batch = 130;  // more sequences than one block's threads
  p.heads = 3;
  p.head_dim = 40;
  p.max_len_q = 37;
  p.max_len_k = 45;
  std::uniform_int_distribution<int> len(-5, 55);  // below 0 and past max_len_k: clamped
  std::vector<int32_t> key_len(p.batch);
  for (int32_t& k : key_len) k = len(rng);
  key_len[0] = 0;
  key_len[1] = -1;
  key_len[2] = p.max_len_k;
  key_len[3] = p.max_len_k + 1;
  key_len[129] = 1;
  p.key_len = key_len.data();
  check_seq_info(p, key_len, {}, {});
}

// cu_seqlens [B + 1] of random lengths in [lo, hi], some forced to 0.
std::vector<int32_t> cu_of(std::mt19937& rng, int batch, int lo, int hi) {
  std::uniform_int_distribution<int> len(lo, hi);
  std::vector<int32_t> cu(batch + 1, 0);
  for (int b = 0; b < batch; ++b) cu[b + 1] = cu[b] + (b % 7 == 3 ? 0 : len(rng));
  return cu;
}

TEST(CudnnSdpaRowsEmu, SeqInfoPacked) {
  std::mt19937 rng(8);
  for (int batch : {1, 5, 129}) {
    SCOPED_TRACE(::testing::Message() << "batch " << batch);
    AttnProblem p;
    p.batch = batch;
    p.heads = 5;
    p.head_dim = 24;
    std::vector<int32_t> cu_q = cu_of(rng, batch, 1, 90), cu_k = cu_of(rng, batch, 1, 70);
    if (batch > 1) cu_q[2] = cu_q[1];  // a sequence with keys and no queries
    for (int b = 0; b < batch; ++b) {
      p.max_len_q = std::max(p.max_len_q, cu_q[b + 1] - cu_q[b]);
      p.max_len_k = std::max(p.max_len_k, cu_k[b + 1] - cu_k[b]);
    }
    p.cu_seqlens_q = cu_q.data();
    p.cu_seqlens_k = cu_k.data();
    check_seq_info(p, {}, cu_q, cu_k);
  }
}

// Runs sdpa_zero_rows_kernel as sdpa_zero_rows launches it on random bits and checks that exactly
// the rows i >= keep[b] of each sequence are zero and every other byte is unchanged.
void check_zero_rows(int batch, int max_len, int64_t row_bytes, const std::vector<int32_t>& cu,
                     const std::vector<int32_t>& keep, std::mt19937& rng) {
  SCOPED_TRACE(::testing::Message() << "batch " << batch << " max_len " << max_len << " row_bytes "
                                    << row_bytes << (cu.empty() ? " padded" : " packed"));
  const int64_t rows = cu.empty() ? int64_t{batch} * max_len : cu[batch];
  const int64_t row_vecs = row_bytes / 16;
  std::vector<uint4> x(static_cast<size_t>(rows * row_vecs));
  std::uniform_int_distribution<uint32_t> bits(1, 0xffffffffu);  // never zero
  for (uint4& v : x) v = make_uint4(bits(rng), bits(rng), bits(rng), bits(rng));
  const std::vector<uint4> before = x;
  emu::launch(dim_of(sdpa_zero_rows_grid(batch, max_len)), {kZeroThreads}, [&] {
    sdpa_zero_rows_kernel(x.data(), row_vecs, max_len, cu.empty() ? nullptr : cu.data(),
                          keep.data());
  });
  for (int b = 0; b < batch; ++b) {
    const int64_t start = cu.empty() ? int64_t{b} * max_len : cu[b];
    const int len = cu.empty() ? max_len : cu[b + 1] - cu[b];
    for (int i = 0; i < len; ++i) {
      const bool zero = i >= keep[b];
      for (int64_t v = 0; v < row_vecs; ++v) {
        const size_t e = static_cast<size_t>((start + i) * row_vecs + v);
        const uint4 want = zero ? make_uint4(0, 0, 0, 0) : before[e];
        ASSERT_EQ(std::memcmp(&x[e], &want, sizeof(uint4)), 0)
            << "sequence " << b << " row " << i << " (keep " << keep[b] << ") vector " << v;
      }
    }
  }
}

TEST(CudnnSdpaRowsEmu, ZeroRowsPadded) {
  std::mt19937 rng(9);
  for (int64_t row_bytes : {int64_t{16}, int64_t{48}, int64_t{16 * 131}}) {  // 131 > kZeroThreads
    const int batch = 6, max_len = 11;  // not a multiple of kZeroRowsPerBlock
    const std::vector<int32_t> keep = {0, -3, 11, 12, 5, 4};
    check_zero_rows(batch, max_len, row_bytes, {}, keep, rng);
  }
}

TEST(CudnnSdpaRowsEmu, ZeroRowsPacked) {
  std::mt19937 rng(10);
  const int batch = 7;
  const std::vector<int32_t> cu = {0,  9,  9,      22,
                                   23, 30, 30 + 4, 34 + 13};  // lengths 9 0 13 1 7 4 13
  const int max_len = 13;
  for (int64_t row_bytes : {int64_t{32}, int64_t{16 * 129}}) {
    const std::vector<int32_t> keep = {3, 0, 13, 0, -1, 8, 5};
    check_zero_rows(batch, max_len, row_bytes, cu, keep, rng);
  }
}

}  // namespace
}  // namespace mh::cuda
