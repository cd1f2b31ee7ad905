// Config: defaults, YAML, --set precedence, round trip, every error class, the shipped configs;
// and the analytic model statistics (model/model_stats.h) that `multihead info` prints.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "config/config.h"
#include "config/embedded_toy.h"
#include "core/error.h"
#include "model/model_stats.h"
#include "model/transformer.h"

namespace mh {
namespace {

const std::string kSourceDir = MH_SOURCE_DIR;

// The message of the UserError `f` throws; fails the test if it throws nothing or something else.
std::string user_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected UserError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected UserError, nothing thrown";
  return "";
}

// Asserts the message is one line and contains every piece.
void expect_message(const std::string& msg, const std::vector<std::string>& pieces) {
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  for (const std::string& p : pieces)
    EXPECT_NE(msg.find(p), std::string::npos) << msg << "\n  lacks: " << p;
}

std::string error_of_text(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return user_error_of([&] { load_config_text(yaml, "configs/x.yaml", overrides); });
}

// config_to_yaml without its first line (a comment naming the source).
std::string body(const std::string& yaml) {
  return yaml.substr(yaml.find('\n') + 1);
}

std::string write_temp(const std::string& name, const std::string& text) {
  std::filesystem::path p = std::filesystem::path(::testing::TempDir()) / name;
  std::ofstream(p) << text;
  return p.string();
}

TEST(Config, DefaultsComeFromTheStructs) {
  const Config c = load_config_text("", "empty.yaml");
  const Config d;
  EXPECT_EQ(c.source, "empty.yaml");
  EXPECT_EQ(c.model.d_model, d.model.d_model);
  EXPECT_EQ(c.model.vocab_size, 37000);
  EXPECT_EQ(c.model.norm, NormPlacement::post);
  EXPECT_EQ(c.data.task, "reverse");
  EXPECT_DOUBLE_EQ(c.train.adam_eps, 1e-9);
  EXPECT_EQ(c.parallel.tp, 1);
  // An empty section is allowed, too.
  EXPECT_EQ(load_config_text("model:\ntrain:\n", "x").model.heads, 8);
}

TEST(Config, YamlValuesOfEveryType) {
  const Config c = load_config_text(R"(
model:
  d_model: 128
  heads: 4
  dropout: 0.25
  norm: pre
  activation: gelu
  share_embeddings: false
  norm_eps: 1e-6
data:
  task: numbers
  valid_pairs: "some file.txt"
  seed: 18446744073709551615
train:
  precision: bf16
  save: runs/a/model.safetensors
  clip_norm: 1
parallel:
  overlap: false
  bucket_mb: 12.5
)",
                                    "t.yaml");
  EXPECT_EQ(c.model.d_model, 128);
  EXPECT_EQ(c.model.heads, 4);
  EXPECT_DOUBLE_EQ(c.model.dropout, 0.25);
  EXPECT_EQ(c.model.norm, NormPlacement::pre);
  EXPECT_EQ(c.model.activation, Activation::gelu);
  EXPECT_FALSE(c.model.share_embeddings);
  EXPECT_DOUBLE_EQ(c.model.norm_eps, 1e-6);
  EXPECT_EQ(c.data.task, "numbers");
  EXPECT_EQ(c.data.valid_pairs, "some file.txt");
  EXPECT_EQ(c.data.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(c.train.precision, Precision::bf16);
  EXPECT_EQ(c.train.save, "runs/a/model.safetensors");
  EXPECT_DOUBLE_EQ(c.train.clip_norm, 1.0);  // an integer is a fine number
  EXPECT_FALSE(c.parallel.overlap);
  EXPECT_DOUBLE_EQ(c.parallel.bucket_mb, 12.5);
}

TEST(Config, PrecedenceDefaultThenYamlThenSet) {
  const std::string yaml = "model:\n  d_model: 128\n  heads: 4\n";
  EXPECT_EQ(load_config_text(yaml, "x").model.d_ff, 2048);    // default
  EXPECT_EQ(load_config_text(yaml, "x").model.d_model, 128);  // YAML over default
  const Config c = load_config_text(
      yaml, "x", {"model.d_model=256", "train.save=runs/x y#z.safetensors", "model.d_model=64"});
  EXPECT_EQ(c.model.d_model, 64);  // --set over YAML; the last --set wins
  EXPECT_EQ(c.model.heads, 4);
  EXPECT_EQ(c.train.save, "runs/x y#z.safetensors");  // strings verbatim
  EXPECT_EQ(load_config_text(yaml, "x", {"train.save="}).train.save, "");
  EXPECT_EQ(load_config_text(yaml, "x", {"model.norm=pre"}).model.norm, NormPlacement::pre);
  EXPECT_EQ(load_config_text(yaml, "x", {"parallel.overlap=false"}).parallel.overlap, false);
  EXPECT_DOUBLE_EQ(load_config_text(yaml, "x", {"train.adam_eps=1e-8"}).train.adam_eps, 1e-8);
}

TEST(Config, AttentionImplementations) {
  const std::string yaml = "model:\n  d_model: 128\n  heads: 4\n";
  EXPECT_EQ(load_config_text(yaml, "x").model.attention, AttnImpl::custom);  // the default
  const std::pair<const char*, AttnImpl> impls[] = {{"naive", AttnImpl::naive},
                                                    {"custom", AttnImpl::custom},
                                                    {"cudnn", AttnImpl::cudnn},
                                                    {"hopper", AttnImpl::hopper}};
  for (const auto& [name, impl] : impls) {
    EXPECT_EQ(load_config_text(yaml, "x", {std::string("model.attention=") + name}).model.attention,
              impl)
        << name;
    EXPECT_EQ(name_of(impl), name);
  }
  expect_message(error_of_text("model:\n  attention: flash3\n"),
                 {"expected one of naive|custom|cudnn|hopper"});
}

TEST(Config, ToYamlRoundTripsExactly) {
  Config c = load_config(kSourceDir + "/configs/paper-base.yaml",
                         {"train.lr_scale=0.1", "model.norm_eps=1e-9", "model.dropout=0.3",
                          "data.seed=18446744073709551615", "parallel.bucket_mb=0.1",
                          "train.init_from=a \"quoted\" \\ path: #x", "model.activation=gelu",
                          "data.valid_pairs=", "train.out_dir=true"});
  c.train.clip_norm = 1.0 / 3.0;  // a double that needs all 17 digits
  const std::string yaml = config_to_yaml(c);
  const Config back = load_config_text(yaml, "dump.yaml");
  EXPECT_EQ(body(config_to_yaml(back)), body(yaml));
  EXPECT_EQ(back.train.clip_norm, c.train.clip_norm);
  EXPECT_EQ(back.train.lr_scale, 0.1);
  EXPECT_EQ(back.model.norm_eps, 1e-9);
  EXPECT_EQ(back.data.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(back.train.init_from, c.train.init_from);
  EXPECT_EQ(back.train.out_dir, "true");
  EXPECT_EQ(back.data.valid_pairs, "");
  EXPECT_EQ(back.data.train_pairs, "data/wmt14-ende/train.pairs");
  EXPECT_EQ(back.model.activation, Activation::gelu);
  // Every key appears, grouped by section.
  for (const char* k : {"model:\n", "data:\n", "train:\n", "parallel:\n", "  vocab_size: 37000\n",
                        "  adam_eps: 1e-09\n", "  tp: 1\n", "  task: pairs\n"})
    EXPECT_NE(yaml.find(k), std::string::npos) << k << " not in\n" << yaml;
  // And through a file.
  const Config from_file = load_config(write_temp("dump.yaml", yaml));
  EXPECT_EQ(body(config_to_yaml(from_file)), body(yaml));
}

TEST(Config, HelpListsEveryKeyWithTypeAndDefault) {
  const std::string help = config_help();
  for (const char* k :
       {"model.d_model (int, default 512)", "model.norm (post|pre, default post)",
        "data.task (reverse|numbers|pairs, default reverse)",
        "train.adam_eps (float, default 1e-09)", "parallel.overlap (bool, default true)",
        "train.save (string, default \"\")", "data.seed (uint, default 1234)"})
    EXPECT_NE(help.find(k), std::string::npos) << k;
}

TEST(ConfigErrors, UnknownKeyNamesFileLineAndSuggestion) {
  const std::string yaml = "model:\n  d_model: 512\n\n\n\n  heads: 8\n  d_modle: 256\n";
  expect_message(error_of_text(yaml),
                 {"configs/x.yaml:7: unknown key 'model.d_modle' (did you mean 'model.d_model'?)"});
  // A key of another section.
  expect_message(error_of_text("model:\n  batch_size: 3\n"),
                 {"configs/x.yaml:2: unknown key 'model.batch_size'", "'data.batch_size'"});
  // Nothing close: no suggestion.
  const std::string far = error_of_text("train:\n  zzzzzzzz: 1\n");
  expect_message(far, {"configs/x.yaml:2: unknown key 'train.zzzzzzzz'"});
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
}

TEST(ConfigErrors, UnknownSection) {
  expect_message(error_of_text("model:\n  heads: 8\nmodle:\n  d_model: 3\n"),
                 {"configs/x.yaml:3: unknown key 'modle' (did you mean 'model'?)"});
  expect_message(error_of_text("optimizer:\n  lr: 3\n"),
                 {"configs/x.yaml:1: unknown key 'optimizer'", "model, data, train, parallel"});
  expect_message(error_of_text("model.d_model: 3\n"),
                 {"configs/x.yaml:1: unknown key 'model.d_model'", "nested under 'model:'"});
  expect_message(error_of_text("- 1\n- 2\n"), {"configs/x.yaml:1: expected a mapping"});
  expect_message(error_of_text("model: 3\n"),
                 {"configs/x.yaml:1: section 'model' must be a mapping", "'3'"});
}

TEST(ConfigErrors, WrongTypeNamesLineKeyAndValue) {
  expect_message(error_of_text("model:\n  vocab_size: 100\n  d_model: abc\n"),
                 {"configs/x.yaml:3: model.d_model: expected an integer, got 'abc'"});
  expect_message(error_of_text("model:\n  d_model: 1.5\n"),
                 {"configs/x.yaml:2: model.d_model: expected an integer, got '1.5'"});
  expect_message(error_of_text("model:\n  d_model: 99999999999999999999\n"),
                 {"configs/x.yaml:2:", "expected an integer"});
  expect_message(error_of_text("model:\n  dropout: high\n"),
                 {"configs/x.yaml:2: model.dropout: expected a number, got 'high'"});
  expect_message(error_of_text("model:\n  dropout: .nan\n"), {"expected a number, got '.nan'"});
  expect_message(error_of_text("model:\n  share_embeddings: yes\n"),
                 {"configs/x.yaml:2: model.share_embeddings: expected true or false, got 'yes'"});
  expect_message(error_of_text("model:\n  norm: middle\n"),
                 {"configs/x.yaml:2: model.norm: expected one of post|pre, got 'middle'"});
  expect_message(error_of_text("model:\n  activation: tanh\n"), {"expected one of relu|gelu"});
  expect_message(error_of_text("train:\n  precision: fp8\n"), {"expected one of fp32|bf16|fp16"});
  expect_message(error_of_text("data:\n  task: copy\n"),
                 {"data.task: expected one of reverse|numbers|pairs, got 'copy'"});
  expect_message(error_of_text("data:\n  seed: -1\n"),
                 {"data.seed: expected a non-negative integer, got '-1'"});
  expect_message(error_of_text("model:\n  d_model: [1, 2]\n"),
                 {"configs/x.yaml:2: model.d_model: expected an integer, got a list"});
  expect_message(error_of_text("model:\n  d_model:\n"),
                 {"model.d_model: expected an integer, got nothing"});
}

TEST(ConfigErrors, DuplicateKey) {
  expect_message(error_of_text("model:\n  heads: 8\n  heads: 4\n"),
                 {"configs/x.yaml:3: duplicate key 'model.heads' (first set at line 2)"});
}

TEST(ConfigErrors, YamlSyntaxErrorHasLine) {
  const std::string msg = error_of_text("model:\n  d_model: 512\n  heads: [8\n");
  expect_message(msg, {"configs/x.yaml:"});
  const std::string msg2 = error_of_text("model:\n  d_model: 512\n heads: 8\n");
  expect_message(msg2, {"configs/x.yaml:3: "});
}

TEST(ConfigErrors, MissingFile) {
  expect_message(user_error_of([] { load_config("configs/nope.yaml"); }),
                 {"configs/nope.yaml: cannot read file (No such file or directory)"});
  expect_message(user_error_of([] { load_config(::testing::TempDir()); }),
                 {": cannot read file (Is a directory)"});
}

TEST(ConfigErrors, BadOverridesNameTheOverride) {
  expect_message(error_of_text("", {"model.d_modle=256"}),
                 {"--set model.d_modle=256: unknown key 'model.d_modle' (did you mean "
                  "'model.d_model'?)"});
  expect_message(error_of_text("", {"model.heads"}), {"--set model.heads: expected key=value"});
  expect_message(error_of_text("", {"=3"}), {"--set =3: expected key=value"});
  expect_message(error_of_text("", {"model.heads=many"}),
                 {"--set model.heads=many: expected an integer, got 'many'"});
  expect_message(error_of_text("", {"model.heads=[8"}),
                 {"--set model.heads=[8: expected an integer"});
  expect_message(error_of_text("", {"model.norm=mid"}),
                 {"--set model.norm=mid: expected one of post|pre, got 'mid'"});
  expect_message(error_of_text("", {"model.heads="}),
                 {"--set model.heads=: expected an integer, got nothing"});
}

TEST(ConfigErrors, DivisibilityNamesBothKeysAndValues) {
  expect_message(error_of_text("model:\n  d_model: 500\n"),
                 {"configs/x.yaml:2: model.d_model (500) must be divisible by model.heads (8)"});
  expect_message(error_of_text("", {"model.d_model=500"}),
                 {"--set model.d_model=500: model.d_model (500) must be divisible by model.heads "
                  "(8)"});
}

// Each override alone makes the (valid) default config invalid; the message names the key, value
// and what was expected.
TEST(ConfigErrors, Validation) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model.vocab_size=0", "model.vocab_size (0) must be >= 1"},
      {"model.d_model=0", "model.d_model (0) must be >= 1"},
      {"model.heads=0", "model.heads (0) must be >= 1"},
      {"model.d_ff=-1", "model.d_ff (-1) must be >= 1"},
      {"model.encoder_layers=0", "model.encoder_layers (0) must be >= 1"},
      {"model.decoder_layers=0", "model.decoder_layers (0) must be >= 1"},
      {"model.max_len=1", "model.max_len (1) must be >= 2"},
      {"model.dropout=1", "model.dropout (1) must be in [0, 1)"},
      {"model.dropout=-0.1", "model.dropout (-0.1) must be in [0, 1)"},
      {"model.norm_eps=0", "model.norm_eps (0) must be > 0"},
      {"model.pad_id=37000", "model.pad_id (37000) must be in [0, model.vocab_size)"},
      {"data.bos_id=-1", "data.bos_id (-1) must be in [0, model.vocab_size)"},
      {"data.eos_id=99999", "data.eos_id (99999) must be in [0, model.vocab_size)"},
      {"data.bos_id=0", "data.bos_id (0) must differ from model.pad_id (0)"},
      {"data.eos_id=1", "data.eos_id (1) must differ from data.bos_id (1)"},
      {"data.batch_size=0", "data.batch_size (0) must be >= 1"},
      {"data.toy_min_len=13", "data.toy_max_len (12) must be >= data.toy_min_len (13)"},
      {"model.max_len=13", "data.toy_max_len (12) + 2 (BOS/EOS) must be <= model.max_len (13)"},
      {"data.task=pairs", "data.train_pairs must name a file when data.task is pairs"},
      {"train.steps=-1", "train.steps (-1) must be >= 0"},
      {"train.warmup=0", "train.warmup (0) must be >= 1"},
      {"train.label_smoothing=1", "train.label_smoothing (1) must be in [0, 1)"},
      {"train.adam_beta1=1", "train.adam_beta1 (1) must be in [0, 1)"},
      {"train.adam_beta2=-0.5", "train.adam_beta2 (-0.5) must be in [0, 1)"},
      {"train.adam_eps=0", "train.adam_eps (0) must be > 0"},
      {"train.lr_scale=0", "train.lr_scale (0) must be > 0"},
      {"train.clip_norm=-1", "train.clip_norm (-1) must be >= 0"},
      {"train.log_every=0", "train.log_every (0) must be >= 1"},
      {"parallel.bucket_mb=0", "parallel.bucket_mb (0) must be > 0"},
      {"parallel.tp=0", "parallel.tp (0) must be >= 1"},
      {"parallel.tp=3", "model.heads (8) must be divisible by parallel.tp (3)"},
  };
  for (const auto& [override, expected] : cases) {
    SCOPED_TRACE(override);
    expect_message(error_of_text("", {override}), {"--set " + override + ": ", expected});
  }
  // A rule over two keys points at the one set last.
  expect_message(error_of_text("data:\n  task: pairs\n"),
                 {"configs/x.yaml:2: data.train_pairs must name a file"});
  expect_message(error_of_text("model:\n  d_model: 500\n  heads: 4\n  heads: 3\n"),
                 {"duplicate key"});
  expect_message(error_of_text("model:\n  d_model: 64\n  heads: 3\n"),
                 {"configs/x.yaml:3: model.d_model (64) must be divisible by model.heads (3)"});
  // Synthetic-task bounds do not apply to pairs.
  EXPECT_NO_THROW(
      load_config_text("", "x", {"data.task=pairs", "data.train_pairs=p", "model.max_len=8"}));
}

TEST(Config, EmbeddedToyConfigLoadsAndMatchesTheFile) {
  const Config c = load_config_text(kEmbeddedToyYaml, "embedded:toy.yaml");
  EXPECT_EQ(c.source, "embedded:toy.yaml");
  EXPECT_EQ(c.model.vocab_size, 32);
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.data.task, "reverse");
  const Config f = load_config(kSourceDir + "/configs/toy.yaml");
  EXPECT_EQ(body(config_to_yaml(f)), body(config_to_yaml(c)));
  expect_message(user_error_of([] {
                   load_config_text(kEmbeddedToyYaml, "embedded:toy.yaml", {"model.heads=3"});
                 }),
                 {"--set model.heads=3: model.d_model (64) must be divisible by model.heads (3)"});
}

TEST(Config, PaperConfigsLoad) {
  const Config base = load_config(kSourceDir + "/configs/paper-base.yaml");
  EXPECT_EQ(base.model.d_model, 512);
  EXPECT_EQ(base.model.heads, 8);
  EXPECT_EQ(base.model.d_ff, 2048);
  EXPECT_EQ(base.model.encoder_layers, 6);
  EXPECT_EQ(base.model.decoder_layers, 6);
  EXPECT_DOUBLE_EQ(base.model.dropout, 0.1);
  EXPECT_EQ(base.model.vocab_size, 37000);
  EXPECT_TRUE(base.model.share_embeddings);
  EXPECT_EQ(base.model.norm, NormPlacement::post);
  EXPECT_EQ(base.model.activation, Activation::relu);
  EXPECT_EQ(base.data.task, "pairs");
  EXPECT_EQ(base.train.steps, 100000);
  EXPECT_EQ(base.train.warmup, 4000);
  EXPECT_EQ(base.train.tokens_per_step, 25000);
  EXPECT_DOUBLE_EQ(base.train.label_smoothing, 0.1);
  EXPECT_DOUBLE_EQ(base.train.adam_beta2, 0.98);
  EXPECT_DOUBLE_EQ(base.train.adam_eps, 1e-9);

  const Config big = load_config(kSourceDir + "/configs/paper-big.yaml");
  EXPECT_EQ(big.model.d_model, 1024);
  EXPECT_EQ(big.model.heads, 16);
  EXPECT_EQ(big.model.d_ff, 4096);
  EXPECT_DOUBLE_EQ(big.model.dropout, 0.3);
  EXPECT_EQ(big.train.steps, 300000);
}

// ---- model statistics
// ----------------------------------------------------------------------------

TEST(ModelStats, ParamCountOfThePaperModels) {
  const Config base = load_config(kSourceDir + "/configs/paper-base.yaml");
  const Config big = load_config(kSourceDir + "/configs/paper-big.yaml");
  EXPECT_EQ(count_params(base.model), 63082496);  // paper: 65M
  EXPECT_EQ(count_params(big.model), 214245376);  // paper: 213M
}

TEST(ModelStats, ParamCountByHand) {
  ModelConfig m;
  m.vocab_size = 10, m.d_model = 4, m.heads = 2, m.d_ff = 6, m.encoder_layers = 1,
  m.decoder_layers = 2;
  const int64_t attn = 4 * (4 * 4 + 4), norm = 2 * 4, ffn = 6 * 4 + 6 + 4 * 6 + 4;
  const int64_t layers = (attn + ffn + 2 * norm) + 2 * (2 * attn + ffn + 3 * norm);
  EXPECT_EQ(count_params(m), 10 * 4 + layers);
  m.share_embeddings = false;  // src_embed, tgt_embed, out_proj
  EXPECT_EQ(count_params(m), 3 * 10 * 4 + layers);
  m.norm = NormPlacement::pre;  // + encoder.norm, decoder.norm
  EXPECT_EQ(count_params(m), 3 * 10 * 4 + layers + 2 * norm);
}

// The analytic count equals the parameters the model really allocates, in every variant.
TEST(ModelStats, ParamCountMatchesTheBuiltModel) {
  CpuBackend be;
  for (bool shared : {true, false})
    for (NormPlacement norm : {NormPlacement::post, NormPlacement::pre}) {
      ModelConfig m;
      m.vocab_size = 37, m.d_model = 16, m.heads = 2, m.d_ff = 24, m.encoder_layers = 2,
      m.decoder_layers = 3, m.max_len = 16, m.share_embeddings = shared, m.norm = norm;
      Transformer t(be, m);
      EXPECT_EQ(count_params(m), t.num_params())
          << "shared " << shared << " norm " << name_of(norm);
    }
}

TEST(ModelStats, FlopsAreTwiceMatmulParamsPlusAttention) {
  ModelConfig m;  // base: d 512, f 2048, 6 + 6 layers, V 37000
  const double d = 512, f = 2048, v = 37000, l = 20;
  const double matmul_params = 6 * (4 * d * d + 2 * d * f) + 6 * (8 * d * d + 2 * d * f) + d * v;
  const double attention = 6 * 4 * l * d + 6 * 8 * l * d;
  const TokenFlops t = flops_per_token(m, l, l);
  EXPECT_DOUBLE_EQ(t.forward, 2 * matmul_params + attention);
  EXPECT_DOUBLE_EQ(t.train, 3 * t.forward);
  // Longer sources cost more per target token.
  EXPECT_GT(flops_per_token(m, 2 * l, l).forward, t.forward);
}

TEST(ModelStats, TypicalSequenceLength) {
  Config c = load_config_text(kEmbeddedToyYaml, "embedded:toy.yaml");
  EXPECT_DOUBLE_EQ(typical_seq_len(c),
                   (c.data.toy_min_len + c.data.toy_max_len) / 2.0 + 1);  // mean length + EOS
  c.data.toy_min_len = 4;
  c.data.toy_max_len = 12;
  EXPECT_DOUBLE_EQ(typical_seq_len(c), 9);
  c.data.task = "pairs";
  EXPECT_DOUBLE_EQ(typical_seq_len(c), 32);
  c.model.max_len = 16;
  EXPECT_DOUBLE_EQ(typical_seq_len(c), 16);
}

}  // namespace
}  // namespace mh
