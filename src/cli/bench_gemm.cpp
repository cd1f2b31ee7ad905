// `multihead bench gemm`: TFLOP/s of multihead's cuBLASLt GEMMs on the shapes of a Transformer's
// Linear maps (forward, dX, dW), beside plain cuBLAS (cublasGemmEx) on the same buffers, and the
// fused-epilogue ops (bias, ReLU, bias gradient) beside the same ops unfused. Needs a GPU.
#include "cli/bench_gemm.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli/common_options.h"
#include "core/error.h"
#include "core/json.h"

#ifdef MH_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <functional>
#include <random>

#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#endif

namespace mh::cli {

namespace {

const char* const kBenchGemmDetails =
    "One row per GEMM of a Transformer's Linear maps at --tokens rows of x: proj (d_model ->\n"
    "d_model: q, k, v and o), fc1 (d_model -> d_ff, with ReLU), fc2 (d_ff -> d_model) and logits\n"
    "(d_model -> vocab: the tied output projection, no bias), each in three passes:\n"
    "  fwd   y = x W^T      [tokens, out] = [tokens, in] [out, in]^T\n"
    "  dX    dx = dy W      [tokens, in] = [tokens, out] [out, in]\n"
    "  dW    dW += dy^T x   [out, in] (F32) += [tokens, out]^T [tokens, in]\n"
    "\n"
    "columns (m, n, k: the row-major product C[m, n] = op(A)[m, k] op(B)[k, n]):\n"
    "  multihead  Backend::gemm of the CUDA backend: cuBLASLt, its heuristic's algorithm\n"
    "  cuBLAS     cublasGemmEx (CUBLAS_GEMM_DEFAULT) on the same buffers and stream\n"
    "  ratio      multihead TFLOP/s / cuBLAS TFLOP/s\n"
    "  epilogue   what multihead fuses into this GEMM: bias, relu_bias (fc1) or bgrad (the bias\n"
    "             gradient); fused = linear_fwd / linear_bwd_params with the epilogue,\n"
    "             unfused = the same ops composed (GEMM, then bias / ReLU / bias_grad kernels),\n"
    "             speedup = unfused time / fused time. Training fuses linear_fwd's epilogue\n"
    "             but composes dW's (faster on an H200; MH_GEMM_BGRAD_EPILOGUE=1 fuses it)\n"
    "time: the median over --iters calls, each timed with CUDA events, after --warmup calls, all\n"
    "enqueued before one synchronization (GPU time, not the host's launch latency); the\n"
    "variants take turns call by call, each call on the next of as many input sets (up to 8) as\n"
    "cover three times the L2 cache (as tools/bench/torch_gpu_peer.py gemm). TFLOP/s = 2 m n k /\n"
    "time. fp32 runs on TF32 tensor cores in both libraries. Without a GPU it exits with code 2.\n";

struct Options {
  int64_t tokens = 25000, d_model = 512, d_ff = 2048, vocab = 37000, iters = 20, warmup = 5;
  std::vector<std::string> dtypes;
  bool json = false;
};

// "bf16,fp32" -> {"bf16", "fp32"}, each checked.
std::vector<std::string> parse_dtypes(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string d; std::getline(ss, d, ',');) {
    if (d != "bf16" && d != "fp16" && d != "fp32")
      user_error("bench gemm: --dtype ", text, ": '", d,
                 "' is not one of bf16, fp16, fp32 (a comma-separated list)");
    out.push_back(d);
  }
  if (out.empty()) user_error("bench gemm: --dtype is empty: expected bf16, fp16 or fp32");
  return out;
}

#ifdef MH_WITH_CUDA

// One Linear map of the model and what it fuses.
struct Layer {
  const char* name;
  int64_t in, out;
  bool bias, relu;
};

// One GEMM: C = op(A) op(B) + beta C, as the model calls it, plus its fused form (if any).
struct Pass {
  const char* name;
  bool ta, tb;
  Shape a, b, c;
  bool c_f32;  // dW: F32 gradients
  double beta;
  std::optional<cuda::GemmEpilogue> epi;
};

std::vector<Pass> passes(const Layer& l, int64_t t) {
  std::optional<cuda::GemmEpilogue> fwd, bwd;
  if (l.bias) {
    fwd = l.relu ? cuda::GemmEpilogue::relu_bias : cuda::GemmEpilogue::bias;
    bwd = cuda::GemmEpilogue::bgrad_a;
  }
  return {{"fwd", false, true, {t, l.in}, {l.out, l.in}, {t, l.out}, false, 0.0, fwd},
          {"dX", false, false, {t, l.out}, {l.out, l.in}, {t, l.in}, false, 0.0, std::nullopt},
          {"dW", true, false, {t, l.out}, {t, l.in}, {l.out, l.in}, true, 1.0, bwd}};
}

struct Operands {
  Tensor a, b, c, vec;  // vec: the bias (fwd) or the bias gradient (dW)
};

// Fills t with values uniform in ±1: one random F32 block on the device, cast piece by piece.
void fill_random(CudaBackend& be, const Tensor& pool, Tensor& t) {
  Tensor flat = t.view({t.numel()});
  for (int64_t off = 0; off < t.numel(); off += pool.numel()) {
    const int64_t len = std::min(pool.numel(), t.numel() - off);
    Tensor dst = flat.rows(off, off + len);
    be.cast(pool.rows(0, len), dst);
  }
}

cudaDataType_t cuda_dtype(DType t) {
  return t == DType::bf16 ? CUDA_R_16BF : t == DType::f16 ? CUDA_R_16F : CUDA_R_32F;
}

// The same row-major GEMM through cublasGemmEx: column-major Cᵀ = op(B)ᵀ op(A)ᵀ.
void gemm_ex(cublasHandle_t h, const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c,
             double beta) {
  const int m = static_cast<int>(c.rows2d()), n = static_cast<int>(c.cols2d());
  const int k = static_cast<int>(ta ? a.rows2d() : a.cols2d());
  const float alpha_f = 1.0f, beta_f = static_cast<float>(beta);
  const cublasComputeType_t compute =
      a.dtype() == DType::f32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  MH_CUBLAS_CHECK(cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n,
                               m, k, &alpha_f, b.raw(), cuda_dtype(b.dtype()),
                               static_cast<int>(b.cols2d()), a.raw(), cuda_dtype(a.dtype()),
                               static_cast<int>(a.cols2d()), &beta_f, c.raw(),
                               cuda_dtype(c.dtype()), n, compute, CUBLAS_GEMM_DEFAULT));
}

struct CublasHandle {
  cublasHandle_t h = nullptr;
  CublasHandle() { MH_CUBLAS_CHECK(cublasCreate(&h)); }
  ~CublasHandle() { cublasDestroy(h); }
};

// Median milliseconds per call of each function, timed call by call with events, in turns. Each
// call gets the next call number, so consecutive calls can use different input sets.
// All calls are enqueued before the one synchronization: the GPU then always has the next call
// queued, so the events time the GPU's work and not the host's launch latency. (Synchronizing
// after every round, as this did until 2026-11-29, left the GPU idle at each round's first call
// and charged that call, always multihead's, the 5-10 us of its launch: a third of a 512x512
// projection's time.)
std::vector<double> time_calls(cudaStream_t s, const std::vector<std::function<void(int)>>& fns,
                               int64_t iters, int64_t warmup) {
  int call = 0;
  for (int64_t i = 0; i < warmup; ++i)
    for (const auto& f : fns) f(call++);
  const size_t nf = fns.size();
  std::vector<cudaEvent_t> ev(2 * nf * static_cast<size_t>(iters));
  for (cudaEvent_t& e : ev) MH_CUDA_CHECK(cudaEventCreate(&e));
  for (int64_t i = 0; i < iters; ++i) {
    for (size_t v = 0; v < nf; ++v) {
      const size_t at = 2 * (static_cast<size_t>(i) * nf + v);
      MH_CUDA_CHECK(cudaEventRecord(ev[at], s));
      fns[v](call++);
      MH_CUDA_CHECK(cudaEventRecord(ev[at + 1], s));
    }
  }
  MH_CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<std::vector<float>> ms(nf);
  for (int64_t i = 0; i < iters; ++i) {
    for (size_t v = 0; v < nf; ++v) {
      const size_t at = 2 * (static_cast<size_t>(i) * nf + v);
      float t = 0;
      MH_CUDA_CHECK(cudaEventElapsedTime(&t, ev[at], ev[at + 1]));
      ms[v].push_back(t);
    }
  }
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
  std::vector<double> med;
  for (auto& m : ms) {
    std::nth_element(m.begin(), m.begin() + m.size() / 2, m.end());
    med.push_back(m[m.size() / 2]);
  }
  return med;
}

int run(const Options& o) {
  if (cuda_device_count() == 0)
    user_error("bench gemm: no CUDA device is visible (it times cuBLASLt GEMMs on a GPU)");
  const int64_t biggest = std::max({o.tokens, o.d_model, o.d_ff, o.vocab});
  if (biggest > INT_MAX)
    user_error("bench gemm: a size of ", biggest, " exceeds cublasGemmEx's int (", INT_MAX, ")");
  CudaBackend be(0);
  const cudaStream_t s = be.compute_stream();
  cudaDeviceProp prop{};
  MH_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  CublasHandle cublas;
  MH_CUBLAS_CHECK(cublasSetStream(cublas.h, s));

  Tensor pool = be.empty({int64_t{1} << 20}, DType::f32);
  {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    Tensor host = Tensor::empty(pool.shape(), DType::f32);
    for (int64_t i = 0; i < host.numel(); ++i) host.data<float>()[i] = u(rng);
    be.copy(host, pool);
  }
  const std::vector<Layer> layers = {{"proj", o.d_model, o.d_model, true, false},
                                     {"fc1", o.d_model, o.d_ff, true, true},
                                     {"fc2", o.d_ff, o.d_model, true, false},
                                     {"logits", o.d_model, o.vocab, false, false}};
  if (!o.json) {
    std::printf(
        "# multihead bench gemm: %s | tokens %lld, d_model %lld, d_ff %lld, vocab %lld | median "
        "of %lld calls after %lld\n",
        prop.name, static_cast<long long>(o.tokens), static_cast<long long>(o.d_model),
        static_cast<long long>(o.d_ff), static_cast<long long>(o.vocab),
        static_cast<long long>(o.iters), static_cast<long long>(o.warmup));
    std::printf("#%45s%-19s%-26s%s\n", "", "multihead cuBLASLt", "cuBLAS GemmEx", "fused epilogue");
    std::printf("#%-10s %-6s %-4s %6s %6s %6s  %9s %7s  %9s %7s %6s  %-9s %11s %11s %7s\n", "dtype",
                "layer", "pass", "m", "n", "k", "time(us)", "TFLOP/s", "time(us)", "TFLOP/s",
                "ratio", "epilogue", "fused(us)", "unfused(us)", "speedup");
    std::fflush(stdout);
  }
  double ratio_sum = 0, speedup_sum = 0;
  int rows = 0, fused_rows = 0;
  for (const std::string& dname : o.dtypes) {
    const DType t = dname == "bf16" ? DType::bf16 : dname == "fp16" ? DType::f16 : DType::f32;
    const std::string label = dname == "fp32" ? "fp32(tf32)" : dname;
    for (const Layer& l : layers) {
      for (const Pass& p : passes(l, o.tokens)) {
        const DType ct = p.c_f32 ? DType::f32 : t;
        const int64_t m = p.c[0], n = p.c[1], k = p.ta ? p.a[0] : p.a[1];
        const size_t per_set = (shape_numel(p.a) + shape_numel(p.b)) * dtype_size(t) +
                               shape_numel(p.c) * dtype_size(ct);
        const size_t l2 = static_cast<size_t>(std::max(prop.l2CacheSize, 1));
        int64_t sets =
            std::clamp<int64_t>(static_cast<int64_t>((3 * l2 + per_set - 1) / per_set), 1, 8);
        if (static_cast<size_t>(sets) * per_set > (size_t{8} << 30)) sets = 1;
        std::vector<Operands> ops(static_cast<size_t>(sets));
        for (Operands& x : ops) {
          x.a = be.empty(p.a, t);
          x.b = be.empty(p.b, t);
          x.c = be.empty(p.c, ct);
          fill_random(be, pool, x.a);
          fill_random(be, pool, x.b);
          fill_random(be, pool, x.c);
          if (!p.epi) continue;
          x.vec = be.empty({p.ta ? p.a[1] : p.b[0]}, ct);  // [out]: the bias, or its gradient
          fill_random(be, pool, x.vec);
        }
        auto at = [&](int i) -> Operands& { return ops[static_cast<size_t>(i % sets)]; };
        std::vector<std::function<void(int)>> fns = {
            [&](int i) { be.gemm(at(i).a, p.ta, at(i).b, p.tb, at(i).c, 1.0, p.beta); },
            [&](int i) { gemm_ex(cublas.h, at(i).a, p.ta, at(i).b, p.tb, at(i).c, p.beta); }};
        const std::optional<ActKind> act =
            p.epi == cuda::GemmEpilogue::relu_bias ? std::optional{ActKind::relu} : std::nullopt;
        if (p.epi && !p.ta) {  // the forward: linear_fwd, fused and as Backend composes it
          fns.push_back([&](int i) { be.linear_fwd(at(i).a, at(i).b, at(i).vec, act, at(i).c); });
          fns.push_back(
              [&](int i) { be.Backend::linear_fwd(at(i).a, at(i).b, at(i).vec, act, at(i).c); });
        } else if (p.epi) {  // dW: linear_bwd_params with the BGRADB epilogue, and composed
          fns.push_back([&](int i) {
            const bool was = be.bgrad_epilogue();
            be.set_bgrad_epilogue(true);
            be.linear_bwd_params(at(i).a, at(i).b, at(i).c, at(i).vec);
            be.set_bgrad_epilogue(was);
          });
          fns.push_back(
              [&](int i) { be.Backend::linear_bwd_params(at(i).a, at(i).b, at(i).c, at(i).vec); });
        }
        const std::vector<double> ms = time_calls(s, fns, o.iters, o.warmup);
        const double flop =
            2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
        const double lt_tf = flop / (ms[0] * 1e-3) / 1e12, cb_tf = flop / (ms[1] * 1e-3) / 1e12;
        const double ratio = lt_tf / cb_tf;
        const double fused_us = p.epi ? ms[2] * 1e3 : NAN, unfused_us = p.epi ? ms[3] * 1e3 : NAN;
        ratio_sum += ratio;
        ++rows;
        if (p.epi) speedup_sum += unfused_us / fused_us, ++fused_rows;
        const char* epi_name = p.epi ? cuda::gemm_epilogue_name(*p.epi) : "-";
        if (o.json) {
          std::printf(
              "{\"impl\": \"multihead cuBLASLt\", \"device\": %s, \"dtype\": %s, \"layer\": %s, "
              "\"pass\": %s, \"m\": %lld, \"n\": %lld, \"k\": %lld, \"iters\": %lld, "
              "\"input_sets\": %lld, \"time_us\": %s, \"tflops\": %s, \"cublas_time_us\": %s, "
              "\"cublas_tflops\": %s, \"vs_cublas\": %s, \"epilogue\": %s, \"fused_time_us\": %s, "
              "\"unfused_time_us\": %s, \"fused_speedup\": %s}\n",
              json_string(prop.name).c_str(), json_string(label).c_str(),
              json_string(l.name).c_str(), json_string(p.name).c_str(), static_cast<long long>(m),
              static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(o.iters),
              static_cast<long long>(sets), json_number(ms[0] * 1e3, "%.2f").c_str(),
              json_number(lt_tf, "%.1f").c_str(), json_number(ms[1] * 1e3, "%.2f").c_str(),
              json_number(cb_tf, "%.1f").c_str(), json_number(ratio, "%.3f").c_str(),
              p.epi ? json_string(epi_name).c_str() : "null", json_number(fused_us, "%.2f").c_str(),
              json_number(unfused_us, "%.2f").c_str(),
              json_number(unfused_us / fused_us, "%.3f").c_str());
        } else {
          std::printf(" %-10s %-6s %-4s %6lld %6lld %6lld  %9.1f %7.1f  %9.1f %7.1f %6.3f  %-9s",
                      label.c_str(), l.name, p.name, static_cast<long long>(m),
                      static_cast<long long>(n), static_cast<long long>(k), ms[0] * 1e3, lt_tf,
                      ms[1] * 1e3, cb_tf, ratio, epi_name);
          if (p.epi)
            std::printf(" %11.1f %11.1f %7.3f\n", fused_us, unfused_us, unfused_us / fused_us);
          else
            std::printf(" %11s %11s %7s\n", "-", "-", "-");
        }
        std::fflush(stdout);
      }
    }
  }
  if (!o.json && rows > 0) {
    std::printf("# mean ratio multihead/cuBLAS over %d GEMMs: %.3f", rows, ratio_sum / rows);
    if (fused_rows > 0)
      std::printf("; mean fused-epilogue speedup over %d: %.3f", fused_rows,
                  speedup_sum / fused_rows);
    std::printf("\n");
  }
  return 0;
}

#else

int run(const Options&) {
  user_error(
      "bench gemm: this multihead was built without the CUDA backend (configure with "
      "-DMULTIHEAD_CUDA=ON on a machine with the CUDA toolkit)");
}

#endif

}  // namespace

int bench_gemm(int argc, char** argv) {
  Options o;
  std::string dtype_text = "bf16";
  po::options_description desc;
  desc.add_options()                                                                            //
      ("tokens", po::value(&o.tokens)->default_value(o.tokens), "rows of x (tokens per step)")  //
      ("d-model", po::value(&o.d_model)->default_value(o.d_model), "model width")               //
      ("d-ff", po::value(&o.d_ff)->default_value(o.d_ff), "feed-forward width")                 //
      ("vocab", po::value(&o.vocab)->default_value(o.vocab), "vocabulary (logits width)")       //
      ("dtype", po::value(&dtype_text)->default_value(dtype_text),
       "bf16 | fp16 | fp32 (TF32), or a comma-separated list")                           //
      ("iters", po::value(&o.iters)->default_value(o.iters), "timed calls per variant")  //
      ("warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed calls first")   //
      ("json", po::bool_switch(&o.json), "one JSON object per GEMM instead of the table");
  static const Command sub = {
      "bench gemm",
      "GEMM TFLOP/s of multihead's cuBLASLt path on a Transformer's Linear shapes, beside "
      "cublasGemmEx, and its fused epilogues beside the unfused ops (needs a GPU).",
      nullptr, "multihead bench gemm --tokens 25000 --dtype bf16,fp32", kBenchGemmDetails};
  if (!parse_command_line(sub, argc, argv, desc)) return 0;
  if (o.tokens < 1 || o.d_model < 1 || o.d_ff < 1 || o.vocab < 1)
    user_error("bench gemm: --tokens, --d-model, --d-ff and --vocab must be >= 1 (got ", o.tokens,
               ", ", o.d_model, ", ", o.d_ff, ", ", o.vocab, ")");
  if (o.iters < 1 || o.warmup < 0)
    user_error("bench gemm: --iters must be >= 1 and --warmup >= 0 (got ", o.iters, ", ", o.warmup,
               ")");
  o.dtypes = parse_dtypes(dtype_text);
  return run(o);
}

}  // namespace mh::cli
