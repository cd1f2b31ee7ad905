// Golden tests against PyTorch: every layer and the whole model, forward and backward, on the same
// weights and inputs, padding masks included.
//
// tests/reference/golden.py writes one safetensors file per case (all floats f64, ids/lengths
// i32): inputs "in.*" (in.dy: the upstream gradient), the parameters under their module names,
// outputs "out.*" and gradients "grad.in.*" / "grad.<param name>", configuration as __metadata__.
// Each case runs here twice, with the module built on the CPU backend in f64 and in f32
// (parameters and inputs converted from f64), and compares every stored output and gradient.
//
// Error measure, per tensor over all its elements, in double:
//   relative error = ||ours - ref||_2 / ||ref||_2
// Exception: a gradient that is zero in exact arithmetic (k_proj.bias: a key bias shifts every
// score of a query row by the same amount, which softmax ignores) is stored as exact zeros, and
// metadata "denominator.<name>" names the tensor whose norm is the denominator instead (that
// projection's weight gradient).
// Tolerances: f64 ≤ 1e-10 (the semantics are exactly PyTorch's), f32 ≤ 1e-5. For scale, each file
// also records PyTorch's own f32-vs-f64 error on the case (torch_f32_max_rel_err), printed below.
//
// ctest runs reference_golden_generate first (fixture "golden", tests/reference.cmake). Without
// torch, golden.py writes a SKIPPED marker and these tests skip with its message; a missing
// directory also skips (the binary run by hand), but a missing or malformed case file fails.
// MH_REFERENCE_VERBOSE=1 prints every tensor's error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "config/config.h"
#include "io/safetensors.h"
#include "model/attention.h"
#include "model/layers.h"
#include "model/transformer.h"
#include "model/transformer_layers.h"

namespace mh {
namespace {

constexpr double kTolF64 = 1e-10;
constexpr double kTolF32 = 1e-5;

double tolerance(DType dt) {
  return dt == DType::f64 ? kTolF64 : kTolF32;
}

std::string reference_dir() {
  if (const char* e = std::getenv("MH_REFERENCE_DIR"); e && *e) return e;
  return std::string(MH_BINARY_DIR) + "/reference";
}

bool verbose() {
  const char* e = std::getenv("MH_REFERENCE_VERBOSE");
  return e && *e && std::string(e) != "0";
}

// The values of any f32/f64/i32 tensor as doubles, via a host copy when it lives elsewhere.
std::vector<double> host_values(Backend& be, const Tensor& t) {
  Tensor h = t;
  if (t.device() != Device::cpu) {
    h = Tensor::empty(t.shape(), t.dtype());
    be.copy(t, h);
  }
  std::vector<double> v(static_cast<size_t>(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) v[i] = h.item(i);
  return v;
}

double norm2(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

// ||ours - ref|| / ||denominator|| (the denominator is usually ref itself).
double relative_error(const std::vector<double>& ours, const std::vector<double>& ref,
                      double denominator) {
  double d = 0;
  for (size_t i = 0; i < ref.size(); ++i) d += (ours[i] - ref[i]) * (ours[i] - ref[i]);
  d = std::sqrt(d);
  return denominator > 0 ? d / denominator : d;
}

// A golden file and typed access to it.
class Golden {
 public:
  Golden(std::string name, std::string path, SafetensorsFile file)
      : name_(std::move(name)), path_(std::move(path)), file_(std::move(file)) {}

  const std::string& name() const { return name_; }
  bool has(const std::string& key) const { return file_.tensors.count(key) > 0; }
  const std::map<std::string, Tensor>& tensors() const { return file_.tensors; }

  const Tensor& tensor(const std::string& key) const {
    auto it = file_.tensors.find(key);
    if (it == file_.tensors.end()) throw std::runtime_error(path_ + ": no tensor " + key);
    return it->second;
  }
  bool has_meta(const std::string& key) const { return file_.metadata.count(key) > 0; }
  const std::string& meta(const std::string& key) const {
    auto it = file_.metadata.find(key);
    if (it == file_.metadata.end()) throw std::runtime_error(path_ + ": no metadata " + key);
    return it->second;
  }
  int64_t meta_int(const std::string& key) const { return std::stoll(meta(key)); }
  double meta_double(const std::string& key) const { return std::stod(meta(key)); }
  bool meta_bool(const std::string& key) const {
    const std::string& v = meta(key);
    if (v != "true" && v != "false") throw std::runtime_error(path_ + ": " + key + " = " + v);
    return v == "true";
  }

  // A float tensor from the file (f64) converted to `dtype`, on the backend.
  Tensor load(Backend& be, const std::string& key, DType dtype) const {
    const Tensor& src = tensor(key);
    Tensor host = Tensor::empty(src.shape(), dtype);
    for (int64_t i = 0; i < src.numel(); ++i) host.set_item(i, src.item(i));
    Tensor dst = be.empty(src.shape(), dtype);
    be.copy(host, dst);
    return dst;
  }
  std::vector<int32_t> lengths(const std::string& key) const {
    const Tensor& t = tensor(key);
    const int32_t* p = t.data<int32_t>();
    return std::vector<int32_t>(p, p + t.numel());
  }

  // Parameter names: every tensor that is not an input, an output or a gradient.
  std::set<std::string> param_names() const {
    std::set<std::string> out;
    for (const auto& [k, t] : file_.tensors)
      if (k.rfind("in.", 0) != 0 && k.rfind("out.", 0) != 0 && k.rfind("grad.", 0) != 0)
        out.insert(k);
    return out;
  }

 private:
  std::string name_, path_;
  SafetensorsFile file_;
};

// Opens a case, or says why the tests should skip (no torch, no golden directory).
std::optional<Golden> open_case(const std::string& name, std::string* skip_reason) {
  namespace fs = std::filesystem;
  const std::string dir = reference_dir();
  if (fs::exists(dir + "/SKIPPED")) {
    std::ifstream in(dir + "/SKIPPED");
    std::stringstream ss;
    ss << in.rdbuf();
    *skip_reason = "golden.py skipped: " + ss.str();
    return std::nullopt;
  }
  if (!fs::is_directory(dir)) {
    *skip_reason = "no golden directory " + dir +
                   "; run `ctest -R reference_golden_generate` or `/usr/bin/python3 "
                   "tests/reference/golden.py " +
                   dir + "` first";
    return std::nullopt;
  }
  const std::string path = dir + "/" + name + ".safetensors";
  return Golden(name, path, load_safetensors(path));  // missing file: UserError, a failure
}

// Compares module results against the golden file and keeps a tally for the summary line.
class Checker {
 public:
  Checker(const Golden& g, Backend& be, DType dt) : g_(g), be_(be), dt_(dt), tol_(tolerance(dt)) {}

  void expect(const std::string& key, const Tensor& ours) {
    const Tensor& ref = g_.tensor(key);
    ASSERT_TRUE(ours.defined()) << key << ": not computed";
    ASSERT_EQ(shape_str(ours.shape()), shape_str(ref.shape())) << key;
    ASSERT_EQ(ours.dtype(), dt_) << key;
    std::vector<double> r = host_values(be_, ref);
    double denom = norm2(r);
    std::string denom_key = "denominator." + key;
    if (g_.has_meta(denom_key)) denom = norm2(host_values(be_, g_.tensor(g_.meta(denom_key))));
    record(key, relative_error(host_values(be_, ours), r, denom));
  }

  void expect_scalar(const std::string& key, double ours) {
    const Tensor& ref = g_.tensor(key);
    ASSERT_EQ(ref.numel(), 1) << key;
    double r = ref.item(0);
    record(key, r != 0 ? std::abs(ours - r) / std::abs(r) : std::abs(ours));
  }

  // Every output and gradient in the file must have been compared.
  void expect_all_compared() {
    for (const auto& [k, t] : g_.tensors())
      if ((k.rfind("out.", 0) == 0 || k.rfind("grad.", 0) == 0) && !seen_.count(k))
        ADD_FAILURE() << g_.name() << ": " << k << " is in the golden file but never compared";
  }

  void summary() const {
    std::ostringstream os;
    os << "  [" << g_.name() << " " << dtype_name(dt_) << "] " << seen_.size()
       << " tensors, max rel err " << worst_ << " (" << worst_key_ << "), tol " << tol_;
    if (g_.has_meta("torch_f32_max_rel_err"))
      os << "; torch f32 vs f64: " << g_.meta("torch_f32_max_rel_err");
    std::cout << os.str() << std::endl;
  }

 private:
  void record(const std::string& key, double err) {
    seen_.insert(key);
    if (verbose())
      std::cout << "    " << dtype_name(dt_) << " " << key << ": rel err " << err << std::endl;
    EXPECT_LE(err, tol_) << g_.name() << " " << dtype_name(dt_) << ": " << key;
    if (!(err <= worst_)) {  // NaN counts as the worst
      worst_ = err;
      worst_key_ = key;
    }
  }

  const Golden& g_;
  Backend& be_;
  DType dt_;
  double tol_;
  double worst_ = 0;
  std::string worst_key_ = "-";
  std::set<std::string> seen_;
};

// Copies every module parameter in from the file; the module and the file must hold the same
// set of names and shapes. Gradients start at zero.
template <class Module>
void load_params(const Golden& g, Backend& be, DType dt, Module& m) {
  std::set<std::string> file_params = g.param_names(), module_params;
  m.for_each_param([&](Param& p) {
    module_params.insert(p.name);
    if (!g.has(p.name)) return;
    ASSERT_EQ(shape_str(p.value.shape()), shape_str(g.tensor(p.name).shape())) << p.name;
    be.copy(g.load(be, p.name, dt), p.value);
    be.copy(Tensor::zeros(p.grad.shape(), p.grad.dtype()), p.grad);
  });
  for (const auto& n : module_params)
    EXPECT_TRUE(file_params.count(n)) << "module parameter " << n << " not in " << g.name();
  for (const auto& n : file_params)
    EXPECT_TRUE(module_params.count(n)) << g.name() << " parameter " << n << " not in the module";
}

template <class Module>
void expect_param_grads(Checker& c, Module& m) {
  m.for_each_param([&](Param& p) { c.expect("grad." + p.name, p.grad); });
}

ActKind act_kind(const std::string& s) {
  if (s == "relu") return ActKind::relu;
  if (s == "gelu") return ActKind::gelu;
  throw std::runtime_error("unknown activation " + s);
}

// The ModelConfig fields a layer or model case carries; the rest keep their defaults.
ModelConfig model_config(const Golden& g) {
  ModelConfig cfg;
  cfg.d_model = g.meta_int("d_model");
  cfg.heads = g.meta_int("heads");
  cfg.d_ff = g.meta_int("d_ff");
  cfg.norm = g.meta("norm") == "pre" ? NormPlacement::pre : NormPlacement::post;
  cfg.norm_eps = g.meta_double("norm_eps");
  cfg.activation = g.meta("activation") == "gelu" ? Activation::gelu : Activation::relu;
  cfg.dropout = 0.0;
  if (g.meta("kind") == "model") {
    cfg.vocab_size = g.meta_int("vocab_size");
    cfg.encoder_layers = g.meta_int("encoder_layers");
    cfg.decoder_layers = g.meta_int("decoder_layers");
    cfg.share_embeddings = g.meta_bool("share_embeddings");
    cfg.max_len = g.meta_int("max_len");
    cfg.pad_id = g.meta_int("pad_id");
  }
  return cfg;
}

// --- one runner per kind of case --------------------------------------------------------------

void run_linear(const Golden& g, Backend& be, DType dt, Checker& c) {
  Ctx ctx(be);
  Linear m(be, g.meta("prefix"), g.meta_int("in_features"), g.meta_int("out_features"), dt);
  load_params(g, be, dt, m);
  c.expect("out.y", m.forward(ctx, g.load(be, "in.x", dt)));
  c.expect("grad.in.x", m.backward(ctx, g.load(be, "in.dy", dt)));
  expect_param_grads(c, m);
}

void run_layernorm(const Golden& g, Backend& be, DType dt, Checker& c) {
  Ctx ctx(be);
  LayerNorm m(be, g.meta("prefix"), g.meta_int("dim"), g.meta_double("eps"), dt);
  load_params(g, be, dt, m);
  c.expect("out.y", m.forward(ctx, g.load(be, "in.x", dt)));
  c.expect("grad.in.x", m.backward(ctx, g.load(be, "in.dy", dt)));
  expect_param_grads(c, m);
}

void run_ffn(const Golden& g, Backend& be, DType dt, Checker& c) {
  Ctx ctx(be);
  FeedForward m(be, g.meta("prefix"), g.meta_int("d_model"), g.meta_int("d_ff"),
                act_kind(g.meta("activation")), dt);
  load_params(g, be, dt, m);
  c.expect("out.y", m.forward(ctx, g.load(be, "in.x", dt)));
  c.expect("grad.in.x", m.backward(ctx, g.load(be, "in.dy", dt)));
  expect_param_grads(c, m);
}

void run_attention(const Golden& g, Backend& be, DType dt, Checker& c) {
  Ctx ctx(be);
  MultiHeadAttention m(be, g.meta("prefix"), g.meta_int("d_model"), g.meta_int("heads"), dt);
  load_params(g, be, dt, m);
  AttnMask mask{g.lengths("in.key_len"), g.meta_bool("causal")};
  const bool self = g.meta_bool("self_attention");
  Tensor x = g.load(be, "in.x", dt);
  Tensor kv = self ? x : g.load(be, "in.memory", dt);
  c.expect("out.y", m.forward(ctx, x, kv, mask));
  auto [dx_q, dx_kv] = m.backward(ctx, g.load(be, "in.dy", dt));
  if (self) {
    Tensor dx = be.empty(dx_q.shape(), dt);
    be.add(dx_q, dx_kv, dx);  // both paths reach x
    c.expect("grad.in.x", dx);
  } else {
    c.expect("grad.in.x", dx_q);
    c.expect("grad.in.memory", dx_kv);
  }
  expect_param_grads(c, m);
}

void run_encoder_layer(const Golden& g, Backend& be, DType dt, Checker& c) {
  Ctx ctx(be);
  EncoderLayer m(be, g.meta("prefix"), model_config(g), dt);
  load_params(g, be, dt, m);
  AttnMask src_mask{g.lengths("in.src_len"), false};
  c.expect("out.y", m.forward(ctx, g.load(be, "in.x", dt), src_mask));
  c.expect("grad.in.x", m.backward(ctx, g.load(be, "in.dy", dt)));
  expect_param_grads(c, m);
}

void run_decoder_layer(const Golden& g, Backend& be, DType dt, Checker& c) {
  Ctx ctx(be);
  DecoderLayer m(be, g.meta("prefix"), model_config(g), dt);
  load_params(g, be, dt, m);
  AttnMask self_mask{g.lengths("in.tgt_len"), true};
  AttnMask cross_mask{g.lengths("in.src_len"), false};
  Tensor memory = g.load(be, "in.memory", dt);
  c.expect("out.y", m.forward(ctx, g.load(be, "in.x", dt), memory, self_mask, cross_mask));
  Tensor d_memory = be.zeros(memory.shape(), dt);
  c.expect("grad.in.x", m.backward(ctx, g.load(be, "in.dy", dt), d_memory));
  c.expect("grad.in.memory", d_memory);
  expect_param_grads(c, m);
}

// The whole model: logits, the mean label-smoothed loss over non-pad labels, its gradient w.r.t.
// the logits, and every parameter gradient.
void run_model(const Golden& g, Backend& be, DType dt, Checker& c) {
  Ctx ctx(be);
  ModelConfig cfg = model_config(g);
  Transformer m(be, cfg, dt);
  load_params(g, be, dt, m);
  ModelInput in;
  in.src = g.tensor("in.src");
  in.src_len = g.lengths("in.src_len");
  in.tgt_in = g.tensor("in.tgt_in");
  in.tgt_len = g.lengths("in.tgt_len");
  ctx.begin_forward(0);
  Tensor logits = m.forward(ctx, in);
  c.expect("out.logits", logits);

  const Tensor& labels2d = g.tensor("in.labels");
  Tensor labels = labels2d.view({labels2d.numel()});
  const int64_t tokens = g.meta_int("tokens");
  Tensor dlogits = be.empty(logits.shape(), dt);
  XentResult r = be.softmax_xent(logits, labels, cfg.pad_id, g.meta_double("label_smoothing"),
                                 1.0 / static_cast<double>(tokens), &dlogits);
  EXPECT_EQ(r.tokens, tokens);
  c.expect_scalar("out.loss", r.loss_sum / static_cast<double>(r.tokens));
  c.expect_scalar("out.loss_sum", r.loss_sum);
  c.expect_scalar("out.nll_sum", r.nll_sum);
  c.expect("grad.logits", dlogits);

  m.backward(ctx, dlogits);
  expect_param_grads(c, m);
}

// Backend::softmax_xent alone: sums, token count and dlogits for grad_scale = 1 / tokens.
void run_xent(const Golden& g, Backend& be, DType dt, Checker& c) {
  Tensor logits = g.load(be, "in.logits", dt);
  const double grad_scale = g.meta_double("grad_scale");
  Tensor dlogits = be.empty(logits.shape(), dt);
  XentResult r = be.softmax_xent(logits, g.tensor("in.labels"), g.meta_int("pad_id"),
                                 g.meta_double("label_smoothing"), grad_scale, &dlogits);
  EXPECT_EQ(r.tokens, g.meta_int("tokens"));
  c.expect_scalar("out.loss_sum", r.loss_sum);
  c.expect_scalar("out.nll_sum", r.nll_sum);
  c.expect_scalar("out.scaled_loss", r.loss_sum * grad_scale);
  c.expect("grad.logits", dlogits);
}

void run_case(const std::string& name, DType dt) {
  std::string why;
  std::optional<Golden> g = open_case(name, &why);
  if (!g) GTEST_SKIP() << why;
  CpuBackend be;
  Checker c(*g, be, dt);
  const std::string kind = g->meta("kind");
  if (kind == "linear")
    run_linear(*g, be, dt, c);
  else if (kind == "layernorm")
    run_layernorm(*g, be, dt, c);
  else if (kind == "ffn")
    run_ffn(*g, be, dt, c);
  else if (kind == "attention")
    run_attention(*g, be, dt, c);
  else if (kind == "encoder_layer")
    run_encoder_layer(*g, be, dt, c);
  else if (kind == "decoder_layer")
    run_decoder_layer(*g, be, dt, c);
  else if (kind == "model")
    run_model(*g, be, dt, c);
  else if (kind == "xent")
    run_xent(*g, be, dt, c);
  else
    FAIL() << name << ": unknown kind " << kind;
  if (::testing::Test::HasFatalFailure()) return;
  c.expect_all_compared();
  c.summary();
}

#define MH_GOLDEN_CASE(name)         \
  TEST(TorchReference, name##_f64) { \
    run_case(#name, DType::f64);     \
  }                                  \
  TEST(TorchReference, name##_f32) { \
    run_case(#name, DType::f32);     \
  }

MH_GOLDEN_CASE(linear)
MH_GOLDEN_CASE(layernorm)
MH_GOLDEN_CASE(ffn_relu)
MH_GOLDEN_CASE(ffn_gelu)
MH_GOLDEN_CASE(attention_self_padded)
MH_GOLDEN_CASE(attention_causal_padded)
MH_GOLDEN_CASE(attention_cross)
MH_GOLDEN_CASE(encoder_layer_post)
MH_GOLDEN_CASE(encoder_layer_pre)
MH_GOLDEN_CASE(decoder_layer_post)
MH_GOLDEN_CASE(decoder_layer_pre)
MH_GOLDEN_CASE(model_post_shared_relu)
MH_GOLDEN_CASE(model_pre_unshared_gelu)
MH_GOLDEN_CASE(xent_smooth)
MH_GOLDEN_CASE(xent_plain)

}  // namespace
}  // namespace mh
