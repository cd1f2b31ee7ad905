// `multihead bench <what>`: measured performance, printed beside nothing but facts of this run.
//   bench train: training tokens/s of a config's model on full-length random batches.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "cli/common_options.h"
#include "core/json.h"
#include "model/model_stats.h"
#include "train/trainer.h"

namespace mh::cli {
namespace {

// A batch of random tokens, every sentence full length (no padding), so tokens per step are
// exactly batch × (src_len + tgt_len) and every implementation does the same work.
Batch random_batch(std::mt19937_64& rng, const Config& cfg, int64_t batch, int64_t src_len,
                   int64_t tgt_len) {
  std::uniform_int_distribution<int32_t> tok(4, static_cast<int32_t>(cfg.model.vocab_size - 1));
  std::vector<Example> ex(static_cast<size_t>(batch));
  for (Example& e : ex) {
    for (int64_t i = 0; i < src_len; ++i) e.src.push_back(tok(rng));
    for (int64_t i = 0; i <= tgt_len; ++i)
      e.tgt.push_back(tok(rng));  // tgt_in and labels: tgt_len each
  }
  return make_batch(ex, static_cast<int32_t>(cfg.model.pad_id));
}

int bench_train(int argc, char** argv) {
  ConfigOptions config_opts;
  int64_t batch = 64, src_len = 32, tgt_len = 32, steps = 20, warmup = 3, threads = 1;
  bool json = false;
  po::options_description desc;
  add_config_options(desc, &config_opts);
  desc.add_options()                                                                          //
      ("batch", po::value(&batch)->default_value(batch), "sentences per step")                //
      ("src-len", po::value(&src_len)->default_value(src_len), "source tokens per sentence")  //
      ("tgt-len", po::value(&tgt_len)->default_value(tgt_len), "target tokens per sentence")  //
      ("steps", po::value(&steps)->default_value(steps), "timed optimizer steps")             //
      ("warmup", po::value(&warmup)->default_value(warmup), "untimed steps first")            //
      ("threads", po::value(&threads)->default_value(threads), "BLAS threads")                //
      ("json", po::bool_switch(&json), "print one JSON line instead of a table");
  static const Command sub = {"bench train", "Training tokens/s of a config's model.", nullptr,
                              "multihead bench train --config configs/bench-small.yaml"};
  if (!parse_command_line(sub, argc, argv, desc)) return 0;
  if (batch < 1 || src_len < 1 || tgt_len < 1 || steps < 1 || warmup < 0)
    user_error("bench train: --batch, --src-len, --tgt-len and --steps must be >= 1");
  Config cfg = resolve_config(config_opts);
  if (std::max(src_len, tgt_len) > cfg.model.max_len)
    user_error("bench train: sequences of ", std::max(src_len, tgt_len),
               " tokens exceed model.max_len (", cfg.model.max_len, ")");
  cfg.train.tokens_per_step = 0;  // one batch per step
  cpu_set_threads(static_cast<int>(threads));

  CpuBackend be;
  Trainer trainer(cfg, be);
  trainer.init();
  std::mt19937_64 rng(cfg.train.seed);
  const Batch b = random_batch(rng, cfg, batch, src_len, tgt_len);
  double first_loss = 0, last_loss = 0;
  for (int64_t i = 0; i < warmup; ++i) first_loss = trainer.train_step([&] { return b; }).loss;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) last_loss = trainer.train_step([&] { return b; }).loss;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double step_ms = 1e3 * secs / static_cast<double>(steps);
  const double tokens = static_cast<double>(batch * (src_len + tgt_len));
  const double tok_s = tokens * static_cast<double>(steps) / secs;
  // flops_per_token counts per target token (the encoder's share included).
  const double flops =
      flops_per_token(cfg.model, static_cast<double>(src_len), static_cast<double>(tgt_len)).train;
  const double gflops =
      tok_s * static_cast<double>(tgt_len) / static_cast<double>(src_len + tgt_len) * flops / 1e9;
  if (json) {
    std::cout << "{\"impl\": \"multihead\", \"backend\": \"cpu\", \"config\": "
              << json_string(cfg.source) << ", \"threads\": " << threads << ", \"steps\": " << steps
              << ", \"step_ms\": " << json_number(step_ms, "%.3f")
              << ", \"tokens_per_s\": " << json_number(tok_s, "%.1f") << ", \"tgt_tokens_per_s\": "
              << json_number(tok_s * tgt_len / (src_len + tgt_len), "%.1f")
              << ", \"gflops_per_s\": " << json_number(gflops, "%.2f")
              << ", \"params\": " << trainer.model().num_params()
              << ", \"loss_first\": " << json_number(first_loss, "%.5f")
              << ", \"loss_last\": " << json_number(last_loss, "%.5f") << "}\n";
  } else {
    std::printf("bench train: %s | %lld params | batch %lld x %lld/%lld tokens | %lld thread(s)\n",
                cfg.source.c_str(), static_cast<long long>(trainer.model().num_params()),
                static_cast<long long>(batch), static_cast<long long>(src_len),
                static_cast<long long>(tgt_len), static_cast<long long>(threads));
    std::printf("  %.2f ms/step | %.0f tokens/s (source + target) | %.2f GFLOP/s\n", step_ms, tok_s,
                gflops);
  }
  return 0;
}

int run_bench(int argc, char** argv) {
  const std::string what = argc >= 2 ? argv[1] : "";
  if (what == "train") return bench_train(argc - 1, argv + 1);
  if (what == "-h" || what == "--help" || what.empty()) {
    std::cout << "usage: multihead bench <what> [options]   (multihead bench <what> --help)\n"
                 "  train   training tokens/s of a config's model on random full-length batches\n"
                 "e.g. multihead bench train --config configs/bench-small.yaml --threads 1\n";
    return what.empty() ? 2 : 0;
  }
  user_error("bench: unknown benchmark '", what, "' (expected: train)");
}

}  // namespace

const Command cmd_bench = {"bench", "Performance measurements (bench train: training tokens/s).",
                           run_bench, "multihead bench train --config configs/bench-small.yaml"};

}  // namespace mh::cli
