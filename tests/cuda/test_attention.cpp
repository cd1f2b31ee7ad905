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
//   - hopper (the sm_90a forward, flash_attention_fwd_sm90, with custom's backward): the same
//     cases through the launchers and CudaBackend, against the CPU and against custom; on a GPU
//     other than sm_90 those tests skip ("not an sm_90 GPU: Hopper test skipped"), and one test
//     checks that impl hopper then runs custom
// Without a GPU every test skips with "no CUDA device: GPU test skipped".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_common.h"
#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/cudnn_sdpa.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "gpu_test_util.h"

namespace mh {
namespace {

constexpr DType F64 = DType::f64, F32 = DType::f32, BF16 = DType::bf16, F16 = DType::f16;
constexpr double kTol = 1e-2;

using gpu_test::cpu;
using gpu_test::gpu;

// --- host data ----------------------------------------------------------------------------------

float round_to(DType t, float v) {
  return t == BF16 ? __bfloat162float(__float2bfloat16(v)) : __half2float(__float2half(v));
}

// A host F64 tensor of random values ±[0.1, 1) · mag, each exactly representable in `t`.
Tensor random_host(const Shape& shape, DType t, std::mt19937_64& rng, float mag = 1) {
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  std::bernoulli_distribution sign(0.5);
  Tensor h = Tensor::empty(shape, F64);
  for (int64_t i = 0; i < h.numel(); ++i)
    h.data<double>()[i] = round_to(t, (sign(rng) ? mag : -mag) * u(rng));
  return h;
}

// Host F64 (values representable in t) -> a device tensor of dtype t.
Tensor to_gpu(const Tensor& host, DType t) {
  Tensor f = Tensor::empty(host.shape(), F32);
  for (int64_t i = 0; i < host.numel(); ++i)
    f.data<float>()[i] = static_cast<float>(host.data<double>()[i]);
  Tensor d = gpu().empty(host.shape(), t);
  gpu().upload(f, d);
  return d;
}

// A device tensor (BF16, F16 or F32) -> host F64.
Tensor to_host(const Tensor& dev) {
  Tensor f = dev;
  if (dev.dtype() != F32) {
    f = gpu().empty(dev.shape(), F32);
    gpu().cast(dev, f);
  }
  Tensor h = Tensor::empty(dev.shape(), F32);
  gpu().copy(f, h);  // synchronizes the compute stream
  Tensor out = Tensor::empty(dev.shape(), F64);
  for (int64_t i = 0; i < h.numel(); ++i) out.data<double>()[i] = h.data<float>()[i];
  return out;
}

Tensor to_gpu_i32(const std::vector<int32_t>& v) {
  Tensor h = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  Tensor d = gpu().empty(h.shape(), DType::i32);
  gpu().copy(h, d);
  return d;
}

// All bits set (NaN in F32, BF16 and F16), on the compute stream every launch here uses.
void poison(Tensor& t) {
  ASSERT_EQ(cudaMemsetAsync(t.raw(), 0xFF, t.nbytes(), gpu().compute_stream()), cudaSuccess);
}

// max|a − ref| / max|ref|; a NaN, an inf where ref is finite, or a size mismatch is infinite.
// Infinite entries that agree (the lse of a row without keys) count as equal.
double rel_err(const Tensor& a, const Tensor& ref) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (a.numel() != ref.numel()) return inf;
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.item(i), r = ref.item(i);
    if (std::isinf(r) && x == r) continue;
    if (!std::isfinite(x) || !std::isfinite(r)) return inf;
    diff = std::max(diff, std::abs(x - r));
    scale = std::max(scale, std::abs(r));
  }
  return scale > 0 ? diff / scale : diff;
}

// --- problems -----------------------------------------------------------------------------------

// One padded problem: B sequences of len_q queries and len_k keys, key_len[b] of them valid.
struct Geo {
  const char* name;
  int batch, heads, len_q, len_k;
  std::vector<int32_t> key_len;
  bool causal;
};

// Every mask mode, lengths around the tile sizes, Lq ≠ Lk both ways; key_len 0 and 1 appear with
// and without the causal mask. Small batch · heads: the F64 reference is the test's cost.
std::vector<Geo> mask_geos() {
  return {
      {"len1", 2, 2, 1, 1, {1, 1}, false},
      {"len7", 2, 3, 7, 7, {7, 7}, false},
      {"len63_causal", 2, 2, 63, 63, {63, 63}, true},
      {"len65_pad", 4, 2, 65, 65, {65, 0, 1, 33}, false},
      {"len127_causal_pad", 4, 2, 127, 127, {127, 0, 1, 64}, true},
      {"len129", 1, 3, 129, 129, {129}, false},
      {"len1000_causal", 1, 2, 1000, 1000, {1000}, true},
      {"len1000_causal_pad", 2, 1, 1000, 1000, {1000, 451}, true},
      {"cross_1x129_pad", 3, 2, 1, 129, {129, 0, 64}, false},
      {"cross_65x127_pad", 3, 2, 65, 127, {127, 0, 1}, false},
      {"cross_129x63_causal_pad", 2, 2, 129, 63, {63, 40}, true},
      {"cross_7x1000_pad", 2, 2, 7, 1000, {1000, 129}, false},
      {"cross_1000x7_causal_pad", 2, 1, 1000, 7, {7, 1}, true},
  };
}

AttnArgs args_of(const Geo& g, int head_dim, double dropout = 0, uint64_t seed = 0,
                 uint64_t offset = 0) {
  AttnArgs a;
  a.batch = g.batch;
  a.heads = g.heads;
  a.len_q = g.len_q;
  a.len_k = g.len_k;
  a.head_dim = head_dim;
  a.key_len = g.key_len.data();
  a.causal = g.causal;
  a.scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  a.dropout = dropout;
  a.seed = seed;
  a.offset = offset;
  return a;
}

// The padded AttnProblem of `a`, as CudaBackend builds it; device key lengths set by the caller.
cuda::AttnProblem problem_of(const AttnArgs& a, DType t) {
  return cuda::padded_attn_problem(a, t, nullptr);
}

// Host inputs (F64): q, dout [rows_q, H·d]; k, v [rows_k, H·d].
struct Inputs {
  Tensor q, k, v, dout;
};
// Host results (F64): o, dq like q; dk, dv like k; lse [H, rows_q] (custom only).
struct Outputs {
  Tensor o, lse, dq, dk, dv;
};

Inputs random_inputs(int64_t rows_q, int64_t rows_k, int64_t row, DType t, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Inputs in;
  in.q = random_host({rows_q, row}, t, rng, 2);
  in.k = random_host({rows_k, row}, t, rng);
  in.v = random_host({rows_k, row}, t, rng);
  in.dout = random_host({rows_q, row}, t, rng);
  return in;
}

// The reference: CpuBackend in F64, forward then backward.
Outputs run_cpu(const AttnArgs& a, const Inputs& in) {
  Outputs r;
  r.o = Tensor::empty(in.q.shape(), F64);
  r.dq = Tensor::empty(in.q.shape(), F64);
  r.dk = Tensor::empty(in.k.shape(), F64);
  r.dv = Tensor::empty(in.v.shape(), F64);
  AttnSaved saved;
  cpu().attention_fwd(a, in.q, in.k, in.v, r.o, saved);
  cpu().attention_bwd(a, in.dout, in.q, in.k, in.v, saved, r.dq, r.dk, r.dv);
  return r;
}

// The row log-sum-exp of scale · Q Kᵀ over the visible keys, [H, B·Lq]; +inf where none is.
Tensor lse_reference(const AttnArgs& a, const Inputs& in) {
  const int64_t row = a.heads * a.head_dim, lq = a.len_q, lk = a.len_k, d = a.head_dim;
  Tensor lse = Tensor::empty({a.heads, a.batch * lq}, F64);
  std::vector<double> s(static_cast<size_t>(std::max<int64_t>(lq * lk, 1)));
  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t h = 0; h < a.heads; ++h) {
      cpu::gemm_rm(false, true, lq, lk, d, a.scale, in.q.data<double>() + b * lq * row + h * d, row,
                   in.k.data<double>() + b * lk * row + h * d, row, 0.0, s.data(), lk);
      for (int64_t i = 0; i < lq; ++i) {
        int64_t n = std::min<int64_t>(a.key_len[b], lk);
        if (a.causal) n = std::min(n, i + 1);
        double& out = lse.data<double>()[h * a.batch * lq + b * lq + i];
        if (n == 0) {
          out = std::numeric_limits<double>::infinity();
          continue;
        }
        const double* r = s.data() + i * lk;
        const double mx = *std::max_element(r, r + n);
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += std::exp(r[j] - mx);
        out = mx + std::log(sum);
      }
    }
  }
  return lse;
}

// Whether the Hopper forward runs here (an sm_90 GPU); if not, why.
bool hopper_available(std::string* why) {
  cuda::AttnProblem p;
  p.dtype = BF16;
  p.batch = p.heads = 1;
  p.head_dim = 64;
  p.max_len_q = p.max_len_k = 1;
  p.total_q = p.total_k = 1;
  return cuda::flash_sm90_supports(p, why);
}
#define MH_REQUIRE_HOPPER()                       \
  MH_REQUIRE_GPU();                               \
  if (std::string why_; !hopper_available(&why_)) \
  GTEST_SKIP() << "not an sm_90 GPU: Hopper test skipped (" << why_ << ")"

// The custom kernels through their launchers: forward, then backward, on poisoned outputs;
// hopper: the forward is flash_attention_fwd_sm90's. `p`'s device arrays (key_len or cu_seqlens)
// are set by the caller.
void run_flash(const cuda::AttnProblem& p, const Inputs& in, Outputs& r, bool hopper = false) {
  std::string why;
  ASSERT_TRUE(cuda::flash_supports(p, &why)) << why;
  if (hopper) {
    ASSERT_TRUE(cuda::flash_sm90_supports(p, &why)) << why;
  }
  Tensor q = to_gpu(in.q, p.dtype), k = to_gpu(in.k, p.dtype), v = to_gpu(in.v, p.dtype);
  Tensor dout = to_gpu(in.dout, p.dtype);
  Tensor o = gpu().empty(in.q.shape(), p.dtype), dq = gpu().empty(in.q.shape(), p.dtype);
  Tensor dk = gpu().empty(in.k.shape(), p.dtype), dv = gpu().empty(in.v.shape(), p.dtype);
  Tensor lse = gpu().empty({p.heads, p.total_q}, F32);
  for (Tensor* t : {&o, &dq, &dk, &dv, &lse}) poison(*t);
  const cudaStream_t s = gpu().compute_stream();
  const cuda::AttnFwdIO fio{q.raw(), k.raw(), v.raw(), o.raw(), lse.data<float>()};
  if (hopper)
    cuda::flash_attention_fwd_sm90(p, fio, s);
  else
    cuda::flash_attention_fwd(p, fio, s);
  const size_t bytes = cuda::flash_attention_bwd_workspace(p);
  Tensor ws = gpu().empty({static_cast<int64_t>((bytes + 3) / 4)}, F32);
  poison(ws);  // the kernels must initialize what they accumulate into
  cuda::flash_attention_bwd(p,
                            {q.raw(), k.raw(), v.raw(), o.raw(), dout.raw(), lse.data<float>(),
                             dq.raw(), dk.raw(), dv.raw()},
                            ws.raw(), s);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  r.o = to_host(o);
  r.lse = to_host(lse);
  r.dq = to_host(dq);
  r.dk = to_host(dk);
  r.dv = to_host(dv);
}

// Through CudaBackend::attention_fwd/bwd with a.impl; `ran` receives the implementation used.
void run_backend(const AttnArgs& a, DType t, const Inputs& in, Outputs& r, AttnImpl* ran) {
  Tensor q = to_gpu(in.q, t), k = to_gpu(in.k, t), v = to_gpu(in.v, t);
  Tensor dout = to_gpu(in.dout, t);
  Tensor o = gpu().empty(in.q.shape(), t), dq = gpu().empty(in.q.shape(), t);
  Tensor dk = gpu().empty(in.k.shape(), t), dv = gpu().empty(in.v.shape(), t);
  for (Tensor* x : {&o, &dq, &dk, &dv}) poison(*x);
  AttnSaved saved;
  gpu().attention_fwd(a, q, k, v, o, saved);
  *ran = saved.ran;
  gpu().attention_bwd(a, dout, q, k, v, saved, dq, dk, dv);
  ASSERT_EQ(cudaStreamSynchronize(gpu().compute_stream()), cudaSuccess);
  r.o = to_host(o);
  r.dq = to_host(dq);
  r.dk = to_host(dk);
  r.dv = to_host(dv);
}

void expect_close(const Outputs& got, const Outputs& ref, double tol, const std::string& what) {
  EXPECT_LE(rel_err(got.o, ref.o), tol) << what << ": O";
  EXPECT_LE(rel_err(got.dq, ref.dq), tol) << what << ": dQ";
  EXPECT_LE(rel_err(got.dk, ref.dk), tol) << what << ": dK";
  EXPECT_LE(rel_err(got.dv, ref.dv), tol) << what << ": dV";
}

std::string label(const Geo& g, DType t, int d) {
  return std::string(g.name) + " " + dtype_name(t) + " d" + std::to_string(d);
}

// --- the custom kernels through their launchers, every mask -------------------------------------

struct TypeDim {
  DType dtype;
  int head_dim;
};
void PrintTo(const TypeDim& t, std::ostream* os) {
  *os << dtype_name(t.dtype) << " d" << t.head_dim;
}
class FlashLaunchers : public ::testing::TestWithParam<TypeDim> {};

TEST_P(FlashLaunchers, EveryMaskAndLengthMatchesCpuF64) {
  MH_REQUIRE_GPU();
  const auto [t, d] = GetParam();
  uint64_t seed = 1;
  for (const Geo& g : mask_geos()) {
    SCOPED_TRACE(label(g, t, d));
    const AttnArgs a = args_of(g, d);
    const Inputs in = random_inputs(int64_t{g.batch} * g.len_q, int64_t{g.batch} * g.len_k,
                                    int64_t{g.heads} * d, t, seed++);
    Outputs ref = run_cpu(a, in);
    ref.lse = lse_reference(a, in);
    cuda::AttnProblem p = problem_of(a, t);
    const Tensor key_len = to_gpu_i32(g.key_len);
    p.key_len = key_len.data<int32_t>();
    Outputs got;
    run_flash(p, in, got);
    if (HasFatalFailure()) return;
    expect_close(got, ref, kTol, label(g, t, d));
    // lse is F32 arithmetic on exact inputs, so far tighter than the 16-bit outputs; a wrong
    // layout or logarithm base is off by O(1).
    EXPECT_LE(rel_err(got.lse, ref.lse), 1e-4) << "lse";
  }
}

INSTANTIATE_TEST_SUITE_P(Attention, FlashLaunchers,
                         ::testing::Values(TypeDim{BF16, 64}, TypeDim{BF16, 128}, TypeDim{F16, 64},
                                           TypeDim{F16, 128}),
                         [](const ::testing::TestParamInfo<TypeDim>& i) {
                           return std::string(dtype_name(i.param.dtype)) + "_d" +
                                  std::to_string(i.param.head_dim);
                         });

// --- the Hopper forward through the launchers: against the CPU and against custom --------------

class HopperLaunchers : public ::testing::TestWithParam<TypeDim> {};

TEST_P(HopperLaunchers, EveryMaskAndLengthMatchesCpuF64AndCustom) {
  MH_REQUIRE_HOPPER();
  const auto [t, d] = GetParam();
  uint64_t seed = 1;
  for (const Geo& g : mask_geos()) {
    SCOPED_TRACE(label(g, t, d));
    const AttnArgs a = args_of(g, d);
    const Inputs in = random_inputs(int64_t{g.batch} * g.len_q, int64_t{g.batch} * g.len_k,
                                    int64_t{g.heads} * d, t, seed++);
    Outputs ref = run_cpu(a, in);
    ref.lse = lse_reference(a, in);
    cuda::AttnProblem p = problem_of(a, t);
    const Tensor key_len = to_gpu_i32(g.key_len);
    p.key_len = key_len.data<int32_t>();
    Outputs got, custom;
    run_flash(p, in, got, true);
    if (HasFatalFailure()) return;
    run_flash(p, in, custom);
    if (HasFatalFailure()) return;
    expect_close(got, ref, kTol, label(g, t, d) + " hopper vs cpu");
    EXPECT_LE(rel_err(got.lse, ref.lse), 1e-4) << "lse";
    expect_close(got, custom, 2 * kTol, label(g, t, d) + " hopper vs custom");
    EXPECT_LE(rel_err(got.lse, custom.lse), 1e-4) << "lse vs custom";
  }
}

INSTANTIATE_TEST_SUITE_P(Attention, HopperLaunchers,
                         ::testing::Values(TypeDim{BF16, 64}, TypeDim{BF16, 128}, TypeDim{F16, 64},
                                           TypeDim{F16, 128}),
                         [](const ::testing::TestParamInfo<TypeDim>& i) {
                           return std::string(dtype_name(i.param.dtype)) + "_d" +
                                  std::to_string(i.param.head_dim);
                         });

// impl hopper: the Hopper forward on sm_90, custom (with a note) on any other GPU.
TEST(AttentionBackend, HopperRunsOnSm90AndFallsBackToCustom) {
  MH_REQUIRE_GPU();
  std::string why;
  const bool sm90 = hopper_available(&why);
  for (const Geo& g : mask_geos())
    for (DType t : {BF16, F16})
      for (int d : {64, 128}) {
        AttnArgs a = args_of(g, d);
        a.impl = AttnImpl::hopper;
        EXPECT_EQ(gpu().attention_impl(a, t), sm90 ? AttnImpl::hopper : AttnImpl::custom)
            << label(g, t, d);
      }
  AttnArgs a = args_of(mask_geos()[0], 64);
  a.impl = AttnImpl::hopper;
  EXPECT_EQ(gpu().attention_impl(a, F32), AttnImpl::naive);
}

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

    // The Hopper forward on the same two forms (on an sm_90 GPU only).
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
        expect_close(got, ref, kTol, what + " launchers");
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
          expect_close(via, ref, kTol,
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

// --- the three implementations against each other ------------------------------------------------

const std::vector<TypeDim> kCompareTypes = {{BF16, 64}, {F16, 128}};

const std::vector<Geo>& compare_geos() {
  static const std::vector<Geo> g = {
      {"len257_causal_pad", 3, 4, 257, 257, {257, 1, 100}, true},
      {"cross_100x77_pad", 4, 4, 100, 77, {77, 50, 0, 13}, false},
  };
  return g;
}

// Each implementation within kTol of the F64 reference, and so within 2·kTol of each other.
void compare_impls(const std::vector<AttnImpl>& impls) {
  uint64_t seed = 900;
  for (const Geo& g : compare_geos())
    for (const TypeDim td : kCompareTypes) {
      const std::string what = label(g, td.dtype, td.head_dim);
      SCOPED_TRACE(what);
      AttnArgs a = args_of(g, td.head_dim);
      const Inputs in = random_inputs(int64_t{g.batch} * g.len_q, int64_t{g.batch} * g.len_k,
                                      int64_t{g.heads} * td.head_dim, td.dtype, seed++);
      const Outputs ref = run_cpu(a, in);
      std::vector<Outputs> got(impls.size());
      for (size_t i = 0; i < impls.size(); ++i) {
        a.impl = impls[i];
        AttnImpl ran = AttnImpl::naive;
        run_backend(a, td.dtype, in, got[i], &ran);
        if (::testing::Test::HasFatalFailure()) return;
        EXPECT_EQ(ran, impls[i]);
        expect_close(got[i], ref, kTol, what + " impl " + std::to_string(i) + " vs cpu");
      }
      for (size_t i = 1; i < impls.size(); ++i)
        expect_close(got[i], got[0], 2 * kTol, what + " impl " + std::to_string(i) + " vs 0");
    }
}

TEST(AttentionImpls, CustomAndNaiveAgree) {
  MH_REQUIRE_GPU();
  compare_impls({AttnImpl::custom, AttnImpl::naive});
}

TEST(AttentionImpls, HopperAgreesWithCustomAndNaive) {
  MH_REQUIRE_HOPPER();
  compare_impls({AttnImpl::hopper, AttnImpl::custom, AttnImpl::naive});
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
