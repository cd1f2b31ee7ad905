// The fused attention implementations (model.attention: custom, cudnn; and naive) against the CPU
// backend, the reference.
//   - inputs are fresh random values (|x| in [0.1, 1) with random signs, Q twice that so that the
//     softmax is not flat), drawn on the host, rounded to the GPU's dtype (BF16 or F16); the
//     reference, CpuBackend in F64, computes on exactly those numbers
//   - every output (O, the row log-sum-exp, dQ, dK, dV) is poisoned with NaN before every run
//   - error = max|gpu − ref| / max|ref| over the tensor (test_cuda_backend.cpp's rel_err), ≤ 1e-2
//     for BF16 and F16 alike: ~3 units in BF16's last place, the 1e-2 of the other BF16 tests
//   - the shapes cover every mask (none, key padding with key_len 0 and 1, causal, causal with
//     padding), lengths that are not tile multiples (1, 7, 63, 65, 127, 129, 1000), Lq ≠ Lk,
//     head_dim 64 and 128
//   - dropout: the mask is defined bit-exactly (backend.h, attention_problem.h), so the kernels
//     must equal the reference with dropout on; a statistical test checks the drop rate and that
//     the expected output is the output without dropout
//   - the custom kernels run through their launchers (AttnProblem, padded and packed) and through
//     CudaBackend::attention_fwd/bwd; custom, naive and cudnn are compared with each other
//   - hopper (the sm_90a forward): the same cases, in test_attention_sm90.cpp; the helpers both
//     files use are in attention_test_util.h
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "attention_test_util.h"

namespace mh {
namespace {

using namespace attention_test;

// --- the custom kernels through their launchers, every mask -------------------------------------

class FlashLaunchers : public ::testing::TestWithParam<TypeDim> {};

TEST_P(FlashLaunchers, EveryMaskAndLengthMatchesCpuF64) {
  MH_REQUIRE_GPU();
  const auto [t, d] = GetParam();
  uint64_t seed = 1;
  for (const Geo& g : mask_geos()) {
    SCOPED_TRACE(label(g, t, d));
    const LauncherCase c = launcher_case(g, t, d, seed++);
    Outputs got;
    run_flash(c.p, c.in, got);
    if (HasFatalFailure()) return;
    expect_close(got, c.ref, kTol, label(g, t, d));
    // lse is F32 arithmetic on exact inputs, so far tighter than the 16-bit outputs; a wrong
    // layout or logarithm base is off by O(1).
    EXPECT_LE(rel_err(got.lse, c.ref.lse), 1e-4) << "lse";
  }
}

INSTANTIATE_TEST_SUITE_P(Attention, FlashLaunchers, ::testing::ValuesIn(kAllTypeDims),
                         type_dim_name);

// --- through CudaBackend: impl = custom runs custom
// -----------------------------------------------

TEST(AttentionBackend, CustomIsChosenForSupportedShapes) {
  MH_REQUIRE_GPU();
  for (const Geo& g : mask_geos())
    for (DType t : {BF16, F16})
      for (int d : {64, 128}) {
        AttnArgs a = args_of(g, d, 0.1, 7, 3);
        a.impl = AttnImpl::custom;
        EXPECT_EQ(gpu().attention_impl(a, t), AttnImpl::custom) << label(g, t, d);
      }
  // F32 attention is naive whatever the choice (AttnImpl's contract).
  AttnArgs a = args_of(mask_geos()[3], 64);
  a.impl = AttnImpl::custom;
  EXPECT_EQ(gpu().attention_impl(a, F32), AttnImpl::naive);
}

TEST(AttentionBackend, CustomMatchesCpuF64) {
  MH_REQUIRE_GPU();
  const std::vector<Geo> geos = mask_geos();
  // A subset: the launcher tests cover every shape; these exercise the backend's plumbing (key
  // length upload, saved state, workspace) for each mask kind.
  const std::vector<const char*> names = {"len65_pad", "len127_causal_pad", "cross_65x127_pad",
                                          "cross_129x63_causal_pad"};
  uint64_t seed = 100;
  for (const Geo& g : geos) {
    if (std::find_if(names.begin(), names.end(),
                     [&](const char* n) { return std::string(n) == g.name; }) == names.end())
      continue;
    for (DType t : {BF16, F16}) {
      const int d = t == BF16 ? 64 : 128;
      SCOPED_TRACE(label(g, t, d));
      AttnArgs a = args_of(g, d);
      a.impl = AttnImpl::custom;
      const Inputs in = random_inputs(int64_t{g.batch} * g.len_q, int64_t{g.batch} * g.len_k,
                                      int64_t{g.heads} * d, t, seed++);
      const Outputs ref = run_cpu(a, in);
      Outputs got;
      AttnImpl ran = AttnImpl::naive;
      run_backend(a, t, in, got, &ran);
      if (HasFatalFailure()) return;
      EXPECT_EQ(ran, AttnImpl::custom);
      expect_close(got, ref, kTol, label(g, t, d));
    }
  }
}

// --- packed (cu_seqlens) against padded
// -----------------------------------------------------------

// A translation-like batch: 12 sentences of 10..100 tokens (the shortest and longest included),
// packed; the same sentences padded to the longest. Padding rows hold random values (masked keys
// and extra queries must not matter) and zero dO, so padded gradients equal the packed ones.
TEST(AttentionPacked, PackedEqualsPaddedAndCpuF64) {
  MH_REQUIRE_GPU();
  struct Form {
    const char* name;
    bool self;  // self-attention (Lq = Lk per sentence) or cross (independent lengths)
    bool causal;
    double dropout;
  };
  const DType t = BF16;
  const int heads = 4, d = 64, batch = 12;
  for (const Form& f : {Form{"self_causal", true, true, 0.0}, Form{"cross", false, false, 0.0},
                        Form{"self_causal_dropout", true, true, 0.1}}) {
    SCOPED_TRACE(f.name);
    std::mt19937_64 rng(std::hash<std::string>{}(f.name));
    std::uniform_int_distribution<int32_t> len(10, 100);
    std::vector<int32_t> lq(batch), lk(batch);
    for (int b = 0; b < batch; ++b) {
      lq[b] = b == 0 ? 10 : b == 1 ? 100 : len(rng);
      lk[b] = f.self ? lq[b] : b == 0 ? 100 : b == 1 ? 10 : len(rng);
    }
    std::vector<int32_t> cu_q(batch + 1, 0), cu_k(batch + 1, 0);
    for (int b = 0; b < batch; ++b) cu_q[b + 1] = cu_q[b] + lq[b], cu_k[b + 1] = cu_k[b] + lk[b];
    const int max_q = *std::max_element(lq.begin(), lq.end());
    const int max_k = *std::max_element(lk.begin(), lk.end());
    const int64_t row = int64_t{heads} * d;

    // Padded inputs; the packed ones are their valid rows.
    Inputs pad = random_inputs(int64_t{batch} * max_q, int64_t{batch} * max_k, row, t, 77);
    for (int b = 0; b < batch; ++b)
      for (int i = lq[b]; i < max_q; ++i)
        std::fill_n(pad.dout.data<double>() + (int64_t{b} * max_q + i) * row, row, 0.0);
    // Rows [b·max_len, b·max_len + len[b]) of a padded [B·max_len, row] tensor, stacked.
    auto valid = [&](const Tensor& x, int max_len, const std::vector<int32_t>& lens) {
      int64_t total = 0;
      for (int32_t l : lens) total += l;
      Tensor out = Tensor::empty({total, x.dim(-1)}, F64);
      int64_t r = 0;
      for (int b = 0; b < batch; ++b)
        for (int i = 0; i < lens[b]; ++i, ++r)
          std::copy_n(x.data<double>() + (int64_t{b} * max_len + i) * x.dim(-1), x.dim(-1),
                      out.data<double>() + r * x.dim(-1));
      return out;
    };
    Inputs packed{valid(pad.q, max_q, lq), valid(pad.k, max_k, lk), valid(pad.v, max_k, lk),
                  valid(pad.dout, max_q, lq)};

    const Geo g{f.name, batch, heads, max_q, max_k, lk, f.causal};
    const AttnArgs a = args_of(g, d, f.dropout, 0x9E3779B97F4A7C15ull, 42);
    const Outputs ref = run_cpu(a, pad);

    cuda::AttnProblem pp = problem_of(a, t);
    const Tensor key_len = to_gpu_i32(lk);
    pp.key_len = key_len.data<int32_t>();
    Outputs got_pad;
    run_flash(pp, pad, got_pad);
    if (HasFatalFailure()) return;

    cuda::AttnProblem pk = problem_of(a, t);  // max_len_q/k: the longest sentences
    pk.total_q = cu_q.back();
    pk.total_k = cu_k.back();
    const Tensor cq = to_gpu_i32(cu_q), ck = to_gpu_i32(cu_k);
    pk.cu_seqlens_q = cq.data<int32_t>();
    pk.cu_seqlens_k = ck.data<int32_t>();
    Outputs got_packed;
    run_flash(pk, packed, got_packed);
    if (HasFatalFailure()) return;

    const Outputs ref_valid{valid(ref.o, max_q, lq), Tensor(), valid(ref.dq, max_q, lq),
                            valid(ref.dk, max_k, lk), valid(ref.dv, max_k, lk)};
    const Outputs pad_valid{valid(got_pad.o, max_q, lq), Tensor(), valid(got_pad.dq, max_q, lq),
                            valid(got_pad.dk, max_k, lk), valid(got_pad.dv, max_k, lk)};
    expect_close(got_pad, ref, kTol, "padded vs cpu");
    expect_close(got_packed, ref_valid, kTol, "packed vs cpu");
    expect_close(got_packed, pad_valid, kTol, "packed vs padded");

    // The Hopper kernels on the same two forms (on an sm_90 GPU only).
    if (std::string why; hopper_available(&why)) {
      Outputs h_pad, h_packed;
      run_flash(pp, pad, h_pad, true);
      if (HasFatalFailure()) return;
      run_flash(pk, packed, h_packed, true);
      if (HasFatalFailure()) return;
      expect_close(h_pad, ref, kTol, "hopper padded vs cpu");
      expect_close(h_packed, ref_valid, kTol, "hopper packed vs cpu");
      expect_close(h_packed, got_packed, 2 * kTol, "hopper packed vs custom packed");
    }
  }
}

// --- dropout ------------------------------------------------------------------------------------

// The mask is a pure function of (seed, offset, element index): with dropout on, the kernels
// equal the reference. 64-bit seed and offset with high bits set catch a truncation.
TEST(AttentionDropout, MatchesCpuF64WithTheSameSeed) {
  MH_REQUIRE_GPU();
  const std::vector<Geo> geos = {{"len129_causal_pad", 3, 2, 129, 129, {129, 1, 70}, true},
                                 {"cross_65x200_pad", 2, 3, 65, 200, {200, 0}, false}};
  const uint64_t seed = 0xFEDCBA9876543210ull, offset = (uint64_t{5} << 32) + 17;
  uint64_t data_seed = 500;
  for (const Geo& g : geos)
    for (const TypeDim td : {TypeDim{BF16, 64}, TypeDim{F16, 128}})
      for (double p : {0.1, 0.25}) {
        const std::string what = label(g, td.dtype, td.head_dim) + " p " + std::to_string(p);
        SCOPED_TRACE(what);
        AttnArgs a = args_of(g, td.head_dim, p, seed, offset);
        const Inputs in = random_inputs(int64_t{g.batch} * g.len_q, int64_t{g.batch} * g.len_k,
                                        int64_t{g.heads} * td.head_dim, td.dtype, data_seed++);
        const Outputs ref = run_cpu(a, in);
        // Launchers.
        cuda::AttnProblem pr = problem_of(a, td.dtype);
        const Tensor key_len = to_gpu_i32(g.key_len);
        pr.key_len = key_len.data<int32_t>();
        Outputs got;
        run_flash(pr, in, got);
        if (HasFatalFailure()) return;
        // dQ, dK: against the gradients for the O the fused backward read. A one-key row's
        // exact dS is 0, and with dropout that O is not representable (attention_given_output.h).
        expect_close(got, reference_given_output(a, in, ref, got.o), kTol, what + " launchers");
        // CudaBackend, custom and naive (and hopper on sm_90).
        std::vector<AttnImpl> impls = {AttnImpl::custom, AttnImpl::naive};
        if (std::string why; hopper_available(&why)) impls.push_back(AttnImpl::hopper);
        for (AttnImpl impl : impls) {
          a.impl = impl;
          Outputs via;
          AttnImpl ran = AttnImpl::naive;
          run_backend(a, td.dtype, in, via, &ran);
          if (HasFatalFailure()) return;
          EXPECT_EQ(ran, impl);
          expect_close(
              via, impl == AttnImpl::naive ? ref : reference_given_output(a, in, ref, via.o), kTol,
              what + (impl == AttnImpl::custom  ? " custom"
                      : impl == AttnImpl::naive ? " naive"
                                                : " hopper"));
        }
      }
}

// With V = identity (Lk = head_dim), output row i of a head is that head's probability row, after
// dropout: O[i, j] = P[i, j] · keep[i, j] / (1 − p). So the zeros of O count the drops, and each
// row sum of O is an unbiased estimate of the row sum without dropout, with variance
// Σ_j P[i, j]² · p / (1 − p). Both are checked within 4 standard deviations.
TEST(AttentionDropout, DropRateAndUnbiasedOutput) {
  MH_REQUIRE_GPU();
  const int batch = 2, heads = 4, d = 64, lq = 512, lk = d;
  const int64_t row = int64_t{heads} * d;
  const std::vector<int32_t> lens(batch, lk);
  std::mt19937_64 rng(9);
  Tensor q = random_host({int64_t{batch} * lq, row}, BF16, rng);
  Tensor k = random_host({int64_t{batch} * lk, row}, BF16, rng);
  Tensor v = Tensor::zeros({int64_t{batch} * lk, row}, F64);
  for (int b = 0; b < batch; ++b)
    for (int j = 0; j < lk; ++j)
      for (int h = 0; h < heads; ++h) v.data<double>()[(int64_t{b} * lk + j) * row + h * d + j] = 1;
  const Tensor key_len = to_gpu_i32(lens);
  const Tensor qd = to_gpu(q, BF16), kd = to_gpu(k, BF16), vd = to_gpu(v, BF16);
  auto forward = [&](double p, uint64_t seed) {
    const Geo g{"identity_v", batch, heads, lq, lk, lens, false};
    cuda::AttnProblem pr = problem_of(args_of(g, d, p, seed, 1), BF16);
    pr.key_len = key_len.data<int32_t>();
    Tensor o = gpu().empty(q.shape(), BF16), lse = gpu().empty({heads, pr.total_q}, F32);
    poison(o);
    poison(lse);
    cuda::flash_attention_fwd(pr, {qd.raw(), kd.raw(), vd.raw(), o.raw(), lse.data<float>()},
                              gpu().compute_stream());
    return to_host(o);
  };
  const Tensor base = forward(0, 0);
  const double* pb = base.data<double>();
  for (double p : {0.1, 0.3}) {
    SCOPED_TRACE("p " + std::to_string(p));
    const Tensor o = forward(p, 1234);
    const double* po = o.data<double>();
    int64_t n = 0, dropped = 0;
    double diff = 0, var = 0;  // Σ over rows of (row sum with − without dropout), its variance
    for (int64_t r = 0; r < int64_t{batch} * lq; ++r)
      for (int h = 0; h < heads; ++h) {
        double with = 0, without = 0;
        for (int j = 0; j < d; ++j) {
          const double x = po[r * row + h * d + j], x0 = pb[r * row + h * d + j];
          ASSERT_TRUE(std::isfinite(x) && x0 > 0) << "row " << r << " head " << h << " col " << j;
          n += 1;
          dropped += x == 0;
          with += x;
          without += x0;
          var += x0 * x0 * p / (1 - p);
        }
        diff += with - without;
      }
    const double rate = static_cast<double>(dropped) / static_cast<double>(n);
    EXPECT_LE(std::abs(rate - p), 4 * std::sqrt(p * (1 - p) / static_cast<double>(n)))
        << "drop rate " << rate << " over " << n << " probabilities";
    EXPECT_LE(std::abs(diff), 4 * std::sqrt(var)) << "Σ(row sums with − without dropout)";
  }
}

TEST(AttentionImpls, CustomAndNaiveAgree) {
  MH_REQUIRE_GPU();
  compare_impls({AttnImpl::custom, AttnImpl::naive});
}

TEST(AttentionImpls, CudnnAgreesWithCustomAndNaive) {
  MH_REQUIRE_GPU();
  for (const Geo& g : compare_geos())
    for (const TypeDim td : kCompareTypes) {
      std::string why;
      const cuda::AttnProblem p = problem_of(args_of(g, td.head_dim), td.dtype);
      if (!gpu().cudnn_sdpa().supports(p, &why))
        GTEST_SKIP() << "cuDNN SDPA does not run " << label(g, td.dtype, td.head_dim) << ": "
                     << why;
    }
  compare_impls({AttnImpl::cudnn, AttnImpl::custom, AttnImpl::naive});
}

}  // namespace
}  // namespace mh
