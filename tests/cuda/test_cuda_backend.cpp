// CudaBackend against CpuBackend (the reference), op by op, from a table of cases: each case names
// its tensors (shape, GPU dtype, how they start) and runs the same code on both backends.
//   - inputs are fresh random values, never zeros (|x| in [0.1, 1)); "+=" outputs start random too
//   - "=" outputs are poisoned (all bits set: NaN) on both backends before the run
//   - the CPU runs in F32 on the same values: BF16 inputs are rounded to BF16 on the host first,
//     and the F32 inputs of GEMM cases are rounded to TF32, so the reference sees exactly the
//     numbers the tensor cores multiply
//   - every tensor is compared afterwards (inputs too: they must come back unchanged), by the
//     relative error max|gpu − cpu| / max|cpu|: ≤ 1e-5 for F32 ops without GEMMs, ≤ 3e-4 for TF32
//     GEMMs, ≤ 1e-2 for BF16
// Without a GPU every test skips with "no CUDA device: GPU test skipped".
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "gpu_test_util.h"

namespace mh {
namespace {

using gpu_test::cpu;
using gpu_test::gpu;

// --- host-side rounding and conversion --------------------------------------------------------
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t to_bf16(float f) {  // round to nearest even (finite inputs)
  const uint32_t u = bits_of(f);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t h) {
  return float_of(static_cast<uint32_t>(h) << 16);
}
float round_bf16(float f) {
  return from_bf16(to_bf16(f));
}
float round_tf32(float f) {  // 10 explicit mantissa bits, round to nearest even
  const uint32_t u = bits_of(f);
  return float_of((u + 0xFFFu + ((u >> 13) & 1u)) & ~0x1FFFu);
}

// A host F32 (or I32) tensor -> a GPU tensor of `dtype` (F32, BF16, I32, F64 from F32).
Tensor upload(const Tensor& host, DType dtype) {
  Tensor d = gpu().empty(host.shape(), dtype);
  if (dtype == DType::bf16) {
    Tensor staged = Tensor::empty(host.shape(), DType::bf16);
    auto* p = static_cast<uint16_t*>(staged.raw());
    for (int64_t i = 0; i < host.numel(); ++i) p[i] = to_bf16(host.data<float>()[i]);
    gpu().copy(staged, d);
  } else {
    MH_CHECK(dtype == host.dtype(), "upload ", dtype_name(host.dtype()), " as ", dtype_name(dtype));
    gpu().copy(host, d);
  }
  return d;
}

// A GPU tensor -> host F32 (I32 stays I32).
Tensor download(const Tensor& dev) {
  Tensor staged = Tensor::empty(dev.shape(), dev.dtype());
  gpu().copy(dev, staged);
  if (dev.dtype() != DType::bf16) return staged;
  Tensor out = Tensor::empty(dev.shape(), DType::f32);
  const auto* p = static_cast<const uint16_t*>(staged.raw());
  for (int64_t i = 0; i < dev.numel(); ++i) out.data<float>()[i] = from_bf16(p[i]);
  return out;
}

// All bits set (NaN in F32, BF16 and F16), on the backend's stream: the null stream does not
// order against its non-blocking compute stream.
void poison(Tensor& t) {
  ASSERT_EQ(cudaMemsetAsync(t.raw(), 0xFF, t.nbytes(), gpu().compute_stream()), cudaSuccess);
}

// max|a − ref| / max|ref|; NaN or a shape mismatch counts as infinite.
double rel_err(const Tensor& a, const Tensor& ref) {
  if (a.numel() != ref.numel()) return std::numeric_limits<double>::infinity();
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.item(i), r = ref.item(i);
    if (!std::isfinite(x) || !std::isfinite(r)) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(x - r));
    scale = std::max(scale, std::abs(r));
  }
  return scale > 0 ? diff / scale : diff;
}

// --- the table ----------------------------------------------------------------------------------
enum class Init {
  rand,      // input, uniform ±[0.1, 1)
  positive,  // input, uniform [0.5, 1.5)
  acc,       // "+=" output, starts random
  poison,    // "=" output, starts NaN
  ids,       // I32 input, uniform [0, ids_max)
};
struct TSpec {
  std::string name;
  Shape shape;
  DType dtype;  // on the GPU; the CPU holds F32 (I32 for ids)
  Init init;
  int64_t ids_max = 0;
};
using Env = std::map<std::string, Tensor>;
// Runs the op on one backend over `env`; returns scalars to compare (may be empty).
using RunFn = std::function<std::vector<double>(Backend&, Env&)>;
struct Case {
  std::string name;
  std::vector<TSpec> tensors;
  RunFn run;
  double tol;
  bool tf32 = false;  // round F32 random inputs to TF32 (cases with F32 GEMMs)
};
std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << c.name;
}

void run_case(const Case& c) {
  std::mt19937_64 rng(std::hash<std::string>{}(c.name));
  std::uniform_real_distribution<float> mag(0.1f, 1.0f), pos(0.5f, 1.5f);
  std::bernoulli_distribution sign(0.5);
  Env cpu_env, gpu_env;
  for (const TSpec& t : c.tensors) {
    if (t.init == Init::ids) {
      std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(t.ids_max - 1));
      Tensor h = Tensor::empty(t.shape, DType::i32);
      for (int64_t i = 0; i < h.numel(); ++i) h.data<int32_t>()[i] = id(rng);
      cpu_env[t.name] = h;
      gpu_env[t.name] = upload(h, DType::i32);
      continue;
    }
    Tensor h = Tensor::empty(t.shape, DType::f32);
    float* p = h.data<float>();
    for (int64_t i = 0; i < h.numel(); ++i) {
      float v = t.init == Init::positive ? pos(rng) : (sign(rng) ? 1.0f : -1.0f) * mag(rng);
      if (t.init == Init::poison) v = std::numeric_limits<float>::quiet_NaN();
      if (t.dtype == DType::bf16) v = round_bf16(v);
      if (t.dtype == DType::f32 && c.tf32) v = round_tf32(v);
      p[i] = v;
    }
    cpu_env[t.name] = h;
    Tensor d = gpu().empty(t.shape, t.dtype);
    if (t.init == Init::poison)
      poison(d);
    else
      d = upload(h.clone(), t.dtype);
    gpu_env[t.name] = d;
  }
  const std::vector<double> ref = c.run(cpu(), cpu_env);
  const std::vector<double> got = c.run(gpu(), gpu_env);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (const TSpec& t : c.tensors) {
    const double err = rel_err(download(gpu_env.at(t.name)), cpu_env.at(t.name));
    EXPECT_LE(err, c.tol) << c.name << ": tensor " << t.name << " " << shape_str(t.shape) << " "
                          << dtype_name(t.dtype);
  }
  ASSERT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_LE(std::abs(got[i] - ref[i]), c.tol * std::max(1.0, std::abs(ref[i])))
        << c.name << ": scalar " << i << " gpu " << got[i] << " cpu " << ref[i];
}

constexpr double kF32 = 1e-5, kTF32 = 3e-4, kBF16 = 1e-2;
constexpr DType F32 = DType::f32, BF16 = DType::bf16, I32 = DType::i32;

std::vector<Case> gemm_cases() {
  std::vector<Case> cases;
  const int64_t m = 48, n = 40, k = 72;
  for (DType ab : {F32, BF16}) {
    for (DType ct : {F32, BF16}) {
      if (ab == F32 && ct == BF16) continue;
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        const double beta = (t == 3) ? 0.0 : 0.3;  // beta = 0 must not read the (NaN) output
        Case c;
        c.name = std::string("gemm_") + dtype_name(ab) + "_" + dtype_name(ct) + (ta ? "_T" : "_N") +
                 (tb ? "T" : "N");
        c.tensors = {{"a", ta ? Shape{k, m} : Shape{m, k}, ab, Init::rand},
                     {"b", tb ? Shape{n, k} : Shape{k, n}, ab, Init::rand},
                     {"c", {m, n}, ct, beta == 0 ? Init::poison : Init::acc}};
        c.run = [ta, tb, beta](Backend& be, Env& e) {
          be.gemm(e["a"], ta, e["b"], tb, e["c"], 0.7, beta);
          return std::vector<double>{};
        };
        c.tol = (ab == F32) ? kTF32 : kBF16;
        c.tf32 = true;
        cases.push_back(c);
      }
    }
  }
  // Odd sizes (unaligned rows) in F32.
  Case odd;
  odd.name = "gemm_F32_odd_NT";
  odd.tensors = {{"a", {37, 45}, F32, Init::rand},
                 {"b", {29, 45}, F32, Init::rand},
                 {"c", {37, 29}, F32, Init::acc}};
  odd.run = [](Backend& be, Env& e) {
    be.gemm(e["a"], false, e["b"], true, e["c"], 1.0, 1.0);
    return std::vector<double>{};
  };
  odd.tol = kTF32;
  odd.tf32 = true;
  cases.push_back(odd);
  return cases;
}

// Attention over B = 3 sequences with padding (key lengths 6, 4, 1 of Lk = 6), Lq ≠ Lk.
std::vector<Case> attention_cases() {
  std::vector<Case> cases;
  struct Geo {
    const char* name;
    int64_t lq, lk;
    bool causal;
    double dropout;
  };
  for (Geo g : {Geo{"cross", 5, 6, false, 0}, Geo{"causal", 6, 6, true, 0},
                Geo{"causal_lq4", 4, 6, true, 0}, Geo{"causal_dropout", 6, 6, true, 0.25}}) {
    for (DType t : {F32, BF16}) {
      for (bool bwd : {false, true}) {
        const int64_t b = 3, h = 4, dk = 16, d = h * dk;
        Case c;
        c.name = std::string("attention_") + (bwd ? "bwd_" : "fwd_") + g.name + "_" + dtype_name(t);
        c.tensors = {{"q", {b, g.lq, d}, t, Init::rand},
                     {"k", {b, g.lk, d}, t, Init::rand},
                     {"v", {b, g.lk, d}, t, Init::rand},
                     {"out", {b, g.lq, d}, t, Init::poison}};
        if (bwd)
          c.tensors.insert(c.tensors.end(), {{"dout", {b, g.lq, d}, t, Init::rand},
                                             {"dq", {b, g.lq, d}, t, Init::poison},
                                             {"dk", {b, g.lk, d}, t, Init::poison},
                                             {"dv", {b, g.lk, d}, t, Init::poison}});
        c.run = [g, b, h, dk, bwd](Backend& be, Env& e) {
          static const int32_t key_len[3] = {6, 4, 1};
          AttnArgs a;
          a.batch = b;
          a.heads = h;
          a.len_q = g.lq;
          a.len_k = g.lk;
          a.head_dim = dk;
          a.key_len = key_len;
          a.causal = g.causal;
          a.scale = 1.0 / std::sqrt(static_cast<double>(dk));
          a.dropout = g.dropout;
          a.seed = 5;
          a.offset = 11;
          AttnSaved saved;  // naive on the GPU, the exact reference on the CPU
          be.attention_fwd(a, e["q"], e["k"], e["v"], e["out"], saved);
          if (bwd)
            be.attention_bwd(a, e["dout"], e["q"], e["k"], e["v"], saved, e["dq"], e["dk"],
                             e["dv"]);
          return std::vector<double>{};
        };
        c.tol = t == F32 ? kTF32 : kBF16;
        c.tf32 = true;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

std::vector<Case> elementwise_cases() {
  std::vector<Case> cases;
  auto add_case = [&](std::string name, std::vector<TSpec> tensors, RunFn run, double tol) {
    cases.push_back(Case{std::move(name), std::move(tensors), std::move(run), tol});
  };
  const std::vector<double> none;
  add_case(
      "add_bias", {{"y", {33, 24}, F32, Init::acc}, {"bias", {24}, F32, Init::rand}},
      [none](Backend& be, Env& e) {
        be.add_bias(e["y"], e["bias"]);
        return none;
      },
      kF32);
  add_case(
      "bias_grad", {{"dy", {67, 24}, F32, Init::rand}, {"db", {24}, F32, Init::acc}},
      [none](Backend& be, Env& e) {
        be.bias_grad(e["dy"], e["db"]);
        return none;
      },
      kF32);
  add_case(
      "add",
      {{"a", {5, 77}, F32, Init::rand},
       {"b", {5, 77}, F32, Init::rand},
       {"out", {5, 77}, F32, Init::poison}},
      [none](Backend& be, Env& e) {
        be.add(e["a"], e["b"], e["out"]);
        return none;
      },
      kF32);
  add_case(
      "scale", {{"x", {1001}, F32, Init::acc}},
      [none](Backend& be, Env& e) {
        be.scale(e["x"], -0.37);
        return none;
      },
      kF32);
  for (ActKind kind : {ActKind::relu, ActKind::gelu}) {
    const std::string an = kind == ActKind::relu ? "relu" : "gelu";
    add_case(
        "activation_fwd_" + an,
        {{"x", {9, 130}, F32, Init::rand}, {"y", {9, 130}, F32, Init::poison}},
        [none, kind](Backend& be, Env& e) {
          be.activation_fwd(kind, e["x"], e["y"]);
          return none;
        },
        kF32);
    add_case(
        "activation_bwd_" + an,
        {{"dy", {9, 130}, F32, Init::rand},
         {"x", {9, 130}, F32, Init::rand},
         {"dx", {9, 130}, F32, Init::poison}},
        [none, kind](Backend& be, Env& e) {
          be.activation_bwd(kind, e["dy"], e["x"], e["dx"]);
          return none;
        },
        kF32);
  }
  add_case(
      "dropout_fwd_bwd",
      {{"x", {7, 301}, F32, Init::rand},
       {"y", {7, 301}, F32, Init::poison},
       {"dx", {7, 301}, F32, Init::poison}},
      [none](Backend& be, Env& e) {
        be.dropout_fwd(e["x"], 0.1, 0x1234567890ull, 77, e["y"]);
        be.dropout_bwd(e["x"], 0.1, 0x1234567890ull, 77, e["dx"]);
        return none;
      },
      kF32);
  add_case(
      "embed_fwd",
      {{"ids", {3, 11}, I32, Init::ids, 50},
       {"table", {50, 32}, F32, Init::rand},
       {"pe", {16, 32}, F32, Init::rand},
       {"y", {3, 11, 32}, F32, Init::poison}},
      [none](Backend& be, Env& e) {
        be.embed_fwd(e["ids"], e["table"], e["pe"], 5.6, e["y"]);
        return none;
      },
      kF32);
  add_case(
      "embed_bwd",
      {{"ids", {3, 11}, I32, Init::ids, 7},  // few ids: repeated rows accumulate
       {"dy", {3, 11, 32}, F32, Init::rand},
       {"dtable", {7, 32}, F32, Init::acc}},
      [none](Backend& be, Env& e) {
        be.embed_bwd(e["ids"], e["dy"], 5.6, e["dtable"]);
        return none;
      },
      kF32);
  add_case(
      "layernorm_fwd",
      {{"x", {19, 96}, F32, Init::rand},
       {"w", {96}, F32, Init::rand},
       {"b", {96}, F32, Init::rand},
       {"y", {19, 96}, F32, Init::poison},
       {"mean", {19}, F32, Init::poison},
       {"rstd", {19}, F32, Init::poison}},
      [none](Backend& be, Env& e) {
        be.layernorm_fwd(e["x"], e["w"], e["b"], 1e-5, e["y"], e["mean"], e["rstd"]);
        return none;
      },
      kF32);
  add_case(
      "layernorm_bwd",
      {{"dy", {19, 96}, F32, Init::rand},
       {"x", {19, 96}, F32, Init::rand},
       {"w", {96}, F32, Init::rand},
       {"mean", {19}, F32, Init::rand},
       {"rstd", {19}, F32, Init::positive},
       {"dx", {19, 96}, F32, Init::poison},
       {"dw", {96}, F32, Init::acc},
       {"db", {96}, F32, Init::acc}},
      [none](Backend& be, Env& e) {
        be.layernorm_bwd(e["dy"], e["x"], e["w"], e["mean"], e["rstd"], e["dx"], e["dw"], e["db"]);
        return none;
      },
      kF32);
  add_case(
      "softmax_xent",
      {{"logits", {13, 103}, F32, Init::rand},
       {"labels", {13}, I32, Init::ids, 103},  // label 0 = pad: some rows are padding
       {"dlogits", {13, 103}, F32, Init::poison}},
      [](Backend& be, Env& e) {
        Tensor d = e["dlogits"];
        XentResult r = be.softmax_xent(e["logits"], e["labels"], 0, 0.1, 0.25, &d);
        return std::vector<double>{r.loss_sum, r.nll_sum, static_cast<double>(r.tokens)};
      },
      kF32);
  add_case(
      "sum_squares", {{"x", {3, 1000}, F32, Init::rand}},
      [](Backend& be, Env& e) { return std::vector<double>{be.sum_squares(e["x"])}; }, kF32);
  add_case(
      "sum_squares_all",  // one launch in chunks of 64K: 200003 elements are 4 blocks
      {{"a", {200003}, F32, Init::rand},
       {"b", {7}, F32, Init::rand},
       {"c", {3, 1000}, F32, Init::rand}},
      [](Backend& be, Env& e) {
        return std::vector<double>{be.sum_squares_all({&e["a"], &e["b"], &e["c"], &e["a"]})};
      },
      kF32);
  add_case(
      "adam_step",
      {{"p", {517}, F32, Init::acc},
       {"g", {517}, F32, Init::rand},
       {"m", {517}, F32, Init::acc},
       {"v", {517}, F32, Init::positive}},
      [none](Backend& be, Env& e) {
        be.adam_step(e["p"], e["g"], e["m"], e["v"], 1e-3, 0.9, 0.98, 1e-9, 0.01, 3, 0.5);
        return none;
      },
      kF32);
  return cases;
}

class BackendOp : public ::testing::TestWithParam<Case> {};
TEST_P(BackendOp, MatchesCpu) {
  MH_REQUIRE_GPU();
  run_case(GetParam());
}
std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.name;
}
INSTANTIATE_TEST_SUITE_P(Gemm, BackendOp, ::testing::ValuesIn(gemm_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Attention, BackendOp, ::testing::ValuesIn(attention_cases()), case_name);
INSTANTIATE_TEST_SUITE_P(Ops, BackendOp, ::testing::ValuesIn(elementwise_cases()), case_name);

// --- beyond the table -----------------------------------------------------------------------

TEST(CudaAvailable, DeviceCountNeverThrows) {
  int n = -1;
  EXPECT_NO_THROW(n = cuda_device_count());
  EXPECT_GE(n, 0);
}

TEST(CudaBackend, CopyRoundTrip) {
  MH_REQUIRE_GPU();
  Tensor h = Tensor::empty({3, 129}, F32);
  for (int64_t i = 0; i < h.numel(); ++i)
    h.data<float>()[i] = 0.25f + 0.001f * static_cast<float>(i);
  for (DType t : {F32, BF16}) {
    Tensor a = upload(h, t);  // host -> device
    Tensor b = gpu().empty(h.shape(), t);
    poison(b);
    gpu().copy(a, b);           // device -> device
    Tensor back = download(b);  // device -> host
    for (int64_t i = 0; i < h.numel(); ++i) {
      const float want = t == BF16 ? round_bf16(h.data<float>()[i]) : h.data<float>()[i];
      ASSERT_EQ(back.data<float>()[i], want) << dtype_name(t) << " element " << i;
    }
  }
  Tensor z = gpu().zeros({1000}, F32);
  Tensor hz = download(z);
  for (int64_t i = 0; i < hz.numel(); ++i) ASSERT_EQ(hz.data<float>()[i], 0.0f);
}

TEST(CudaBackend, CastRoundTrip) {
  MH_REQUIRE_GPU();
  Tensor h = Tensor::empty({517}, F32);
  for (int64_t i = 0; i < h.numel(); ++i)
    h.data<float>()[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  Tensor a = upload(h, F32);
  Tensor b = gpu().empty(h.shape(), BF16);
  Tensor c = gpu().empty(h.shape(), F32);
  gpu().cast(a, b);
  gpu().cast(b, c);
  Tensor back = download(c);
  for (int64_t i = 0; i < h.numel(); ++i)
    ASSERT_EQ(back.data<float>()[i], round_bf16(h.data<float>()[i])) << "element " << i;
}

// After two warm-up steps, repeating the same allocations (and the ops that allocate scratch,
// such as attention_bwd) makes no new cudaMalloc. Two: the pool's best fit may take a larger
// block in the second step that a later request then misses (tests/unit/test_block_pool.cpp).
TEST(CudaBackend, AllocatorReusesBlocks) {
  MH_REQUIRE_GPU();
  CudaBackend& be = gpu();
  auto step = [&] {
    std::vector<Tensor> live;
    for (int64_t n : {1, 100, 4096, 300000, 1 << 20, 5 << 20}) live.push_back(be.empty({n}, F32));
    live.push_back(be.zeros({64, 64}, BF16));
    Tensor q = be.zeros({2, 8, 32}, F32), out = be.empty({2, 8, 32}, F32);
    Tensor dq = be.empty({2, 8, 32}, F32);
    Tensor dk = be.empty({2, 8, 32}, F32), dv = be.empty({2, 8, 32}, F32);
    const int32_t key_len[2] = {8, 5};
    AttnArgs a;
    a.batch = 2;
    a.heads = 2;
    a.len_q = a.len_k = 8;
    a.head_dim = 16;
    a.key_len = key_len;
    a.causal = true;
    a.scale = 0.25;
    AttnSaved saved;
    be.attention_fwd(a, q, q, q, out, saved);
    be.attention_bwd(a, out, q, q, q, saved, dq, dk, dv);
    Tensor c = be.empty({8, 8}, F32);
    be.gemm(q.view({16, 32}).rows(0, 8), false, q.view({16, 32}).rows(8, 16), true, c, 1.0, 0.0);
  };
  step();
  step();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto warm = be.allocator().stats();
  for (int i = 0; i < 5; ++i) step();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto after = be.allocator().stats();
  EXPECT_EQ(after.malloc_calls, warm.malloc_calls);
  EXPECT_EQ(after.bytes_reserved, warm.bytes_reserved);
  EXPECT_EQ(after.bytes_in_use, warm.bytes_in_use);  // everything from the steps came back
  EXPECT_GT(after.alloc_calls, warm.alloc_calls);
}

TEST(CachingAllocator, SizeClasses) {
  using cuda::CachingAllocator;
  EXPECT_EQ(CachingAllocator::round_size(0), 512u);
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size((1 << 20) - 1), size_t(1) << 20);
  EXPECT_EQ(CachingAllocator::round_size(1 << 20), size_t(2) << 20);
  EXPECT_EQ(CachingAllocator::round_size((2 << 20) + 1), size_t(4) << 20);
}

}  // namespace
}  // namespace mh
