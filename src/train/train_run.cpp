#include "train/train_run.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "backend/cpu/cpu_backend.h"
#include "core/json.h"
#include "core/rank_log.h"
#include "data/batcher.h"
#include "dist/world.h"
#include "infer/greedy.h"
#include "train/checkpoint.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace mh {

namespace {

using Clock = std::chrono::steady_clock;

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return str(s / 3600, "h", (s % 3600) / 60, "m");
  if (s >= 60) return str(s / 60, "m", s % 60, "s");
  return str(s, "s");
}

// A train.save path that cannot be written is found now, not after the whole run.
void check_save_path(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return;
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec))
    user_error("train.save '", path, "': directory '", parent.string(), "' does not exist");
  if (fs::is_directory(path, ec)) user_error("train.save '", path, "': is a directory");
}

// Creates out_dir and writes the effective config there (atomically).
void prepare_out_dir(const Config& cfg) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(cfg.train.out_dir, ec);
  if (ec) user_error("train.out_dir '", cfg.train.out_dir, "': cannot create (", ec.message(), ")");
  const std::string path = cfg.train.out_dir + "/config.yaml", tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << "# effective config of this run (from " << cfg.source << ")\n" << config_to_yaml(cfg);
    if (!f) user_error(tmp, ": cannot write");
  }
  fs::rename(tmp, path, ec);
  if (ec) user_error(path, ": cannot write (", ec.message(), ")");
}

std::string show(const ToyTask* toy, const std::vector<int32_t>& ids) {
  if (toy) return toy->vocab().decode(ids);
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(id);
  }
  return s;
}

// The target's content tokens: without BOS and EOS.
std::vector<int32_t> content(const std::vector<int32_t>& tgt, int32_t bos, int32_t eos) {
  std::vector<int32_t> out;
  for (int32_t t : tgt)
    if (t != bos && t != eos) out.push_back(t);
  return out;
}

// Greedy-decodes the held-out examples; prints a few; returns the exact-match accuracy.
double decode_held_out(Trainer& trainer, const Config& cfg, const ToyTask* toy,
                       const std::vector<Example>& valid, int shown) {
  const int32_t bos = static_cast<int32_t>(cfg.data.bos_id);
  const int32_t eos = static_cast<int32_t>(cfg.data.eos_id);
  int64_t correct = 0;
  int printed = 0;
  std::vector<Batch> batches = batches_of(valid, 100, static_cast<int32_t>(cfg.model.pad_id));
  size_t index = 0;
  for (const Batch& b : batches) {
    auto pred = greedy_decode(trainer.model(), trainer.backend(), b.input.src, b.input.src_len, bos,
                              eos, cfg.model.max_len);
    for (const auto& p : pred) {
      const Example& ex = valid[index++];
      const std::vector<int32_t> ref = content(ex.tgt, bos, eos);
      const bool ok = p == ref;
      correct += ok;
      if (printed < shown) {
        std::cout << "  " << show(toy, content(ex.src, bos, eos)) << "  ->  " << show(toy, p)
                  << "   (reference: " << show(toy, ref) << ") " << (ok ? "ok" : "WRONG") << "\n";
        ++printed;
      }
    }
  }
  return valid.empty() ? 0 : static_cast<double>(correct) / static_cast<double>(valid.size());
}

}  // namespace

TrainSummary run_training(const Config& cfg) {
  World& world = World::init(static_cast<int>(cfg.parallel.tp));
  if (world.tp() != 1)
    user_error("parallel.tp = ", world.tp(), ": tensor parallelism is not implemented yet (use 1)");
  const int dp_rank = world.dp_rank(), dp_size = world.dp();
  const bool lead = world.rank() == 0;
  // Everything that can fail on bad input happens before anything is written.
  Dataset data = load_dataset(cfg.model, cfg.data);
  Runtime rt = make_runtime(cfg, world);
  Backend& be = *rt.backend;
  Trainer trainer(cfg, be, rt.dp, rt.dp_host);
  trainer.init();
  check_save_path(cfg.train.save);
  if (lead) prepare_out_dir(cfg);
  world.world_comm().barrier().wait();  // out_dir exists for everyone
  {
    std::error_code ec;
    std::filesystem::create_directories(cfg.train.out_dir + "/logs", ec);
    if (ec)
      user_error("train.out_dir '", cfg.train.out_dir, "/logs': cannot create (", ec.message(),
                 ")");
  }
  RankLog rank_log(str(cfg.train.out_dir, "/logs/rank", world.rank(), ".log"), world.rank());

  std::cout << "multihead train: " << cfg.source << " | " << trainer.model().num_params()
            << " parameters | " << rt.description << " | " << cfg.train.steps << " steps | "
            << world.size() << " rank(s), dp " << dp_size << " (this is rank " << world.rank()
            << " on " << world.hostname() << ") | out " << cfg.train.out_dir << "\n"
            << "effective config:\n"
            << config_to_yaml(cfg) << std::flush;

  // The metrics file is rank 0's; the other ranks write theirs to a null stream.
  std::ofstream metrics;
  if (lead) {
    metrics.open(cfg.train.out_dir + "/metrics.jsonl");
    if (!metrics) user_error(cfg.train.out_dir, "/metrics.jsonl: cannot write");
  }
  const std::vector<Batch> valid_batches =
      batches_of(data.valid, cfg.data.batch_size, static_cast<int32_t>(cfg.model.pad_id));

  TrainSummary summary;
  const auto start = Clock::now();
  auto window_start = start;
  int64_t window_tokens = 0;
  double window_loss = 0, window_compute = 0, window_comm = 0, window_exposed = 0;
  int64_t window_steps = 0;
  for (int64_t s = 1; s <= cfg.train.steps; ++s) {
    const auto step_start = Clock::now();
    StepResult r = trainer.train_step([&] { return data.train.next(dp_rank, dp_size); });
    const double step_s = std::chrono::duration<double>(Clock::now() - step_start).count();
    window_tokens += r.src_tokens + r.tgt_tokens;
    window_loss += r.loss;
    window_compute += r.compute_s;
    window_comm += r.comm.comm_s;
    window_exposed += r.comm.exposed_s;
    ++window_steps;
    summary.final_loss = r.loss;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    metrics << "{\"step\": " << s << ", \"loss\": " << json_number(r.loss, "%.6g")
            << ", \"nll\": " << json_number(r.nll, "%.6g")
            << ", \"lr\": " << json_number(r.lr, "%.6g")
            << ", \"grad_norm\": " << json_number(r.grad_norm, "%.6g")
            << ", \"tgt_tokens\": " << r.tgt_tokens << ", \"src_tokens\": " << r.src_tokens
            << ", \"step_s\": " << json_number(step_s, "%.5f")
            << ", \"compute_s\": " << json_number(r.compute_s, "%.5f")
            << ", \"comm_s\": " << json_number(r.comm.comm_s, "%.5f")
            << ", \"exposed_comm_s\": " << json_number(r.comm.exposed_s, "%.5f")
            << ", \"elapsed_s\": " << json_number(elapsed, "%.3f") << "}\n";
    if (s % cfg.train.log_every == 0 || s == cfg.train.steps) {
      const auto now = Clock::now();
      const double window_s = std::chrono::duration<double>(now - window_start).count();
      const double tok_s = window_s > 0 ? window_tokens / window_s : 0;
      const double eta = elapsed / s * (cfg.train.steps - s);
      char line[256];
      std::snprintf(line, sizeof line,
                    "step %6lld/%lld | loss %7.4f | lr %.3e | %8.0f tok/s | elapsed %s | ETA %s",
                    static_cast<long long>(s), static_cast<long long>(cfg.train.steps),
                    window_loss / window_steps, r.lr, tok_s, format_duration(elapsed).c_str(),
                    format_duration(eta).c_str());
      std::cout << line;
      if (dp_size > 1) {
        // Per step, this rank: compute, all-reduce time, and the part of it backward did not hide.
        std::snprintf(line, sizeof line, " | compute %.0f ms, comm %.0f ms, exposed %.1f ms",
                      1e3 * window_compute / window_steps, 1e3 * window_comm / window_steps,
                      1e3 * window_exposed / window_steps);
        std::cout << line;
      }
      std::cout << std::endl;
      metrics.flush();
      window_start = now;
      window_tokens = 0;
      window_loss = window_compute = window_comm = window_exposed = 0;
      window_steps = 0;
    }
    if (lead && cfg.train.eval_every > 0 && s % cfg.train.eval_every == 0 && s < cfg.train.steps &&
        !valid_batches.empty()) {
      EvalResult e = trainer.evaluate(valid_batches);
      std::cout << "  valid: nll " << e.nll << " | loss " << e.loss << " | " << e.tokens
                << " tokens\n";
      metrics << "{\"step\": " << s << ", \"valid_nll\": " << json_number(e.nll, "%.6g")
              << ", \"valid_loss\": " << json_number(e.loss, "%.6g") << "}\n";
    }
  }

  // Replicas are identical after training: rank 0 evaluates, decodes and saves for everyone.
  if (!lead) return summary;
  if (!valid_batches.empty()) {
    EvalResult e = trainer.evaluate(valid_batches);
    summary.valid_nll = e.nll;
    std::cout << "valid: nll " << e.nll << " | loss " << e.loss << " | " << e.tokens << " tokens\n";
    if (data.toy) {
      std::cout << "held-out examples (greedy decoding):\n";
      summary.exact_match = decode_held_out(trainer, cfg, data.toy.get(), data.valid, 5);
      std::printf("exact match: %.1f%% of %zu held-out examples\n", 100 * summary.exact_match,
                  data.valid.size());
    }
    metrics << "{\"step\": " << cfg.train.steps << ", \"valid_nll\": " << json_number(e.nll, "%.6g")
            << ", \"valid_loss\": " << json_number(e.loss, "%.6g");
    if (summary.exact_match >= 0)
      metrics << ", \"exact_match\": " << json_number(summary.exact_match, "%.4f");
    metrics << "}\n";
  }
  if (!cfg.train.save.empty()) {
    save_weights(trainer.model(), be, cfg.train.save, trainer.step());
    std::cout << "saved " << cfg.train.save << "\n";
  }
  return summary;
}

}  // namespace mh
