// The typed configuration of a run. Every field is declared once in config.cpp's option table
// (name, type, default, help), which feeds YAML files, `--set key=value` overrides and the printed
// effective config alike; precedence is default < YAML < --set.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/attn_impl.h"

namespace mh {

enum class NormPlacement { post, pre };  // post: the paper; pre: LayerNorm inside the residual
enum class Activation { relu, gelu };
enum class Precision { fp32, bf16, fp16 };

// The spellings used in configs ("post", "gelu", "bf16").
std::string_view name_of(NormPlacement v);
std::string_view name_of(Activation v);
std::string_view name_of(Precision v);
std::string_view name_of(AttnImpl v);

struct ModelConfig {
  int64_t vocab_size = 37000;
  int64_t d_model = 512;
  int64_t heads = 8;
  int64_t d_ff = 2048;
  int64_t encoder_layers = 6;
  int64_t decoder_layers = 6;
  double dropout = 0.1;  // on embeddings+PE and every sublayer output
  NormPlacement norm = NormPlacement::post;
  double norm_eps = 1e-5;
  Activation activation = Activation::relu;
  bool share_embeddings = true;  // one matrix: source, target embedding and output projection
  int64_t max_len = 256;         // longest sequence (positional-encoding table size)
  int64_t pad_id = 0;
  // Attention implementation on a GPU (core/attn_impl.h); the CPU has one exact implementation.
  AttnImpl attention = AttnImpl::custom;
  double attention_dropout = 0.0;  // on attention probabilities (not in the paper: default off)
};

struct DataConfig {
  // Where batches come from: "reverse" / "numbers" (synthetic, generated in memory) or "pairs"
  // (pre-tokenized files: source ids TAB target ids per line).
  std::string task = "reverse";
  std::string train_pairs;  // task: pairs
  std::string valid_pairs;  // task: pairs (optional)
  int64_t batch_size = 64;  // sentences per micro-batch
  int64_t bos_id = 1;
  int64_t eos_id = 2;
  // Synthetic tasks.
  int64_t toy_min_len = 4;
  int64_t toy_max_len = 12;
  int64_t toy_symbols = 20;      // reverse: distinct symbols in the alphabet
  int64_t toy_valid_size = 500;  // held-out examples
  uint64_t seed = 1234;          // generator seed for synthetic data and shuffling
};

struct TrainConfig {
  int64_t steps = 1000;         // optimizer steps
  uint64_t seed = 1;            // parameter init and dropout
  std::string save;             // safetensors path written at the end ("" = none)
  std::string init_from;        // safetensors path read at start ("" = random init)
  int64_t tokens_per_step = 0;  // target tokens per optimizer step; 0 = one micro-batch
  double lr_scale = 1.0;        // lr = lr_scale * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)
  int64_t warmup = 4000;
  double label_smoothing = 0.1;
  double clip_norm = 0.0;  // global gradient-norm clip; 0 = off
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.98;
  double adam_eps = 1e-9;
  double weight_decay = 0.0;
  Precision precision = Precision::fp32;
  // Where the step runs: "cpu", "cuda" (rank r uses GPU local_rank % GPUs), or "auto" (cuda when
  // this binary has the CUDA backend and a GPU is visible, else cpu; the choice is logged).
  std::string device = "auto";
  double loss_scale = 65536;            // fp16: initial dynamic loss scale
  int64_t loss_scale_window = 1000;     // fp16: steps without overflow before the scale doubles
  int64_t log_every = 50;               // steps between progress lines
  int64_t eval_every = 0;               // steps between validation evals; 0 = only at the end
  std::string out_dir = "runs/latest";  // effective config, metrics.jsonl, logs
  int64_t threads = 0;                  // BLAS threads per rank; 0 = leave the library default
};

struct ParallelConfig {
  double bucket_mb = 25.0;  // gradient bucket size for the data-parallel all-reduce
  bool overlap = true;      // all-reduce buckets during backward (false: after backward)
  int64_t tp = 1;           // tensor-parallel group size
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
  std::string source;  // where it came from, for messages: a path or "embedded:toy.yaml"
};

// Loads `path` (YAML), applies overrides ("a.b=value"), validates. Throws UserError naming the
// file, key or value and what was expected.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text already in memory; `name` is used in messages.
Config load_config_text(const std::string& yaml_text, const std::string& name,
                        const std::vector<std::string>& overrides = {});
// The effective config as YAML (every key, including defaults), loadable by load_config.
std::string config_to_yaml(const Config& c);
// One-paragraph-per-key help: name, type, default, meaning. For `--help-config`.
std::string config_help();

// The candidate closest to `word` by edit distance (a transposition counts as one edit), or "" when
// none is close; for "did you mean" hints (config keys, subcommand names).
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace mh
