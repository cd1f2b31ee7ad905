// `multihead bench attention`: TFLOP/s of the GPU attention implementations (AttnImpl) on the
// same problems: custom (our flash-style kernels, through their launchers), cudnn (cuDNN's SDPA,
// through CudnnSdpa), naive (CudaBackend::attention_fwd/bwd with impl naive) and hopper (the
// sm_90a kernels flash_attention_fwd_sm90 and flash_attention_bwd_sm90; n/a off sm_90), forward,
// backward and both. The custom, cudnn and hopper columns share one set of buffers per problem
// (backend/cuda/attention/attention_problem.h); naive runs the padded form.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "cli/common_options.h"
#include "core/error.h"
#include "core/json.h"
#include "core/tensor.h"

#ifdef MH_WITH_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/cudnn_sdpa.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/stream_deadline.h"
#endif

namespace mh::cli {

const char* const kBenchAttentionDetails =
    "Problems (the same in tools/bench/torch_attention_peer.py, so the rows join):\n"
    "  sweep      for each --head-dim, causal mode and --seq L: batch B = --tokens / L sequences\n"
    "             of L tokens (FlashAttention-2's benchmark: 16k tokens, B = 16k / L), H =\n"
    "             --model-dim / head_dim heads (32 of 64, 16 of 128), self-attention, no padding\n"
    "  mt-packed  a translation batch: sentences of 10..100 tokens until --mt-tokens (25000, the\n"
    "             paper's batch) are reached, packed (cu_seqlens): only real tokens are computed\n"
    "  mt-padded  the same sentences padded to the longest (key-padding mask): what packing saves\n"
    "  Sentence lengths: x <- x * 6364136223846793005 + 1442695040888963407 (mod 2^64), from\n"
    "  x = --seed, length = 10 + (x >> 33) % 91, added until the total reaches --mt-tokens.\n"
    "\n"
    "columns: TFLOP/s = FLOPs / median time, with the FlashAttention papers' count: forward\n"
    "4 * B * H * Lq * Lk * d (two GEMMs), backward 2.5 x forward, fwd+bwd 3.5 x, causal halved.\n"
    "The mt rows count the real tokens' FLOPs (sum over sentences of L^2) in both forms, so the\n"
    "padded row's lower TFLOP/s is the cost of the padding. custom/cudnn is the ratio of the two.\n"
    "  custom  our fused kernels (flash_attention_fwd/bwd); backward's workspace is allocated\n"
    "          once, outside the timing\n"
    "  cudnn   cuDNN SDPA (graph API); '-' where CudnnSdpa::supports() says no (the reason is\n"
    "          printed once)\n"
    "  naive   GEMM + softmax + GEMM (CudaBackend, impl naive): padded problems only, '-' where\n"
    "          its two [B, H, L, L] tensors would exceed --naive-max-gib\n"
    "  hopper  the sm_90a wgmma/TMA kernels (flash_attention_fwd_sm90, flash_attention_bwd_sm90),\n"
    "          backward's workspace as custom's; 'n/a' where flash_sm90_supports() says no (any\n"
    "          GPU but sm_90; the reason is printed once)\n"
    "Timing: --warmup untimed fwd+bwd iterations, then --iters, each as forward then backward\n"
    "between cudaEvents on one stream, launched back to back; the median per pass. Where the GPU\n"
    "outruns the host's launches (small problems, naive's many kernels) that wait is included.\n"
    "Inputs: random values, the same for every implementation.\n"
    "Environment (custom's head_dim-64 tilings, for tuning; also read by training):\n"
    "  MH_FLASH_FWD_TILE=64x64|64x128|128x64|128x128   forward query rows x keys (64x64;\n"
    "                                                   128 rows: 4 warps of 32)\n"
    "  MH_FLASH_BWD_KEYS=64|128                         backward keys per block (64)\n"
    "  MH_FLASH_BWD=strips|tiles                        backward layout: a 16-key strip per warp\n"
    "                                                   (default), or FlashAttention-2's 2-D warp\n"
    "                                                   tiles over 128 keys x 128 queries\n"
    "Environment (hopper's forward):\n"
    "  MH_HOPPER_FWD=plain|overlap   plain: S, softmax, O += P V in turn, 64-key tiles (default);\n"
    "                                overlap: FlashAttention-3's intra-warpgroup overlap, 128 "
    "keys\n"
    "  MH_HOPPER_FWD_WG=1|2|3        consumer warpgroups (64 query rows each) per block: plain\n"
    "                                1 or 2 (2), overlap 2 (default) or 3 (head_dim 64; 3 alone\n"
    "                                selects overlap)\n";

int bench_attention(int argc, char** argv);

namespace {

std::vector<int64_t> parse_list(const std::string& option, const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 1)
      user_error("bench attention: ", option, " ", text,
                 ": expected positive integers separated by commas, e.g. 1024,2048");
    out.push_back(v);
  }
  if (out.empty()) user_error("bench attention: ", option, " is empty");
  return out;
}

#ifdef MH_WITH_CUDA

// The translation batch's sentence lengths (kBenchAttentionDetails; the peer script draws the
// same with the same arithmetic).
std::vector<int32_t> mt_lengths(int64_t tokens, uint64_t seed) {
  std::vector<int32_t> lens;
  uint64_t x = seed;
  int64_t total = 0;
  while (total < tokens) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    lens.push_back(static_cast<int32_t>(10 + (x >> 33) % 91));
    total += lens.back();
  }
  return lens;
}

enum class Form { sweep, mt_packed, mt_padded };
const char* form_name(Form f) {
  return f == Form::sweep ? "sweep" : f == Form::mt_packed ? "mt-packed" : "mt-padded";
}

struct Problem {
  Form form = Form::sweep;
  int heads = 0, head_dim = 0;
  bool causal = false;
  std::vector<int32_t> lens;  // tokens of each sequence (queries = keys: self-attention)
  int max_len = 0;
  int64_t tokens() const {
    int64_t t = 0;
    for (int32_t l : lens) t += l;
    return t;
  }
  int64_t rows() const {  // rows of Q: padded forms hold B · max_len
    return form == Form::mt_packed ? tokens() : static_cast<int64_t>(lens.size()) * max_len;
  }
  // FlashAttention's forward count on the real tokens: 4 · H · d · Σ L², halved when causal.
  double flops_fwd() const {
    double s = 0;
    for (int32_t l : lens) s += static_cast<double>(l) * l;
    return 4.0 * heads * head_dim * s * (causal ? 0.5 : 1.0);
  }
};

struct Times {  // medians, ms; NaN: not run
  double fwd = NAN, bwd = NAN, both = NAN;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs fwd then bwd `warmup` times, then `iters` times between events on `s`; median per pass.
// The first warm-up's passes are each waited for with a deadline (stream_deadline.h), so that a
// kernel that hangs ends the run naming `what` and the pass, instead of stalling it unnamed.
Times time_fwd_bwd(const std::string& what, const std::function<void()>& fwd,
                   const std::function<void()>& bwd, int64_t warmup, int64_t iters,
                   cudaStream_t s) {
  for (int64_t i = 0; i < warmup; ++i) {
    fwd();
    if (i == 0) MH_CUDA_CHECK(cuda::sync_within(s, (what + ": forward").c_str()));
    bwd();
    if (i == 0) MH_CUDA_CHECK(cuda::sync_within(s, (what + ": backward").c_str()));
  }
  std::vector<cudaEvent_t> ev(static_cast<size_t>(3 * iters));
  for (cudaEvent_t& e : ev) MH_CUDA_CHECK(cudaEventCreate(&e));
  for (int64_t i = 0; i < iters; ++i) {
    MH_CUDA_CHECK(cudaEventRecord(ev[3 * i], s));
    fwd();
    MH_CUDA_CHECK(cudaEventRecord(ev[3 * i + 1], s));
    bwd();
    MH_CUDA_CHECK(cudaEventRecord(ev[3 * i + 2], s));
  }
  MH_CUDA_CHECK(cuda::sync_within(s, what.c_str(), 60));
  std::vector<double> f, b, fb;
  for (int64_t i = 0; i < iters; ++i) {
    float a = 0, c = 0;
    MH_CUDA_CHECK(cudaEventElapsedTime(&a, ev[3 * i], ev[3 * i + 1]));
    MH_CUDA_CHECK(cudaEventElapsedTime(&c, ev[3 * i + 1], ev[3 * i + 2]));
    f.push_back(a);
    b.push_back(c);
    fb.push_back(a + c);
  }
  for (cudaEvent_t e : ev) MH_CUDA_CHECK(cudaEventDestroy(e));
  return {median(f), median(b), median(fb)};
}

// Device buffers of one problem: Q, K, V, O, dO, dQ, dK, dV [rows, H·d] and lse [H, rows].
struct Buffers {
  Tensor q, k, v, o, dout, dq, dk, dv, lse, key_len, cu_seqlens, workspace;
};

// Fills `t` with copies of `pattern` (random values of t's dtype), starting `shift` elements in,
// so that the tensors differ.
void fill_from(const Tensor& pattern, Tensor& t, int64_t shift, cudaStream_t s) {
  const size_t es = dtype_size(t.dtype());
  const int64_t n = t.numel(), p = pattern.numel();
  auto* dst = static_cast<std::byte*>(t.raw());
  const auto* src = static_cast<const std::byte*>(pattern.raw());
  for (int64_t done = 0, at = shift % p; done < n;) {
    const int64_t len = std::min(n - done, p - at);
    MH_CUDA_CHECK(
        cudaMemcpyAsync(dst + done * es, src + at * es, len * es, cudaMemcpyDeviceToDevice, s));
    done += len;
    at = 0;
  }
}

struct Settings {
  DType dtype = DType::bf16;
  std::string dtype_label = "bf16";  // as --dtype spells it (the peer script's spelling too)
  double dropout = 0, naive_max_gib = 8;
  int64_t iters = 20, warmup = 3;
  bool run_custom = true, run_cudnn = true, run_naive = true, run_hopper = true;
};

struct Row {
  Problem pr;
  Times custom, cudnn, naive, hopper;
  bool hopper_na = false;  // flash_sm90_supports() said no
};

Row run_problem(CudaBackend& be, const Problem& pr, const Settings& st, const Tensor& pattern,
                std::vector<std::string>& notes, bool& failed) {
  const cudaStream_t s = be.compute_stream();
  const int64_t rows = pr.rows(), row = int64_t{pr.heads} * pr.head_dim;
  const auto batch = static_cast<int64_t>(pr.lens.size());
  Buffers b;
  Tensor* all[] = {&b.q, &b.k, &b.v, &b.o, &b.dout, &b.dq, &b.dk, &b.dv};
  for (Tensor* t : all) *t = be.empty({rows, row}, st.dtype);
  int64_t shift = 0;
  for (Tensor* t : {&b.q, &b.k, &b.v, &b.dout}) fill_from(pattern, *t, shift += 7919, s);
  b.lse = be.empty({pr.heads, rows}, DType::f32);

  cuda::AttnProblem p;
  p.dtype = st.dtype;
  p.batch = static_cast<int>(batch);
  p.heads = pr.heads;
  p.head_dim = pr.head_dim;
  p.max_len_q = p.max_len_k = pr.max_len;
  p.total_q = p.total_k = rows;
  p.causal = pr.causal;
  p.scale = 1.0f / std::sqrt(static_cast<float>(pr.head_dim));
  p.dropout = static_cast<float>(st.dropout);
  p.seed = 1;
  p.offset = 0;
  if (pr.form == Form::mt_packed) {
    Tensor cu = Tensor::empty({batch + 1}, DType::i32);
    cu.data<int32_t>()[0] = 0;
    for (int64_t i = 0; i < batch; ++i)
      cu.data<int32_t>()[i + 1] = cu.data<int32_t>()[i] + pr.lens[static_cast<size_t>(i)];
    b.cu_seqlens = be.empty(cu.shape(), DType::i32);
    be.copy(cu, b.cu_seqlens);
    p.cu_seqlens_q = p.cu_seqlens_k = b.cu_seqlens.data<int32_t>();
  } else {
    Tensor kl = Tensor::empty({batch}, DType::i32);
    std::copy(pr.lens.begin(), pr.lens.end(), kl.data<int32_t>());
    b.key_len = be.empty(kl.shape(), DType::i32);
    be.copy(kl, b.key_len);
    p.key_len = b.key_len.data<int32_t>();
  }
  const cuda::AttnFwdIO fio{b.q.raw(), b.k.raw(), b.v.raw(), b.o.raw(), b.lse.data<float>()};
  const cuda::AttnBwdIO bio{b.q.raw(),           b.k.raw(),  b.v.raw(),  b.o.raw(), b.dout.raw(),
                            b.lse.data<float>(), b.dq.raw(), b.dk.raw(), b.dv.raw()};
  const auto note = [&](const std::string& n) {
    if (std::find(notes.begin(), notes.end(), n) == notes.end()) notes.push_back(n);
  };
  // "bf16 sweep d 64 L 2048 causal": the problem, in a deadline's message.
  const std::string where = str(st.dtype_label, " ", form_name(pr.form), " d ", pr.head_dim, " L ",
                                pr.max_len, pr.causal ? " causal" : "");
  // One implementation; a failure is reported and leaves its column empty (the exit status says).
  const auto attempt = [&](const char* impl, const std::function<Times()>& fn) {
    try {
      return fn();
    } catch (const std::exception& e) {
      note(str(impl, " failed on ", form_name(pr.form), " d ", pr.head_dim, " L ", pr.max_len, ": ",
               e.what()));
      failed = true;
      return Times{};
    }
  };

  Row r{pr, {}, {}, {}, {}, false};
  std::string why;
  if (st.run_custom) {
    if (cuda::flash_supports(p, &why)) {
      r.custom = attempt("custom", [&] {
        const size_t bytes = cuda::flash_attention_bwd_workspace(p);
        b.workspace = be.empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::f32);
        return time_fwd_bwd(
            "custom " + where, [&] { cuda::flash_attention_fwd(p, fio, s); },
            [&] { cuda::flash_attention_bwd(p, bio, b.workspace.raw(), s); }, st.warmup, st.iters,
            s);
      });
    } else {
      note("custom: " + why);
    }
  }
  if (st.run_cudnn) {
    r.cudnn = attempt("cudnn", [&] {
      cuda::CudnnSdpa& sdpa = be.cudnn_sdpa();
      if (!sdpa.supports(p, &why)) {
        note("cudnn: " + why);
        return Times{};
      }
      return time_fwd_bwd(
          "cudnn " + where, [&] { sdpa.fwd(p, fio, s); }, [&] { sdpa.bwd(p, bio, s); }, st.warmup,
          st.iters, s);
    });
  }
  if (st.run_hopper) {
    if (cuda::flash_sm90_supports(p, &why)) {
      r.hopper = attempt("hopper", [&] {
        const size_t bytes = cuda::flash_attention_bwd_workspace(p);
        b.workspace = be.empty({static_cast<int64_t>((bytes + 3) / 4)}, DType::f32);
        return time_fwd_bwd(
            "hopper " + where, [&] { cuda::flash_attention_fwd_sm90(p, fio, s); },
            [&] { cuda::flash_attention_bwd_sm90(p, bio, b.workspace.raw(), s); }, st.warmup,
            st.iters, s);
      });
    } else {
      r.hopper_na = true;
      note("hopper: " + why);
    }
  }
  // Naive keeps P [B, H, L, L] for backward, which builds dS of the same size.
  const double naive_bytes = 2.0 * static_cast<double>(batch) * pr.heads * pr.max_len * pr.max_len *
                             static_cast<double>(dtype_size(st.dtype));
  if (st.run_naive && pr.form != Form::mt_packed) {
    if (naive_bytes > st.naive_max_gib * 1073741824.0) {
      note(str("naive: skipped where its [B, H, L, L] tensors exceed ", st.naive_max_gib,
               " GiB (--naive-max-gib)"));
    } else {
      AttnArgs a;
      a.batch = batch;
      a.heads = pr.heads;
      a.len_q = a.len_k = pr.max_len;
      a.head_dim = pr.head_dim;
      a.key_len = pr.lens.data();
      a.causal = pr.causal;
      a.scale = p.scale;
      a.dropout = st.dropout;
      a.seed = p.seed;
      a.offset = p.offset;
      a.impl = AttnImpl::naive;
      AttnSaved saved;
      r.naive = attempt("naive", [&] {
        return time_fwd_bwd(
            "naive " + where, [&] { be.attention_fwd(a, b.q, b.k, b.v, b.o, saved); },
            [&] { be.attention_bwd(a, b.dout, b.q, b.k, b.v, saved, b.dq, b.dk, b.dv); }, st.warmup,
            st.iters, s);
      });
    }
  }
  return r;
}

double tflops(double flops, double ms) {
  return flops / (ms * 1e-3) / 1e12;  // NaN stays NaN
}

void print_row(const Row& r, const Settings& st, const std::string& device, bool json) {
  const Problem& pr = r.pr;
  const double f = pr.flops_fwd();
  struct Pass {
    const char* name;
    double flops, custom, cudnn, naive, hopper;
  };
  const Pass passes[] = {
      {"fwd", f, r.custom.fwd, r.cudnn.fwd, r.naive.fwd, r.hopper.fwd},
      {"bwd", 2.5 * f, r.custom.bwd, r.cudnn.bwd, r.naive.bwd, r.hopper.bwd},
      {"fwd+bwd", 3.5 * f, r.custom.both, r.cudnn.both, r.naive.both, r.hopper.both}};
  for (const Pass& ps : passes) {
    const double tc = tflops(ps.flops, ps.custom), td = tflops(ps.flops, ps.cudnn),
                 tn = tflops(ps.flops, ps.naive), th = tflops(ps.flops, ps.hopper);
    const double ratio = tc / td;
    if (json) {
      std::printf(
          "{\"bench\": \"attention\", \"case\": %s, \"dtype\": %s, \"head_dim\": %d, \"heads\": "
          "%d, "
          "\"batch\": %zu, \"seq\": %d, \"causal\": %s, \"tokens\": %lld, \"dropout\": %s, "
          "\"pass\": %s, \"gflop\": %s, \"custom_ms\": %s, \"custom_tflops\": %s, \"cudnn_ms\": "
          "%s, \"cudnn_tflops\": %s, \"naive_ms\": %s, \"naive_tflops\": %s, "
          "\"hopper_ms\": %s, \"hopper_tflops\": %s, \"custom_vs_cudnn\": %s, \"iters\": %lld, "
          "\"device\": %s}\n",
          json_string(form_name(pr.form)).c_str(), json_string(st.dtype_label).c_str(), pr.head_dim,
          pr.heads, pr.lens.size(), pr.max_len, pr.causal ? "true" : "false",
          static_cast<long long>(pr.tokens()), json_number(st.dropout, "%g").c_str(),
          json_string(ps.name).c_str(), json_number(ps.flops / 1e9, "%.3f").c_str(),
          json_number(ps.custom, "%.4f").c_str(), json_number(tc, "%.2f").c_str(),
          json_number(ps.cudnn, "%.4f").c_str(), json_number(td, "%.2f").c_str(),
          json_number(ps.naive, "%.4f").c_str(), json_number(tn, "%.2f").c_str(),
          json_number(ps.hopper, "%.4f").c_str(), json_number(th, "%.2f").c_str(),
          json_number(ratio, "%.3f").c_str(), static_cast<long long>(st.iters),
          json_string(device).c_str());
    } else {
      const auto cell = [](double v, const char* fmt) {
        char buf[32];
        if (std::isfinite(v))
          std::snprintf(buf, sizeof buf, fmt, v);
        else
          std::snprintf(buf, sizeof buf, "-");
        return std::string(buf);
      };
      std::printf("%-9s %4d %6s %6d %6zu %5d  %-7s %9.2f  %8s %8s %8s %8s  %8s\n",
                  form_name(pr.form), pr.head_dim, pr.causal ? "yes" : "no", pr.max_len,
                  pr.lens.size(), pr.heads, ps.name, ps.flops / 1e9, cell(tc, "%.1f").c_str(),
                  cell(td, "%.1f").c_str(), cell(tn, "%.1f").c_str(),
                  r.hopper_na ? "n/a" : cell(th, "%.1f").c_str(), cell(ratio, "%.2f").c_str());
    }
  }
  std::fflush(stdout);
}

#endif  // MH_WITH_CUDA

}  // namespace

int bench_attention(int argc, char** argv) {
  std::string dtype_text = "bf16", seq_text = "128,256,512,1024,2048,4096,8192",
              dims_text = "64,128", causal_text = "both", impls_text = "custom,cudnn,naive,hopper";
  int64_t tokens = 16384, model_dim = 2048, mt_tokens = 25000, iters = 20, warmup = 3, seed = 1;
  double dropout = 0, naive_max_gib = 8;
  bool json = false;
  po::options_description desc;
  desc.add_options()                                                                           //
      ("dtype", po::value(&dtype_text)->default_value(dtype_text), "bf16 | fp16")              //
      ("head-dim", po::value(&dims_text)->default_value(dims_text), "head dims, e.g. 64,128")  //
      ("seq", po::value(&seq_text)->default_value(seq_text),
       "sequence lengths L of the sweep (comma-separated)")  //
      ("causal", po::value(&causal_text)->default_value(causal_text)->implicit_value("on"),
       "both | on | off (--causal alone: on; --causal=off)")  //
      ("tokens", po::value(&tokens)->default_value(tokens),
       "tokens per sweep batch: B = tokens / L")  //
      ("model-dim", po::value(&model_dim)->default_value(model_dim),
       "H * head_dim: heads = model-dim / head-dim")  //
      ("mt-tokens", po::value(&mt_tokens)->default_value(mt_tokens),
       "tokens of the translation batch (mt-packed, mt-padded rows); 0: none")  //
      ("impl", po::value(&impls_text)->default_value(impls_text),
       "implementations to time, comma-separated")                                     //
      ("dropout", po::value(&dropout)->default_value(dropout), "attention dropout p")  //
      ("naive-max-gib", po::value(&naive_max_gib)->default_value(naive_max_gib),
       "skip naive where its two [B, H, L, L] tensors exceed this")                      //
      ("iters", po::value(&iters)->default_value(iters), "timed iterations")             //
      ("warmup", po::value(&warmup)->default_value(warmup), "untimed iterations first")  //
      ("seed", po::value(&seed)->default_value(seed), "the translation lengths' seed")   //
      ("json", po::bool_switch(&json), "one JSON object per row instead of the table");
  static const Command sub = {
      "bench attention",
      "TFLOP/s of the attention implementations (custom, cudnn, naive, hopper), forward and "
      "backward.",
      nullptr,
      "multihead bench attention --head-dim 64 --seq 1024,2048,4096 --causal\n"
      "  multihead bench attention --dtype fp16 --impl custom,cudnn --json",
      kBenchAttentionDetails};
  if (!parse_command_line(sub, argc, argv, desc)) return 0;
  DType dtype = DType::bf16;
  if (dtype_text == "fp16")
    dtype = DType::f16;
  else if (dtype_text != "bf16")
    user_error("bench attention: --dtype ", dtype_text, ": expected bf16 or fp16");
  const std::vector<int64_t> seqs = parse_list("--seq", seq_text);
  const std::vector<int64_t> dims = parse_list("--head-dim", dims_text);
  std::vector<bool> causal_modes;
  if (causal_text == "both")
    causal_modes = {false, true};
  else if (causal_text == "on")
    causal_modes = {true};
  else if (causal_text == "off")
    causal_modes = {false};
  else
    user_error("bench attention: --causal ", causal_text, ": expected both, on or off");
  bool run[4] = {false, false, false, false};  // custom, cudnn, naive, hopper
  {
    std::stringstream ss(impls_text);
    std::string item;
    while (std::getline(ss, item, ',')) {
      if (item == "custom")
        run[0] = true;
      else if (item == "cudnn")
        run[1] = true;
      else if (item == "naive")
        run[2] = true;
      else if (item == "hopper")
        run[3] = true;
      else
        user_error("bench attention: --impl ", item, ": expected custom, cudnn, naive or hopper");
    }
  }
  for (int64_t d : dims)
    if (model_dim % d != 0)
      user_error("bench attention: --model-dim ", model_dim, " is not a multiple of head dim ", d);
  if (tokens < 1 || mt_tokens < 0 || iters < 1 || warmup < 0 || dropout < 0 || dropout >= 1)
    user_error(
        "bench attention: --tokens and --iters must be >= 1, --mt-tokens and --warmup >= 0, "
        "--dropout in [0, 1)");

#ifdef MH_WITH_CUDA
  if (cuda_device_count() == 0)
    user_error("bench attention: no CUDA device is visible (it times GPU kernels)");
  CudaBackend be(0);
  cudaDeviceProp prop{};
  MH_CUDA_CHECK(cudaGetDeviceProperties(&prop, be.device_index()));
  const std::string device = prop.name;
  Settings st;
  st.dtype = dtype;
  st.dtype_label = dtype_text;
  st.dropout = dropout;
  st.naive_max_gib = naive_max_gib;
  st.iters = iters;
  st.warmup = warmup;
  st.run_custom = run[0];
  st.run_cudnn = run[1];
  st.run_naive = run[2];
  st.run_hopper = run[3];

  // Random inputs, copied into every buffer from one pattern of a prime length.
  Tensor pattern = be.empty({1000003}, dtype);
  {
    Tensor h = Tensor::empty(pattern.shape(), DType::f32);
    uint64_t x = 88172645463325252ull;  // xorshift64: uniform in [-1, 1)
    for (int64_t i = 0; i < h.numel(); ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      h.data<float>()[i] = static_cast<float>(static_cast<double>(x >> 11) * 0x1p-52 - 1.0);
    }
    be.upload(h, pattern);
  }

  std::vector<Problem> problems;
  const std::vector<int32_t> mt =
      mt_tokens > 0 ? mt_lengths(mt_tokens, static_cast<uint64_t>(seed)) : std::vector<int32_t>{};
  for (int64_t d : dims)
    for (bool causal : causal_modes) {
      Problem base;
      base.heads = static_cast<int>(model_dim / d);
      base.head_dim = static_cast<int>(d);
      base.causal = causal;
      for (int64_t L : seqs) {
        Problem pr = base;
        pr.max_len = static_cast<int>(L);
        pr.lens.assign(static_cast<size_t>(std::max<int64_t>(1, tokens / L)), pr.max_len);
        problems.push_back(pr);
      }
      if (!mt.empty())
        for (Form f : {Form::mt_packed, Form::mt_padded}) {
          Problem pr = base;
          pr.form = f;
          pr.lens = mt;
          pr.max_len = *std::max_element(mt.begin(), mt.end());
          problems.push_back(pr);
        }
    }

  if (!json) {
    std::printf(
        "# multihead bench attention: %s, %s, dropout %g; sweep: %lld tokens per batch (B = "
        "tokens / L), heads = %lld / head_dim%s\n",
        device.c_str(), dtype_text.c_str(), dropout, static_cast<long long>(tokens),
        static_cast<long long>(model_dim),
        mt.empty() ? ""
                   : str("; mt: ", mt.size(), " sentences of 10..100 tokens, ",
                         std::accumulate(mt.begin(), mt.end(), int64_t{0}), " tokens")
                         .c_str());
    std::printf(
        "# TFLOP/s, median of %lld iterations (cudaEvent); FLOPs: fwd 4*B*H*L*L*d, bwd 2.5x, "
        "causal halved\n",
        static_cast<long long>(iters));
    std::printf("%-9s %4s %6s %6s %6s %5s  %-7s %9s  %8s %8s %8s %8s  %8s\n", "# case", "d",
                "causal", "seq", "batch", "heads", "pass", "GFLOP", "custom", "cudnn", "naive",
                "hopper", "cus/cudnn");
    std::fflush(stdout);
  }
  std::vector<std::string> notes;
  bool failed = false;
  for (const Problem& pr : problems) {
    const Row r = run_problem(be, pr, st, pattern, notes, failed);
    print_row(r, st, device, json);
  }
  // Notes go to stderr with --json, so stdout stays one JSON object per line.
  for (const std::string& n : notes) std::fprintf(json ? stderr : stdout, "# %s\n", n.c_str());
  return failed ? 1 : 0;
#else
  (void)json, (void)run, (void)dtype;
  user_error(
      "bench attention: this multihead was built without the CUDA backend (configure with "
      "-DMULTIHEAD_CUDA=ON on a machine with the CUDA toolkit)");
#endif
}

}  // namespace mh::cli
