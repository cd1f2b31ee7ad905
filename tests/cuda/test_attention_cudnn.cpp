// cuDNN's fused attention (cuda::CudnnSdpa, backend/cuda/attention/cudnn_sdpa.h) against the CPU
// backend's exact attention (CpuBackend::attention_fwd/bwd, the reference), forward and backward:
//   - inputs are random in [-1, 1), rounded to the GPU dtype (BF16 or F16) on the GPU and the
//     rounded values handed to the CPU, which computes in F32
//   - every GPU output (O, the statistics, dQ, dK, dV) is poisoned (all bits set: NaN) first
//   - O, dQ, dK, dV are compared by max|gpu − cpu| / max|cpu| <= 1e-2, and the rows that must be
//     exactly 0 (sequences without keys, keys past a sequence's key count) are checked to be 0
//   - the padded form over a table of shapes (key padding, causal, Lq ≠ Lk both ways, lengths 1
//     to 1000, head_dim 64 and 128, BF16 and F16); the packed form against the padded one on the
//     same sequences (sm_90+: elsewhere supports() says why and the test skips)
// supports() is checked without a GPU too: the reasons it gives for what cuDNN cannot do.
// Without a GPU the GPU tests skip with "no CUDA device: GPU test skipped".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/attention/cudnn_sdpa.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "gpu_test_util.h"

namespace mh {
namespace {

// cuDNN's SDPA needs sm_80+; an older GPU skips (supports() then says so).
#define MH_REQUIRE_SM80() \
  MH_REQUIRE_GPU();       \
  if (gpu_sm() < 80) GTEST_SKIP() << "sm_" << gpu_sm() << ": cuDNN SDPA needs sm_80+"

using gpu_test::cpu;
using gpu_test::gpu;
int gpu_sm() {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return 10 * major + minor;
}

constexpr double kTol = 1e-2;

// --- host <-> GPU ------------------------------------------------------------------------------
// A GPU tensor of any float dtype -> host F32 (cast on the GPU, then copied).
Tensor download(const Tensor& dev) {
  Tensor f = dev;
  if (dev.dtype() != DType::f32) {
    f = gpu().empty(dev.shape(), DType::f32);
    gpu().cast(dev, f);
  }
  Tensor host = Tensor::empty(dev.shape(), DType::f32);
  gpu().copy(f, host);
  return host;
}

// Random values in [-1, 1) of `shape` as `t` on the GPU, and the same (rounded) values on the host
// in F32: the numbers both backends see.
struct Operand {
  Tensor host, dev;
};
Operand random_operand(const Shape& shape, DType t, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Tensor h = Tensor::empty(shape, DType::f32);
  for (int64_t i = 0; i < h.numel(); ++i) h.data<float>()[i] = u(rng);
  Operand o;
  o.dev = gpu().empty(shape, t);
  gpu().upload(h, o.dev);
  o.host = download(o.dev);
  return o;
}

Tensor upload_i32(const std::vector<int32_t>& v) {
  Tensor h = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  Tensor d = gpu().empty(h.shape(), DType::i32);
  gpu().copy(h, d);
  return d;
}

// All bits set (NaN in F32, BF16 and F16), on the stream the attention runs on.
Tensor poisoned(const Shape& shape, DType t) {
  Tensor d = gpu().empty(shape, t);
  EXPECT_EQ(cudaMemsetAsync(d.raw(), 0xFF, d.nbytes(), gpu().compute_stream()), cudaSuccess);
  return d;
}

// max|a − ref| / max|ref| over rows [r0, r0 + n) of both (all rows when n < 0); NaN counts as
// infinite.
double rel_err(const Tensor& a, const Tensor& ref, int64_t a_row0 = 0, int64_t ref_row0 = 0,
               int64_t rows = -1) {
  const int64_t w = ref.shape().back();
  if (rows < 0) {
    if (a.numel() != ref.numel()) return std::numeric_limits<double>::infinity();
    rows = ref.numel() / w;
  }
  double diff = 0, scale = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < w; ++c) {
      const double x = a.item((a_row0 + r) * w + c), y = ref.item((ref_row0 + r) * w + c);
      if (!std::isfinite(x) || !std::isfinite(y)) return std::numeric_limits<double>::infinity();
      diff = std::max(diff, std::abs(x - y));
      scale = std::max(scale, std::abs(y));
    }
  return scale > 0 ? diff / scale : diff;
}

// Rows [row0, row0 + n) of t hold exactly 0.
bool rows_zero(const Tensor& t, int64_t row0, int64_t n) {
  const int64_t w = t.shape().back();
  for (int64_t i = row0 * w; i < (row0 + n) * w; ++i)
    if (t.item(i) != 0) return false;
  return true;
}

// --- the padded form, table-driven -------------------------------------------------------------
struct SdpaCase {
  std::string name;
  DType dtype;
  int64_t heads, head_dim, len_q, len_k;
  std::vector<int32_t> key_len;  // one per sequence
  bool causal;
};
std::ostream& operator<<(std::ostream& os, const SdpaCase& c) {
  return os << c.name;
}

std::vector<SdpaCase> sdpa_cases() {
  const DType BF16 = DType::bf16, F16 = DType::f16;
  return {
      {"key_padding_bf16_d64", BF16, 2, 64, 63, 63, {63, 40, 1}, false},
      {"key_padding_f16_d128", F16, 2, 128, 65, 65, {65, 64, 7}, false},
      {"causal_bf16_d128", BF16, 2, 128, 65, 65, {65, 30}, true},
      {"causal_f16_d64", F16, 3, 64, 129, 129, {129, 128, 2}, true},
      {"cross_lq_lt_lk_f16_d64", F16, 2, 64, 7, 129, {129, 100}, false},
      {"cross_lq_gt_lk_bf16_d64", BF16, 2, 64, 127, 63, {63, 17}, false},
      {"causal_lq_lt_lk_bf16_d64", BF16, 2, 64, 63, 127, {127, 90}, true},
      {"causal_lq_gt_lk_f16_d128", F16, 3, 128, 127, 65, {65, 17}, true},
      {"one_query_bf16_d64", BF16, 2, 64, 1, 7, {7, 1, 3}, false},
      {"one_key_f16_d64", F16, 2, 64, 7, 1, {1, 1}, true},
      {"sequence_without_keys_bf16_d64", BF16, 2, 64, 33, 33, {0, 33, 5}, false},
      {"causal_without_keys_f16_d128", F16, 2, 128, 33, 47, {47, 0}, true},
      {"long_causal_bf16_d64", BF16, 2, 64, 1000, 1000, {1000}, true},
      {"long_keys_f16_d128", F16, 2, 128, 1000, 1000, {777, 1000}, false},
  };
}

class CudnnSdpaPadded : public ::testing::TestWithParam<SdpaCase> {};

TEST_P(CudnnSdpaPadded, MatchesCpu) {
  MH_REQUIRE_SM80();
  const SdpaCase& c = GetParam();
  const int64_t b = static_cast<int64_t>(c.key_len.size()), h = c.heads, dk = c.head_dim;
  const int64_t d = h * dk, lq = c.len_q, lk = c.len_k;
  std::mt19937_64 rng(std::hash<std::string>{}(c.name));
  const Operand q = random_operand({b * lq, d}, c.dtype, rng);
  const Operand k = random_operand({b * lk, d}, c.dtype, rng);
  const Operand v = random_operand({b * lk, d}, c.dtype, rng);
  const Operand dout = random_operand({b * lq, d}, c.dtype, rng);

  AttnArgs a;
  a.batch = b;
  a.heads = h;
  a.len_q = lq;
  a.len_k = lk;
  a.head_dim = dk;
  a.key_len = c.key_len.data();
  a.causal = c.causal;
  a.scale = 1.0 / std::sqrt(static_cast<double>(dk));
  Tensor out_ref = Tensor::empty({b * lq, d}), dq_ref = Tensor::empty({b * lq, d});
  Tensor dk_ref = Tensor::empty({b * lk, d}), dv_ref = Tensor::empty({b * lk, d});
  AttnSaved saved;
  cpu().attention_fwd(a, q.host, k.host, v.host, out_ref, saved);
  cpu().attention_bwd(a, dout.host, q.host, k.host, v.host, saved, dq_ref, dk_ref, dv_ref);

  const Tensor key_len = upload_i32(c.key_len);
  const cuda::AttnProblem p = cuda::padded_attn_problem(a, c.dtype, key_len.data<int32_t>());
  cuda::CudnnSdpa& sdpa = gpu().cudnn_sdpa();
  std::string why;
  ASSERT_TRUE(sdpa.supports(p, &why)) << why;

  Tensor out = poisoned({b * lq, d}, c.dtype), lse = poisoned({h, b * lq}, DType::f32);
  Tensor dq = poisoned({b * lq, d}, c.dtype), dkk = poisoned({b * lk, d}, c.dtype);
  Tensor dv = poisoned({b * lk, d}, c.dtype);
  const cudaStream_t s = gpu().compute_stream();
  sdpa.fwd(p, {q.dev.raw(), k.dev.raw(), v.dev.raw(), out.raw(), lse.data<float>()}, s);
  sdpa.bwd(p,
           {q.dev.raw(), k.dev.raw(), v.dev.raw(), out.raw(), dout.dev.raw(), lse.data<float>(),
            dq.raw(), dkk.raw(), dv.raw()},
           s);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);

  const Tensor got_out = download(out), got_dq = download(dq);
  const Tensor got_dk = download(dkk), got_dv = download(dv);
  EXPECT_LE(rel_err(got_out, out_ref), kTol) << "O";
  EXPECT_LE(rel_err(got_dq, dq_ref), kTol) << "dQ";
  EXPECT_LE(rel_err(got_dk, dk_ref), kTol) << "dK";
  EXPECT_LE(rel_err(got_dv, dv_ref), kTol) << "dV";
  for (int64_t i = 0; i < b; ++i) {
    const int64_t nk = std::clamp<int64_t>(c.key_len[i], 0, lk);
    if (nk == 0) {
      EXPECT_TRUE(rows_zero(got_out, i * lq, lq)) << "O of sequence " << i << " (no keys)";
      EXPECT_TRUE(rows_zero(got_dq, i * lq, lq)) << "dQ of sequence " << i << " (no keys)";
    }
    EXPECT_TRUE(rows_zero(got_dk, i * lk + nk, lk - nk)) << "dK past key_len, sequence " << i;
    EXPECT_TRUE(rows_zero(got_dv, i * lk + nk, lk - nk)) << "dV past key_len, sequence " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudnnSdpaPadded, ::testing::ValuesIn(sdpa_cases()),
                         [](const ::testing::TestParamInfo<SdpaCase>& i) { return i.param.name; });

// --- the packed form against the padded form ---------------------------------------------------
// Four sequences (one without keys) in both forms: the padded rows past each sequence's query
// count get dO = 0, so they add nothing to dK and dV and the two forms must agree on every real
// row; both are also checked against the CPU.
void packed_vs_padded(bool causal, DType t, int64_t head_dim) {
  const std::vector<int32_t> nq = {5, 63, 1, 33}, nk = {9, 63, 20, 0};
  const int64_t b = 4, h = 2, dk = head_dim, d = h * dk, lq = 63, lk = 63;
  std::mt19937_64 rng(causal ? 11 : 7);
  const Operand q = random_operand({b * lq, d}, t, rng);
  const Operand k = random_operand({b * lk, d}, t, rng);
  const Operand v = random_operand({b * lk, d}, t, rng);
  Operand dout = random_operand({b * lq, d}, t, rng);
  for (int64_t i = 0; i < b; ++i)  // padded query rows: dO = 0
    for (int64_t r = nq[i]; r < lq; ++r)
      for (int64_t c = 0; c < d; ++c) dout.host.data<float>()[(i * lq + r) * d + c] = 0;
  gpu().upload(dout.host, dout.dev);

  // CPU reference (padded).
  AttnArgs a;
  a.batch = b;
  a.heads = h;
  a.len_q = lq;
  a.len_k = lk;
  a.head_dim = dk;
  a.key_len = nk.data();
  a.causal = causal;
  a.scale = 1.0 / std::sqrt(static_cast<double>(dk));
  Tensor out_ref = Tensor::empty({b * lq, d}), dq_ref = Tensor::empty({b * lq, d});
  Tensor dk_ref = Tensor::empty({b * lk, d}), dv_ref = Tensor::empty({b * lk, d});
  AttnSaved saved;
  cpu().attention_fwd(a, q.host, k.host, v.host, out_ref, saved);
  cpu().attention_bwd(a, dout.host, q.host, k.host, v.host, saved, dq_ref, dk_ref, dv_ref);

  // Packed copies of the real rows (gathered on the host from the rounded values).
  std::vector<int32_t> cu_q = {0}, cu_k = {0};
  for (int64_t i = 0; i < b; ++i) {
    cu_q.push_back(cu_q.back() + nq[i]);
    cu_k.push_back(cu_k.back() + nk[i]);
  }
  const int64_t tq = cu_q.back(), tk = cu_k.back();
  auto gather = [&](const Tensor& padded, int64_t len, const std::vector<int32_t>& cu) {
    Tensor host = Tensor::empty({cu.back(), d});
    for (int64_t i = 0; i < b; ++i)
      std::copy_n(padded.data<float>() + i * len * d, (cu[i + 1] - cu[i]) * d,
                  host.data<float>() + cu[i] * d);
    Tensor dev = gpu().empty(host.shape(), t);
    gpu().upload(host, dev);
    return dev;
  };
  const Tensor pq = gather(q.host, lq, cu_q), pk = gather(k.host, lk, cu_k);
  const Tensor pv = gather(v.host, lk, cu_k), pdout = gather(dout.host, lq, cu_q);
  const Tensor key_len = upload_i32(nk), cu_q_dev = upload_i32(cu_q), cu_k_dev = upload_i32(cu_k);

  const cuda::AttnProblem padded = cuda::padded_attn_problem(a, t, key_len.data<int32_t>());
  cuda::AttnProblem packed = padded;
  packed.key_len = nullptr;
  packed.cu_seqlens_q = cu_q_dev.data<int32_t>();
  packed.cu_seqlens_k = cu_k_dev.data<int32_t>();
  packed.max_len_q = *std::max_element(nq.begin(), nq.end());
  packed.max_len_k = *std::max_element(nk.begin(), nk.end());
  packed.total_q = tq;
  packed.total_k = tk;

  cuda::CudnnSdpa& sdpa = gpu().cudnn_sdpa();
  std::string why;
  ASSERT_TRUE(sdpa.supports(padded, &why)) << why;
  if (!sdpa.supports(packed, &why)) GTEST_SKIP() << "packed form unsupported here: " << why;

  const cudaStream_t s = gpu().compute_stream();
  struct Outs {
    Tensor out, lse, dq, dk, dv;
  };
  auto run = [&](const cuda::AttnProblem& p, const Tensor& qq, const Tensor& kk, const Tensor& vv,
                 const Tensor& dd) {
    Outs o{poisoned({p.total_q, d}, t), poisoned({h, p.total_q}, DType::f32),
           poisoned({p.total_q, d}, t), poisoned({p.total_k, d}, t), poisoned({p.total_k, d}, t)};
    sdpa.fwd(p, {qq.raw(), kk.raw(), vv.raw(), o.out.raw(), o.lse.data<float>()}, s);
    sdpa.bwd(p,
             {qq.raw(), kk.raw(), vv.raw(), o.out.raw(), dd.raw(), o.lse.data<float>(), o.dq.raw(),
              o.dk.raw(), o.dv.raw()},
             s);
    return Outs{download(o.out), Tensor(), download(o.dq), download(o.dk), download(o.dv)};
  };
  const Outs pad = run(padded, q.dev, k.dev, v.dev, dout.dev);
  const Outs pk_out = run(packed, pq, pk, pv, pdout);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);

  for (int64_t i = 0; i < b; ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    const int64_t rq = nq[i], rk = nk[i];
    // packed vs padded (cuDNN both), and packed vs the CPU
    EXPECT_LE(rel_err(pk_out.out, pad.out, cu_q[i], i * lq, rq), kTol) << "O";
    EXPECT_LE(rel_err(pk_out.dq, pad.dq, cu_q[i], i * lq, rq), kTol) << "dQ";
    EXPECT_LE(rel_err(pk_out.dk, pad.dk, cu_k[i], i * lk, rk), kTol) << "dK";
    EXPECT_LE(rel_err(pk_out.dv, pad.dv, cu_k[i], i * lk, rk), kTol) << "dV";
    EXPECT_LE(rel_err(pk_out.out, out_ref, cu_q[i], i * lq, rq), kTol) << "O vs CPU";
    EXPECT_LE(rel_err(pk_out.dq, dq_ref, cu_q[i], i * lq, rq), kTol) << "dQ vs CPU";
    EXPECT_LE(rel_err(pk_out.dk, dk_ref, cu_k[i], i * lk, rk), kTol) << "dK vs CPU";
    EXPECT_LE(rel_err(pk_out.dv, dv_ref, cu_k[i], i * lk, rk), kTol) << "dV vs CPU";
    if (rk == 0) {
      EXPECT_TRUE(rows_zero(pk_out.out, cu_q[i], rq)) << "O of a sequence without keys";
      EXPECT_TRUE(rows_zero(pk_out.dq, cu_q[i], rq)) << "dQ of a sequence without keys";
    }
  }
}

TEST(CudnnSdpaPacked, MatchesPaddedBf16) {
  MH_REQUIRE_SM80();
  packed_vs_padded(false, DType::bf16, 64);
}

TEST(CudnnSdpaPacked, MatchesPaddedCausalF16) {
  MH_REQUIRE_SM80();
  packed_vs_padded(true, DType::f16, 128);
}

// --- through the backend ------------------------------------------------------------------------
// model.attention: cudnn reaches CudnnSdpa through CudaBackend::attention_fwd/bwd.
TEST(CudnnSdpaBackend, AttentionImplCudnnMatchesCpu) {
  MH_REQUIRE_SM80();
  const int64_t b = 2, h = 4, dk = 64, d = h * dk, lq = 31, lk = 31;
  const std::vector<int32_t> key_len = {31, 12};
  std::mt19937_64 rng(5);
  const Operand q = random_operand({b, lq, d}, DType::bf16, rng);
  const Operand k = random_operand({b, lk, d}, DType::bf16, rng);
  const Operand v = random_operand({b, lk, d}, DType::bf16, rng);
  const Operand dout = random_operand({b, lq, d}, DType::bf16, rng);
  AttnArgs a;
  a.batch = b;
  a.heads = h;
  a.len_q = lq;
  a.len_k = lk;
  a.head_dim = dk;
  a.key_len = key_len.data();
  a.causal = true;
  a.scale = 0.125;
  a.impl = AttnImpl::cudnn;
  ASSERT_EQ(gpu().attention_impl(a, DType::bf16), AttnImpl::cudnn);

  Tensor out_ref = Tensor::empty({b, lq, d}), dq_ref = Tensor::empty({b, lq, d});
  Tensor dk_ref = Tensor::empty({b, lk, d}), dv_ref = Tensor::empty({b, lk, d});
  AttnSaved ref_saved;
  cpu().attention_fwd(a, q.host, k.host, v.host, out_ref, ref_saved);
  cpu().attention_bwd(a, dout.host, q.host, k.host, v.host, ref_saved, dq_ref, dk_ref, dv_ref);

  Tensor out = poisoned({b, lq, d}, DType::bf16), dq = poisoned({b, lq, d}, DType::bf16);
  Tensor dkk = poisoned({b, lk, d}, DType::bf16), dv = poisoned({b, lk, d}, DType::bf16);
  AttnSaved saved;
  gpu().attention_fwd(a, q.dev, k.dev, v.dev, out, saved);
  EXPECT_EQ(saved.ran, AttnImpl::cudnn);
  gpu().attention_bwd(a, dout.dev, q.dev, k.dev, v.dev, saved, dq, dkk, dv);
  gpu().synchronize();
  EXPECT_LE(rel_err(download(out), out_ref), kTol) << "O";
  EXPECT_LE(rel_err(download(dq), dq_ref), kTol) << "dQ";
  EXPECT_LE(rel_err(download(dkk), dk_ref), kTol) << "dK";
  EXPECT_LE(rel_err(download(dv), dv_ref), kTol) << "dV";
}

// --- supports(): what cuDNN cannot do, said without throwing (no GPU needed) --------------------
cuda::AttnProblem valid_problem() {
  cuda::AttnProblem p;
  p.dtype = DType::bf16;
  p.batch = 2;
  p.heads = 2;
  p.head_dim = 64;
  p.max_len_q = p.max_len_k = 16;
  p.total_q = p.total_k = 32;
  p.scale = 0.125f;
  return p;  // key_len unset, as CudaBackend::attention_impl asks
}

// The reason, or the one every problem gets in a build without the cudnn-frontend headers.
void expect_refused(cuda::CudnnSdpa& sdpa, const cuda::AttnProblem& p, const std::string& reason) {
  std::string why;
  EXPECT_FALSE(sdpa.supports(p, &why));
  EXPECT_TRUE(why.find(reason) != std::string::npos ||
              why.find("cudnn-frontend headers") != std::string::npos)
      << "why: " << why << " (expected to mention: " << reason << ")";
  std::string again;  // the cached answer is the same
  EXPECT_FALSE(sdpa.supports(p, &again));
  EXPECT_EQ(again, why);
}

TEST(CudnnSdpaSupports, RefusesWhatItCannotDo) {
  cuda::CudnnSdpa sdpa(0, nullptr);  // supports() allocates nothing
  cuda::AttnProblem p = valid_problem();
  p.dropout = 0.1f;
  expect_refused(sdpa, p, "dropout mask differs");
  p = valid_problem();
  p.dtype = DType::f32;
  expect_refused(sdpa, p, "BF16/F16");
  p = valid_problem();
  p.head_dim = 60;
  p.total_q = p.total_k = 32;
  expect_refused(sdpa, p, "multiple of 8");
  p = valid_problem();
  p.max_len_q = 0;
  expect_refused(sdpa, p, "non-empty");
  p = valid_problem();
  p.total_q = 31;
  expect_refused(sdpa, p, "total_q");
}

// The graph descriptions themselves (dims, strides, ragged offsets, masks, Stats layout), checked
// by cudnn-frontend's validate() for an sm_90 (H100/H200) and an sm_80 target, GPU or not: every
// padded case above, and its packed form (sm_90 only: cuDNN's backward reads no packed
// statistics on sm_8x, supports() refuses that form there).
TEST(CudnnSdpaGraphs, ValidateOfflineForSm90AndSm80) {
  const int32_t dummy[4] = {};  // packed form: cu_seqlens are only pointers to validate()
  std::string why;
  for (const SdpaCase& c : sdpa_cases()) {
    cuda::AttnProblem p = valid_problem();
    p.dtype = c.dtype;
    p.batch = static_cast<int>(c.key_len.size());
    p.heads = static_cast<int>(c.heads);
    p.head_dim = static_cast<int>(c.head_dim);
    p.max_len_q = static_cast<int>(c.len_q);
    p.max_len_k = static_cast<int>(c.len_k);
    p.total_q = int64_t{p.batch} * p.max_len_q;
    p.total_k = int64_t{p.batch} * p.max_len_k;
    p.causal = c.causal;
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    if (!cuda::CudnnSdpa::validate_graphs(p, 90, &why) &&
        why.find("cudnn-frontend headers") != std::string::npos)
      GTEST_SKIP() << why;
    EXPECT_TRUE(cuda::CudnnSdpa::validate_graphs(p, 90, &why)) << c.name << " sm_90: " << why;
    EXPECT_TRUE(cuda::CudnnSdpa::validate_graphs(p, 80, &why)) << c.name << " sm_80: " << why;
    p.cu_seqlens_q = p.cu_seqlens_k = dummy;
    EXPECT_TRUE(cuda::CudnnSdpa::validate_graphs(p, 90, &why)) << c.name << " packed: " << why;
    EXPECT_FALSE(cuda::CudnnSdpa::validate_graphs(p, 80, &why)) << c.name << " packed sm_80";
  }
  cuda::AttnProblem one = valid_problem();  // the backward cuDNN documents as unsupported
  one.max_len_q = one.max_len_k = 1;
  one.total_q = one.total_k = one.batch;
  EXPECT_FALSE(cuda::CudnnSdpa::validate_graphs(one, 90, &why));
  EXPECT_NE(why.find("backward"), std::string::npos) << why;
}

TEST(CudnnSdpaSupports, WithoutGpuSaysSoAndDoesNotThrow) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present: CudnnSdpaPadded covers it";
  cuda::CudnnSdpa sdpa(0, nullptr);
  expect_refused(sdpa, valid_problem(), "no CUDA device");
}

}  // namespace
}  // namespace mh
