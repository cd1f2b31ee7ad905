// GPU kernels against the CPU backend: softmax + cross-entropy, multi-tensor Adam, sum of
// squares, and the masked softmax of the naive attention. Inputs are fresh random numbers from one
// seeded generator (never zeros); outputs are poisoned (all bits set: NaN in F32/BF16/F16) before
// each run. BF16/F16 inputs are rounded on the host first and the CPU reference is fed the same
// rounded values. Error measure: max |gpu − cpu| / max |cpu| over the tensor, at most 1e-5 (F32),
// 1e-2 (BF16), 2e-3 (F16). Without a GPU every test skips.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh {
namespace {

bool have_gpu() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

#define MH_REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped"

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
#define CK(call) ck((call), #call)

double tol_of(DType t) {
  switch (t) {
    case DType::bf16:
      return 1e-2;
    case DType::f16:
      return 2e-3;
    default:
      return 1e-5;
  }
}

// --- host-side conversion -----------------------------------------------------------------------
float round_to(float x, DType t) {
  if (t == DType::bf16) return __bfloat162float(__float2bfloat16(x));
  if (t == DType::f16) return __half2float(__float2half(x));
  return x;
}
std::vector<float> round_all(std::vector<float> x, DType t) {
  for (float& v : x) v = round_to(v, t);
  return x;
}
std::vector<unsigned char> encode(const std::vector<float>& x, DType t) {
  std::vector<unsigned char> out(x.size() * dtype_size(t));
  for (size_t i = 0; i < x.size(); ++i) {
    if (t == DType::f32) {
      std::memcpy(out.data() + 4 * i, &x[i], 4);
    } else if (t == DType::bf16) {
      const __nv_bfloat16 h = __float2bfloat16(x[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    } else {
      const __half h = __float2half(x[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}
std::vector<float> decode(const std::vector<unsigned char>& b, DType t, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::f32) {
      std::memcpy(&out[i], b.data() + 4 * i, 4);
    } else if (t == DType::bf16) {
      __nv_bfloat16 h;
      std::memcpy(&h, b.data() + 2 * i, 2);
      out[i] = __bfloat162float(h);
    } else {
      __half h;
      std::memcpy(&h, b.data() + 2 * i, 2);
      out[i] = __half2float(h);
    }
  }
  return out;
}

// --- device tensors -----------------------------------------------------------------------------
Tensor dev_empty(const Shape& shape, DType t) {
  void* p = nullptr;
  const size_t bytes = std::max<size_t>(1, static_cast<size_t>(shape_numel(shape)) * dtype_size(t));
  CK(cudaMalloc(&p, bytes));
  std::shared_ptr<void> storage(p, [](void* q) { cudaFree(q); });
  return Tensor::wrap(storage, shape, t, Device::cuda);
}
void poison(Tensor& t) {
  CK(cudaMemset(t.raw(), 0xFF, t.nbytes()));
}

// Float data uploaded as dtype t (rounded on the way).
Tensor upload(const std::vector<float>& x, const Shape& shape, DType t) {
  Tensor d = dev_empty(shape, t);
  const auto bytes = encode(x, t);
  CK(cudaMemcpy(d.raw(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  return d;
}
template <typename T>
Tensor upload_raw(const std::vector<T>& x, const Shape& shape) {
  Tensor d = dev_empty(shape, dtype_of<T>());
  CK(cudaMemcpy(d.raw(), x.data(), x.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
std::vector<float> download(const Tensor& d) {
  std::vector<unsigned char> b(d.nbytes());
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(b.data(), d.raw(), b.size(), cudaMemcpyDeviceToHost));
  return decode(b, d.dtype(), static_cast<size_t>(d.numel()));
}
template <typename T>
std::vector<T> download_raw(const Tensor& d) {
  std::vector<T> out(static_cast<size_t>(d.numel()));
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(out.data(), d.raw(), out.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return out;
}

Tensor host_f32(const std::vector<float>& x, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f32);
  std::copy(x.begin(), x.end(), t.data<float>());
  return t;
}
std::vector<float> host_values(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

// Nonzero normals: N(0, sd) pushed away from 0.
std::vector<float> randn(std::mt19937_64& rng, size_t n, float sd = 1.f) {
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> x(n);
  for (float& v : x) {
    v = d(rng);
    if (std::fabs(v) < 1e-3f * sd) v = v < 0 ? -1e-3f * sd : 1e-3f * sd;
  }
  return x;
}

// max |a − b| / max |b| (NaN in a counts as failure).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (!std::isfinite(a[i]) && std::isfinite(b[i])) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}
double rel_err(double a, double b) {
  return std::fabs(a - b) / std::max(std::fabs(b), 1e-300);
}

// --- softmax_xent -------------------------------------------------------------------------------
struct XentCase {
  int64_t n, v;
  double smoothing;
  DType dtype;
  bool with_grad;
};

void run_xent(const XentCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "N=" << c.n << " V=" << c.v << " eps=" << c.smoothing << " "
                                    << dtype_name(c.dtype) << " grad=" << c.with_grad);
  std::mt19937_64 rng(seed);
  const int64_t pad_id = 1;
  const double grad_scale = 0.37;
  auto logits = round_all(randn(rng, static_cast<size_t>(c.n * c.v), 3.f), c.dtype);
  std::vector<int32_t> labels(static_cast<size_t>(c.n));
  std::uniform_int_distribution<int32_t> lab(0, static_cast<int32_t>(c.v - 1));
  for (int64_t i = 0; i < c.n; ++i)
    labels[i] = i % 4 == 2 ? static_cast<int32_t>(pad_id) : lab(rng);

  CpuBackend cpu;
  Tensor x_h = host_f32(logits, {c.n, c.v});
  Tensor lab_h = Tensor::empty({c.n}, DType::i32);
  std::copy(labels.begin(), labels.end(), lab_h.data<int32_t>());
  Tensor dx_h = Tensor::empty({c.n, c.v}, DType::f32);
  const XentResult ref =
      cpu.softmax_xent(x_h, lab_h, pad_id, c.smoothing, grad_scale, c.with_grad ? &dx_h : nullptr);

  Tensor x_d = upload(logits, {c.n, c.v}, c.dtype);
  Tensor lab_d = upload_raw(labels, {c.n});
  Tensor dx_d = dev_empty({c.n, c.v}, c.dtype);
  poison(dx_d);
  const std::vector<double> preset = {0.5, -1.25, 3.0};  // sums are accumulated (+=)
  Tensor sums_d = upload_raw(preset, {3});
  cuda::softmax_xent(x_d, lab_d, pad_id, c.smoothing, grad_scale, c.with_grad ? &dx_d : nullptr,
                     sums_d, nullptr);
  const auto sums = download_raw<double>(sums_d);
  const double tol = tol_of(c.dtype) > 1e-5 ? 1e-4 : 1e-5;  // same inputs: sums agree closely
  EXPECT_LE(rel_err(sums[0] - preset[0], ref.loss_sum), tol) << sums[0] << " " << ref.loss_sum;
  EXPECT_LE(rel_err(sums[1] - preset[1], ref.nll_sum), tol) << sums[1] << " " << ref.nll_sum;
  EXPECT_EQ(sums[2] - preset[2], static_cast<double>(ref.tokens));
  if (c.with_grad) {
    const auto dx = download(dx_d);
    EXPECT_LE(rel_err(dx, host_values(dx_h)), tol_of(c.dtype));
    for (int64_t i = 0; i < c.n; ++i) {
      if (labels[i] != pad_id) continue;
      for (int64_t j = 0; j < c.v; ++j) ASSERT_EQ(dx[i * c.v + j], 0.f) << "pad row " << i;
    }
  }
}

TEST(CudaKernelsB, SoftmaxXentF32) {
  MH_REQUIRE_GPU();
  run_xent({37, 8003, 0.0, DType::f32, true}, 1);
  run_xent({37, 8003, 0.1, DType::f32, true}, 2);
  run_xent({5, 7, 0.1, DType::f32, true}, 3);       // V smaller than a warp
  run_xent({3, 50021, 0.1, DType::f32, true}, 4);   // vocabulary of the paper's size
  run_xent({1100, 515, 0.1, DType::f32, true}, 5);  // more rows than blocks: row loop
  run_xent({37, 8003, 0.1, DType::f32, false}, 6);  // forward only
}

TEST(CudaKernelsB, SoftmaxXentBF16) {
  MH_REQUIRE_GPU();
  run_xent({37, 8003, 0.0, DType::bf16, true}, 11);
  run_xent({37, 8003, 0.1, DType::bf16, true}, 12);
  run_xent({3, 50021, 0.1, DType::bf16, true}, 13);
}

TEST(CudaKernelsB, SoftmaxXentF16) {
  MH_REQUIRE_GPU();
  run_xent({37, 8003, 0.1, DType::f16, true}, 21);
}

TEST(CudaKernelsB, SoftmaxXentVectorized) {
  // V a multiple of the 16-byte vector (8 bf16/fp16, 4 fp32): rows move in vectors.
  MH_REQUIRE_GPU();
  run_xent({37, 8000, 0.1, DType::f32, true}, 31);
  run_xent({1100, 512, 0.1, DType::bf16, true}, 32);
  run_xent({37, 37000, 0.1, DType::bf16, true}, 33);  // paper-base's vocabulary
  run_xent({37, 8000, 0.1, DType::f16, true}, 34);
  run_xent({37, 8000, 0.1, DType::bf16, false}, 35);  // forward only
}

TEST(CudaKernelsB, SoftmaxXentAllPad) {
  MH_REQUIRE_GPU();
  const int64_t n = 4, v = 33;
  std::vector<int32_t> labels(n, 0);  // pad_id 0: every row is padding
  std::mt19937_64 rng(7);
  Tensor x_d = upload(randn(rng, n * v), {n, v}, DType::f32);
  Tensor lab_d = upload_raw(labels, {n});
  Tensor dx_d = dev_empty({n, v}, DType::f32);
  poison(dx_d);
  Tensor sums_d = upload_raw(std::vector<double>{0, 0, 0}, {3});
  cuda::softmax_xent(x_d, lab_d, 0, 0.1, 1.0, &dx_d, sums_d, nullptr);
  for (double s : download_raw<double>(sums_d)) EXPECT_EQ(s, 0.0);
  for (float d : download(dx_d)) ASSERT_EQ(d, 0.f);
}

// --- adam_multi ---------------------------------------------------------------------------------
TEST(CudaKernelsB, AdamMultiMatchesCpu) {
  MH_REQUIRE_GPU();
  std::mt19937_64 rng(31);
  const std::vector<int64_t> sizes = {1, 7, 1000, 4099, 70001, 300007};
  const double lr = 1e-3, b1 = 0.9, b2 = 0.98, eps = 1e-9, wd = 0.01, gs = 0.5;
  CpuBackend cpu;
  const size_t count = sizes.size();
  std::vector<Tensor> p_h, m_h, v_h, p_d, m_d, v_d, g_d;
  for (int64_t s : sizes) {
    auto p = randn(rng, s), m = randn(rng, s, 0.01f), v = randn(rng, s, 0.01f);
    for (float& x : v) x = x * x;  // second moments are positive
    p_h.push_back(host_f32(p, {s}));
    m_h.push_back(host_f32(m, {s}));
    v_h.push_back(host_f32(v, {s}));
    p_d.push_back(upload(p, {s}, DType::f32));
    m_d.push_back(upload(m, {s}, DType::f32));
    v_d.push_back(upload(v, {s}, DType::f32));
    g_d.push_back(dev_empty({s}, DType::f32));
  }
  // float* has no dtype: carry the pointer arrays as raw bytes.
  auto ptr_array = [&](std::vector<Tensor>& ts) {
    std::vector<uint64_t> raw;
    for (auto& t : ts) raw.push_back(reinterpret_cast<uint64_t>(t.raw()));
    Tensor d = dev_empty({static_cast<int64_t>(count * 8)}, DType::u8);
    CK(cudaMemcpy(d.raw(), raw.data(), count * 8, cudaMemcpyHostToDevice));
    return d;
  };
  Tensor pp = ptr_array(p_d), gp = ptr_array(g_d), mp = ptr_array(m_d), vp = ptr_array(v_d);
  // fp16 copies of the updated params for the odd tensors, poisoned; the even ones' entries stay
  // null (an empty Tensor's raw()).
  std::vector<Tensor> copy_d(count);
  for (size_t t = 1; t < count; t += 2) {
    copy_d[t] = dev_empty({sizes[t]}, DType::f16);
    CK(cudaMemset(copy_d[t].raw(), 0xFF, copy_d[t].nbytes()));
  }
  Tensor copies = ptr_array(copy_d);
  Tensor sizes_d = dev_empty({static_cast<int64_t>(count * 8)}, DType::u8);
  CK(cudaMemcpy(sizes_d.raw(), sizes.data(), count * 8, cudaMemcpyHostToDevice));
  cuda::AdamTensorList list{static_cast<float**>(pp.raw()),
                            static_cast<float**>(gp.raw()),
                            static_cast<float**>(mp.raw()),
                            static_cast<float**>(vp.raw()),
                            static_cast<const int64_t*>(sizes_d.raw()),
                            static_cast<int>(count),
                            *std::max_element(sizes.begin(), sizes.end()),
                            static_cast<void**>(copies.raw()),
                            false};
  for (int64_t step = 1; step <= 3; ++step) {
    for (size_t t = 0; t < count; ++t) {
      auto g = randn(rng, sizes[t]);
      Tensor g_h = host_f32(g, {sizes[t]});
      cpu.adam_step(p_h[t], g_h, m_h[t], v_h[t], lr, b1, b2, eps, wd, step, gs);
      CK(cudaMemcpy(g_d[t].raw(), g.data(), g.size() * 4, cudaMemcpyHostToDevice));
    }
    cuda::adam_multi(list, lr, b1, b2, eps, wd, step, gs, nullptr);
  }
  for (size_t t = 0; t < count; ++t) {
    SCOPED_TRACE(::testing::Message() << "tensor " << t << " of " << sizes[t]);
    EXPECT_LE(rel_err(download(p_d[t]), host_values(p_h[t])), 1e-5);
    EXPECT_LE(rel_err(download(m_d[t]), host_values(m_h[t])), 1e-5);
    EXPECT_LE(rel_err(download(v_d[t]), host_values(v_h[t])), 1e-5);
    if (t % 2 == 1) {  // the copy: the final fp32 param rounded to fp16, exactly
      const std::vector<float> p = download(p_d[t]), c = download(copy_d[t]);
      for (size_t i = 0; i < p.size(); ++i)
        ASSERT_EQ(c[i], __half2float(__float2half(p[i]))) << "copy " << i;
    }
  }
}

// --- sum_squares --------------------------------------------------------------------------------
TEST(CudaKernelsB, SumSquaresMatchesCpu) {
  MH_REQUIRE_GPU();
  std::mt19937_64 rng(41);
  CpuBackend cpu;
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1000003}}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(t) << " n=" << n);
      auto x = round_all(randn(rng, n), t);
      const double ref = cpu.sum_squares(host_f32(x, {n}));
      Tensor x_d = upload(x, {n}, t);
      Tensor out_d = upload_raw(std::vector<double>{2.5}, {1});  // +=
      cuda::sum_squares(x_d, out_d, nullptr);
      const double got = download_raw<double>(out_d)[0] - 2.5;
      EXPECT_LE(rel_err(got, ref), 1e-5) << got << " vs " << ref;
    }
  }
}

TEST(CudaKernelsB, SumSquaresNonFinite) {
  MH_REQUIRE_GPU();
  std::mt19937_64 rng(43);
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    auto x = randn(rng, 5000);
    x[4321] = bad;
    Tensor x_d = upload(x, {5000}, DType::bf16);
    Tensor out_d = upload_raw(std::vector<double>{0.0}, {1});
    cuda::sum_squares(x_d, out_d, nullptr);
    EXPECT_FALSE(std::isfinite(download_raw<double>(out_d)[0]));
  }
}

// --- masked softmax (naive attention) -----------------------------------------------------------
struct SmCase {
  int64_t b, h, lq, lk;
  std::vector<int32_t> key_len;
  bool causal;
  DType dtype;
};

// The CPU attention's probabilities for given raw scores S[b, h, i, j] (before the scale): with
// head_dim = Lk and K = identity per head, Q Kᵀ = Q exactly, so q carries the scores.
std::vector<float> cpu_probs_from_scores(const SmCase& c, const std::vector<float>& scores,
                                         double scale) {
  const int64_t d = c.h * c.lk;
  std::vector<float> q(static_cast<size_t>(c.b * c.lq * d)), k(static_cast<size_t>(c.b * c.lk * d));
  for (int64_t b = 0; b < c.b; ++b)
    for (int64_t h = 0; h < c.h; ++h) {
      for (int64_t i = 0; i < c.lq; ++i)
        for (int64_t j = 0; j < c.lk; ++j)
          q[(b * c.lq + i) * d + h * c.lk + j] = scores[((b * c.h + h) * c.lq + i) * c.lk + j];
      for (int64_t j = 0; j < c.lk; ++j) k[(b * c.lk + j) * d + h * c.lk + j] = 1.f;
    }
  std::mt19937_64 rng(99);
  CpuBackend cpu;
  AttnArgs a;
  a.batch = c.b;
  a.heads = c.h;
  a.len_q = c.lq;
  a.len_k = c.lk;
  a.head_dim = c.lk;
  a.key_len = c.key_len.data();
  a.causal = c.causal;
  a.scale = scale;
  Tensor qh = host_f32(q, {c.b, c.lq, d}), kh = host_f32(k, {c.b, c.lk, d});
  Tensor vh = host_f32(randn(rng, k.size()), {c.b, c.lk, d});
  Tensor out = Tensor::empty({c.b, c.lq, d});
  AttnSaved saved;
  cpu.attention_fwd(a, qh, kh, vh, out, saved);
  return host_values(saved.probs);
}

std::vector<SmCase> sm_cases(DType t) {
  return {
      {3, 2, 33, 37, {37, 20, 0}, false, t},  // Lk not a warp multiple; a sequence with no keys
      {3, 2, 33, 37, {37, 20, 0}, true, t},   // causal, Lq < Lk
      {2, 3, 70, 70, {70, 45}, true, t},      // causal square, rows longer than two warps
      {1, 1, 4, 300, {300}, false, t},
  };
}

void run_sm_fwd(const SmCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message()
               << "B=" << c.b << " H=" << c.h << " Lq=" << c.lq << " Lk=" << c.lk
               << " causal=" << c.causal << " " << dtype_name(c.dtype));
  std::mt19937_64 rng(seed);
  const double scale = 0.35;
  auto s = round_all(randn(rng, static_cast<size_t>(c.b * c.h * c.lq * c.lk), 4.f), c.dtype);
  const auto ref = cpu_probs_from_scores(c, s, scale);
  Tensor s_d = upload(s, {c.b, c.h, c.lq, c.lk}, c.dtype);  // masked entries hold junk: must be 0
  Tensor kl_d = upload_raw(c.key_len, {c.b});
  cuda::masked_softmax_fwd(s_d, static_cast<const int32_t*>(kl_d.raw()), c.causal, scale, nullptr);
  const auto got = download(s_d);
  EXPECT_LE(rel_err(got, ref), tol_of(c.dtype));
  for (size_t i = 0; i < ref.size(); ++i)
    if (ref[i] == 0.f) {
      ASSERT_EQ(got[i], 0.f) << "masked entry " << i;
    }
}

TEST(CudaKernelsB, MaskedSoftmaxFwd) {
  MH_REQUIRE_GPU();
  uint64_t seed = 51;
  for (DType t : {DType::f32, DType::bf16, DType::f16})
    for (const auto& c : sm_cases(t)) run_sm_fwd(c, seed++);
}

// Scores from real random Q, K computed on the CPU, against CpuBackend::attention_fwd.
TEST(CudaKernelsB, MaskedSoftmaxFwdFromQK) {
  MH_REQUIRE_GPU();
  std::mt19937_64 rng(61);
  const int64_t B = 2, H = 2, L = 29, dk = 16, D = H * dk;
  const std::vector<int32_t> key_len = {29, 17};
  for (bool causal : {false, true}) {
    auto q = randn(rng, B * L * D), k = randn(rng, B * L * D), v = randn(rng, B * L * D);
    AttnArgs a;
    a.batch = B;
    a.heads = H;
    a.len_q = a.len_k = L;
    a.head_dim = dk;
    a.key_len = key_len.data();
    a.causal = causal;
    a.scale = 1 / std::sqrt(static_cast<double>(dk));
    CpuBackend cpu;
    Tensor out = Tensor::empty({B, L, D});
    AttnSaved saved;
    cpu.attention_fwd(a, host_f32(q, {B, L, D}), host_f32(k, {B, L, D}), host_f32(v, {B, L, D}),
                      out, saved);
    const Tensor& probs = saved.probs;
    std::vector<float> s(static_cast<size_t>(B * H * L * L));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < L; ++i)
          for (int64_t j = 0; j < L; ++j) {
            double acc = 0;
            for (int64_t e = 0; e < dk; ++e)
              acc += static_cast<double>(q[(b * L + i) * D + h * dk + e]) *
                     k[(b * L + j) * D + h * dk + e];
            s[((b * H + h) * L + i) * L + j] = static_cast<float>(acc);
          }
    Tensor s_d = upload(s, {B, H, L, L}, DType::f32);
    Tensor kl_d = upload_raw(key_len, {B});
    cuda::masked_softmax_fwd(s_d, static_cast<const int32_t*>(kl_d.raw()), causal, a.scale,
                             nullptr);
    EXPECT_LE(rel_err(download(s_d), host_values(probs)), 1e-5) << "causal=" << causal;
  }
}

// dS = P ∘ (dP − rowsum(dP ∘ P)) · scale over the visible keys (the CPU attention backward's
// formula), 0 where P is 0.
std::vector<float> ref_softmax_bwd(const std::vector<float>& p, const std::vector<float>& dp,
                                   int64_t rows, int64_t lk, double scale) {
  std::vector<float> ds(p.size());
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t j = 0; j < lk; ++j)
      if (p[r * lk + j] != 0.f) dot += static_cast<double>(dp[r * lk + j]) * p[r * lk + j];
    for (int64_t j = 0; j < lk; ++j) {
      const float pj = p[r * lk + j];
      ds[r * lk + j] = pj != 0.f ? static_cast<float>(pj * (dp[r * lk + j] - dot) * scale) : 0.f;
    }
  }
  return ds;
}

TEST(CudaKernelsB, MaskedSoftmaxBwd) {
  MH_REQUIRE_GPU();
  uint64_t seed = 71;
  const double scale = 0.35;
  for (DType t : {DType::f32, DType::bf16, DType::f16})
    for (const auto& c : sm_cases(t)) {
      SCOPED_TRACE(::testing::Message() << "B=" << c.b << " Lq=" << c.lq << " Lk=" << c.lk
                                        << " causal=" << c.causal << " " << dtype_name(t));
      std::mt19937_64 rng(seed++);
      const size_t n = static_cast<size_t>(c.b * c.h * c.lq * c.lk);
      const auto p = round_all(cpu_probs_from_scores(c, randn(rng, n, 3.f), scale), t);
      const auto dp = round_all(randn(rng, n), t);  // junk in masked entries too: must give 0
      const auto ref = ref_softmax_bwd(p, dp, c.b * c.h * c.lq, c.lk, scale);
      Tensor p_d = upload(p, {c.b, c.h, c.lq, c.lk}, t);
      Tensor g_d = upload(dp, {c.b, c.h, c.lq, c.lk}, t);
      cuda::masked_softmax_bwd(p_d, g_d, scale, nullptr);
      const auto got = download(g_d);
      EXPECT_LE(rel_err(got, ref), tol_of(t));
      for (size_t i = 0; i < n; ++i)
        if (p[i] == 0.f) {
          ASSERT_EQ(got[i], 0.f) << "masked entry " << i;
        }
    }
}

}  // namespace
}  // namespace mh
