// What the GPU attention tests share (test_attention.cpp: custom, cudnn, naive;
// test_attention_sm90.cpp: the Hopper forward): host data rounded to the GPU's dtype, the problems
// (every mask and length), the F64 reference, runs through the launchers and through CudaBackend,
// and the comparison of the implementations with each other. See test_attention.cpp's header for
// what is checked.
#pragma once

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

#include "../common/attention_given_output.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_common.h"
#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/cudnn_sdpa.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/stream_deadline.h"
#include "gpu_test_util.h"

namespace mh::attention_test {

constexpr DType F64 = DType::f64, F32 = DType::f32, BF16 = DType::bf16, F16 = DType::f16;
constexpr double kTol = 1e-2;

using cuda::sync_within;
using gpu_test::cpu;
using gpu_test::gpu;

// --- host data ----------------------------------------------------------------------------------

inline float round_to(DType t, float v) {
  return t == BF16 ? __bfloat162float(__float2bfloat16(v)) : __half2float(__float2half(v));
}

// A host F64 tensor of random values ±[0.1, 1) · mag, each exactly representable in `t`.
inline Tensor random_host(const Shape& shape, DType t, std::mt19937_64& rng, float mag = 1) {
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  std::bernoulli_distribution sign(0.5);
  Tensor h = Tensor::empty(shape, F64);
  for (int64_t i = 0; i < h.numel(); ++i)
    h.data<double>()[i] = round_to(t, (sign(rng) ? mag : -mag) * u(rng));
  return h;
}

// Host F64 (values representable in t) -> a device tensor of dtype t.
inline Tensor to_gpu(const Tensor& host, DType t) {
  Tensor f = Tensor::empty(host.shape(), F32);
  for (int64_t i = 0; i < host.numel(); ++i)
    f.data<float>()[i] = static_cast<float>(host.data<double>()[i]);
  Tensor d = gpu().empty(host.shape(), t);
  gpu().upload(f, d);
  return d;
}

// A device tensor (BF16, F16 or F32) -> host F64.
inline Tensor to_host(const Tensor& dev) {
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

inline Tensor to_gpu_i32(const std::vector<int32_t>& v) {
  Tensor h = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  Tensor d = gpu().empty(h.shape(), DType::i32);
  gpu().copy(h, d);
  return d;
}

// All bits set (NaN in F32, BF16 and F16), on the compute stream every launch here uses.
inline void poison(Tensor& t) {
  ASSERT_EQ(cudaMemsetAsync(t.raw(), 0xFF, t.nbytes(), gpu().compute_stream()), cudaSuccess);
}

// max|a − ref| / max|ref|; a NaN, an inf where ref is finite, or a size mismatch is infinite.
// Infinite entries that agree (the lse of a row without keys) count as equal.
inline double rel_err(const Tensor& a, const Tensor& ref) {
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
inline std::vector<Geo> mask_geos() {
  return {
      {"len1", 2, 2, 1, 1, {1, 1}, false},
      {"len7", 2, 3, 7, 7, {7, 7}, false},
      {"len63_causal", 2, 2, 63, 63, {63, 63}, true},
      // every sequence in one key block (the backward stores dQ directly), one without keys
      {"len40_pad", 3, 2, 40, 40, {40, 0, 17}, false},
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

inline AttnArgs args_of(const Geo& g, int head_dim, double dropout = 0, uint64_t seed = 0,
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
inline cuda::AttnProblem problem_of(const AttnArgs& a, DType t) {
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

inline Inputs random_inputs(int64_t rows_q, int64_t rows_k, int64_t row, DType t, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Inputs in;
  in.q = random_host({rows_q, row}, t, rng, 2);
  in.k = random_host({rows_k, row}, t, rng);
  in.v = random_host({rows_k, row}, t, rng);
  in.dout = random_host({rows_q, row}, t, rng);
  return in;
}

// The reference: CpuBackend in F64, forward then backward.
inline Outputs run_cpu(const AttnArgs& a, const Inputs& in) {
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

// `ref` with dQ and dK for the O that a fused backward read (o_used, the forward's rounded output)
// in place of the exact one: what that backward computes exactly (attention_given_output.h).
inline Outputs reference_given_output(const AttnArgs& a, const Inputs& in, const Outputs& ref,
                                      const Tensor& o_used) {
  Outputs r{ref.o, ref.lse, ref.dq.clone(), ref.dk.clone(), ref.dv};
  correct_for_stored_output(a, in.q, in.k, in.v, in.dout, ref.o, o_used, r.dq, r.dk);
  return r;
}

// The row log-sum-exp of scale · Q Kᵀ over the visible keys, [H, B·Lq]; +inf where none is.
inline Tensor lse_reference(const AttnArgs& a, const Inputs& in) {
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
inline bool hopper_available(std::string* why) {
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
// hopper: the Hopper kernels, flash_attention_fwd_sm90 and flash_attention_bwd_sm90. `p`'s device
// arrays (key_len or cu_seqlens) are set by the caller.
inline void run_flash(const cuda::AttnProblem& p, const Inputs& in, Outputs& r,
                      bool hopper = false) {
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
  // Each pass waited for on its own, so that a hang names the kernel.
  ASSERT_EQ(sync_within(s, hopper ? "flash_attention_fwd_sm90" : "flash_attention_fwd"),
            cudaSuccess);
  const size_t bytes = cuda::flash_attention_bwd_workspace(p);
  Tensor ws = gpu().empty({static_cast<int64_t>((bytes + 3) / 4)}, F32);
  poison(ws);  // the kernels must initialize what they accumulate into
  const cuda::AttnBwdIO bio{q.raw(),           k.raw(),  v.raw(),  o.raw(), dout.raw(),
                            lse.data<float>(), dq.raw(), dk.raw(), dv.raw()};
  if (hopper)
    cuda::flash_attention_bwd_sm90(p, bio, ws.raw(), s);
  else
    cuda::flash_attention_bwd(p, bio, ws.raw(), s);
  ASSERT_EQ(sync_within(s, hopper ? "flash_attention_bwd_sm90" : "flash_attention_bwd"),
            cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  r.o = to_host(o);
  r.lse = to_host(lse);
  r.dq = to_host(dq);
  r.dk = to_host(dk);
  r.dv = to_host(dv);
}

// Through CudaBackend::attention_fwd/bwd with a.impl; `ran` receives the implementation used.
inline void run_backend(const AttnArgs& a, DType t, const Inputs& in, Outputs& r, AttnImpl* ran) {
  Tensor q = to_gpu(in.q, t), k = to_gpu(in.k, t), v = to_gpu(in.v, t);
  Tensor dout = to_gpu(in.dout, t);
  Tensor o = gpu().empty(in.q.shape(), t), dq = gpu().empty(in.q.shape(), t);
  Tensor dk = gpu().empty(in.k.shape(), t), dv = gpu().empty(in.v.shape(), t);
  for (Tensor* x : {&o, &dq, &dk, &dv}) poison(*x);
  AttnSaved saved;
  gpu().attention_fwd(a, q, k, v, o, saved);
  *ran = saved.ran;
  ASSERT_EQ(sync_within(gpu().compute_stream(), "CudaBackend::attention_fwd"), cudaSuccess);
  gpu().attention_bwd(a, dout, q, k, v, saved, dq, dk, dv);
  ASSERT_EQ(sync_within(gpu().compute_stream(), "CudaBackend::attention_bwd"), cudaSuccess);
  r.o = to_host(o);
  r.dq = to_host(dq);
  r.dk = to_host(dk);
  r.dv = to_host(dv);
}

inline void expect_close(const Outputs& got, const Outputs& ref, double tol,
                         const std::string& what) {
  EXPECT_LE(rel_err(got.o, ref.o), tol) << what << ": O";
  EXPECT_LE(rel_err(got.dq, ref.dq), tol) << what << ": dQ";
  EXPECT_LE(rel_err(got.dk, ref.dk), tol) << what << ": dK";
  EXPECT_LE(rel_err(got.dv, ref.dv), tol) << what << ": dV";
}

inline std::string label(const Geo& g, DType t, int d) {
  return std::string(g.name) + " " + dtype_name(t) + " d" + std::to_string(d);
}

struct TypeDim {
  DType dtype;
  int head_dim;
};
inline void PrintTo(const TypeDim& t, std::ostream* os) {
  *os << dtype_name(t.dtype) << " d" << t.head_dim;
}
// gtest's name of a TypeDim parameter, e.g. "BF16_d64".
inline std::string type_dim_name(const ::testing::TestParamInfo<TypeDim>& i) {
  return std::string(dtype_name(i.param.dtype)) + "_d" + std::to_string(i.param.head_dim);
}
inline const std::vector<TypeDim> kAllTypeDims = {{BF16, 64}, {BF16, 128}, {F16, 64}, {F16, 128}};

// One padded problem for the launchers: random inputs, the F64 reference with its lse, and the
// AttnProblem with its device key lengths (`g` must outlive it: the args point at its key_len).
struct LauncherCase {
  AttnArgs a;
  Inputs in;
  Outputs ref;
  cuda::AttnProblem p;
  Tensor key_len;
};
inline LauncherCase launcher_case(const Geo& g, DType t, int d, uint64_t seed) {
  LauncherCase c;
  c.a = args_of(g, d);
  c.in = random_inputs(int64_t{g.batch} * g.len_q, int64_t{g.batch} * g.len_k, int64_t{g.heads} * d,
                       t, seed);
  c.ref = run_cpu(c.a, c.in);
  c.ref.lse = lse_reference(c.a, c.in);
  c.p = problem_of(c.a, t);
  c.key_len = to_gpu_i32(g.key_len);
  c.p.key_len = c.key_len.data<int32_t>();
  return c;
}

// --- the three implementations against each other ------------------------------------------------

inline const std::vector<TypeDim> kCompareTypes = {{BF16, 64}, {F16, 128}};

inline const std::vector<Geo>& compare_geos() {
  static const std::vector<Geo> g = {
      {"len257_causal_pad", 3, 4, 257, 257, {257, 1, 100}, true},
      {"cross_100x77_pad", 4, 4, 100, 77, {77, 50, 0, 13}, false},
  };
  return g;
}

// Each implementation within kTol of the F64 reference, and so within 2·kTol of each other.
inline void compare_impls(const std::vector<AttnImpl>& impls) {
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

}  // namespace mh::attention_test
