// `multihead bench <what>`: measured performance, printed beside nothing but facts of this run.
//   bench train: training tokens/s of a config's model on full-length random batches.
//   bench comm:  collective bandwidth of the Communicator beside raw MPI (nccl-tests' table).
//   bench attention: TFLOP/s of the attention implementations (bench_attention.cpp).
//   bench gemm:  cuBLASLt GEMM TFLOP/s beside cuBLAS, fused epilogues (bench_gemm.cpp).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/profiling_backend.h"
#include "cli/bench_gemm.h"
#include "cli/common_options.h"
#include "core/json.h"
#include "dist/mpi_communicator.h"
#include "dist/world.h"
#include "model/model_stats.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace mh::cli {

int bench_attention(int argc, char** argv);  // bench_attention.cpp

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

// The --profile table: the ops taking most of the step, then the rest in one line.
void print_profile(const ProfilingBackend& prof, bool device_time) {
  const auto rows = prof.rows();
  const double n = static_cast<double>(prof.steps());
  double total = 0;
  for (const auto& r : rows) total += r.seconds;
  std::printf("  %s per op over %lld profiled step(s), per step (time marks before every op):\n",
              device_time ? "device time" : "time", static_cast<long long>(prof.steps()));
  std::printf("  %10s %7s %7s  %s\n", "ms", "share", "calls", "op");
  constexpr size_t kShown = 25;
  double rest = 0;
  int64_t rest_ops = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i >= kShown) {
      rest += rows[i].seconds;
      ++rest_ops;
      continue;
    }
    std::printf("  %10.3f %6.1f%% %7.1f  %s\n", rows[i].seconds * 1e3 / n,
                total > 0 ? 100 * rows[i].seconds / total : 0.0,
                static_cast<double>(rows[i].calls) / n, rows[i].op.c_str());
  }
  if (rest_ops > 0)
    std::printf("  %10.3f %6.1f%% %7s  (%lld more ops)\n", rest * 1e3 / n,
                total > 0 ? 100 * rest / total : 0.0, "", static_cast<long long>(rest_ops));
  std::printf("  %10.3f %6.1f%% %7s  all ops\n", total * 1e3 / n, 100.0, "");
}

int bench_train(int argc, char** argv) {
  ConfigOptions config_opts;
  int64_t batch = 64, src_len = 32, tgt_len = 32, steps = 20, warmup = 3, threads = 1;
  int64_t profile_steps = 0, rounds = 1;
  bool json = false;
  po::options_description desc;
  add_config_options(desc, &config_opts);
  desc.add_options()                                                                          //
      ("batch", po::value(&batch)->default_value(batch), "sentences per step")                //
      ("src-len", po::value(&src_len)->default_value(src_len), "source tokens per sentence")  //
      ("tgt-len", po::value(&tgt_len)->default_value(tgt_len), "target tokens per sentence")  //
      ("steps", po::value(&steps)->default_value(steps), "timed optimizer steps")             //
      ("warmup", po::value(&warmup)->default_value(warmup), "untimed steps first")            //
      ("rounds", po::value(&rounds)->default_value(rounds),
       "time --steps this many times in a row; tokens/s is the median round's, and every "
       "round's is printed (repeated measurements in one run)")                 //
      ("threads", po::value(&threads)->default_value(threads), "BLAS threads")  //
      ("profile", po::value(&profile_steps)->default_value(profile_steps),
       "after the timed steps, N more with a time mark before every op: where the step's time "
       "goes, op by op (device time on a GPU), most expensive first")  //
      ("json", po::bool_switch(&json), "print one JSON line instead of a table");
  static const Command sub = {"bench train",
                              "Training tokens/s of a config's model (under mpirun: data-parallel, "
                              "--batch per rank).",
                              nullptr, "multihead bench train --config configs/bench-small.yaml"};
  if (!parse_command_line(sub, argc, argv, desc)) return 0;
  if (batch < 1 || src_len < 1 || tgt_len < 1 || steps < 1 || warmup < 0)
    user_error("bench train: --batch, --src-len, --tgt-len and --steps must be >= 1");
  if (rounds < 1) user_error("bench train: --rounds must be >= 1, not ", rounds);
  if (profile_steps < 0)
    user_error("bench train: --profile must be >= 0 (steps), not ", profile_steps);
  Config cfg = resolve_config(config_opts);
  if (std::max(src_len, tgt_len) > cfg.model.max_len)
    user_error("bench train: sequences of ", std::max(src_len, tgt_len),
               " tokens exceed model.max_len (", cfg.model.max_len, ")");
  cfg.train.tokens_per_step = 0;  // one batch per step
  cfg.train.threads = threads;

  // Under mpirun this is data-parallel weak scaling: --batch sentences per rank, gradients
  // all-reduced in buckets exactly as in `multihead train`.
  World& world = World::init();
  const int dp = world.dp();
  cfg.data.batch_size = batch * dp;
  Runtime rt = make_runtime(cfg, world);
  // --profile: the model computes through a ProfilingBackend, marks off until the timed steps
  // are over (the timed steps pay one virtual call per op, nothing else).
  std::unique_ptr<ProfilingBackend> prof;
  if (profile_steps > 0)
    prof = std::make_unique<ProfilingBackend>(*rt.backend, make_op_clock(*rt.backend));
  Trainer trainer(cfg, prof ? static_cast<Backend&>(*prof) : *rt.backend, rt.dp, rt.dp_host);
  trainer.init();
  std::mt19937_64 rng(cfg.train.seed + static_cast<uint64_t>(world.rank()));
  const Batch b = random_batch(rng, cfg, batch, src_len, tgt_len);
  double first_loss = 0, last_loss = 0, compute_s = 0, comm_s = 0, exposed_s = 0;
  for (int64_t i = 0; i < warmup; ++i) first_loss = trainer.train_step([&] { return b; }).loss;
  world.world_comm().barrier().wait();
  // CPU time of the MPI progress threads (gradients; the host-side scalars, also the inner
  // communicator of the host-staged GPU path): what overlap takes from compute on a CPU.
  const auto progress_cpu = [&] {
    double s = rt.dp ? rt.dp->progress_cpu_seconds() : 0.0;
    if (rt.dp_host && rt.dp_host != rt.dp) s += rt.dp_host->progress_cpu_seconds();
    return s;
  };
  const double cpu0 = progress_cpu();
  std::vector<double> round_s;  // each round's wall time
  for (int64_t k = 0; k < rounds; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) {
      StepResult r = trainer.train_step([&] { return b; });
      last_loss = r.loss;
      compute_s += r.compute_s;
      comm_s += r.comm.comm_s;
      exposed_s += r.comm.exposed_s;
    }
    round_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double progress_cpu_s = (progress_cpu() - cpu0) / static_cast<double>(rounds);
  compute_s /= static_cast<double>(rounds);
  comm_s /= static_cast<double>(rounds);
  exposed_s /= static_cast<double>(rounds);
  // The median round (the upper one of an even count): one slow spell does not move it.
  std::vector<double> sorted_s = round_s;
  std::sort(sorted_s.begin(), sorted_s.end());
  const double secs = sorted_s[sorted_s.size() / 2];
  if (prof) {
    prof->set_enabled(true);
    for (int64_t i = 0; i < profile_steps; ++i) {
      trainer.train_step([&] { return b; });
      prof->end_step();
    }
    prof->set_enabled(false);
  }
  if (world.rank() != 0) return 0;
  const double per_step = 1e3 / static_cast<double>(steps);
  const double step_ms = secs * per_step;
  const double tokens = static_cast<double>(batch * (src_len + tgt_len) * dp);
  const double tok_s = tokens * static_cast<double>(steps) / secs;
  // flops_per_token counts per target token (the encoder's share included).
  const double flops =
      flops_per_token(cfg.model, static_cast<double>(src_len), static_cast<double>(tgt_len)).train;
  const double gflops =
      tok_s * static_cast<double>(tgt_len) / static_cast<double>(src_len + tgt_len) * flops / 1e9;
  if (json) {
    std::cout << "{\"impl\": \"multihead\", \"backend\": " << json_string(rt.description)
              << ", \"precision\": " << json_string(name_of(cfg.train.precision))
              << ", \"config\": " << json_string(cfg.source) << ", \"ranks\": " << dp
              << ", \"threads\": " << threads << ", \"batch_per_rank\": " << batch
              << ", \"steps\": " << steps << ", \"step_ms\": " << json_number(step_ms, "%.3f")
              << ", \"compute_ms\": " << json_number(compute_s * per_step, "%.3f")
              << ", \"comm_ms\": " << json_number(comm_s * per_step, "%.3f")
              << ", \"exposed_comm_ms\": " << json_number(exposed_s * per_step, "%.3f")
              << ", \"progress_cpu_ms\": " << json_number(progress_cpu_s * per_step, "%.3f")
              << ", \"rounds\": " << rounds << ", \"rounds_tokens_per_s\": [";
    for (size_t k = 0; k < round_s.size(); ++k)
      std::cout << (k ? ", " : "")
                << json_number(tokens * static_cast<double>(steps) / round_s[k], "%.1f");
    std::cout << "]"
              << ", \"tokens_per_s\": " << json_number(tok_s, "%.1f") << ", \"tgt_tokens_per_s\": "
              << json_number(tok_s * tgt_len / (src_len + tgt_len), "%.1f")
              << ", \"gflops_per_s\": " << json_number(gflops, "%.2f")
              << ", \"params\": " << trainer.model().num_params()
              << ", \"loss_first\": " << json_number(first_loss, "%.5f")
              << ", \"loss_last\": " << json_number(last_loss, "%.5f");
    if (prof) {
      const double n = static_cast<double>(prof->steps());
      std::cout << ", \"profile_steps\": " << prof->steps() << ", \"profile\": [";
      const auto rows = prof->rows();
      for (size_t i = 0; i < rows.size(); ++i)
        std::cout << (i ? ", " : "") << "{\"op\": " << json_string(rows[i].op)
                  << ", \"calls\": " << json_number(static_cast<double>(rows[i].calls) / n, "%.2f")
                  << ", \"ms\": " << json_number(rows[i].seconds * 1e3 / n, "%.4f") << "}";
      std::cout << "]";
    }
    std::cout << "}\n";
  } else {
    std::printf(
        "bench train: %s | %s | %lld params | %d rank(s) x batch %lld x %lld/%lld tokens | %lld "
        "thread(s) per rank\n",
        cfg.source.c_str(), rt.description.c_str(),
        static_cast<long long>(trainer.model().num_params()), dp, static_cast<long long>(batch),
        static_cast<long long>(src_len), static_cast<long long>(tgt_len),
        static_cast<long long>(threads));
    std::printf("  %.2f ms/step | %.0f tokens/s (source + target, all ranks) | %.2f GFLOP/s\n",
                step_ms, tok_s, gflops);
    if (rounds > 1) {
      std::printf("  tokens/s by round (the median above):");
      for (double r : round_s) std::printf(" %.0f", tokens * static_cast<double>(steps) / r);
      std::printf("\n");
    }
    if (dp > 1)
      std::printf(
          "  per step on rank 0: compute %.1f ms | all-reduce %.1f ms | exposed %.1f ms (%.1f%% of "
          "the step) | progress thread CPU %.1f ms\n",
          compute_s * per_step, comm_s * per_step, exposed_s * per_step, 100 * exposed_s / secs,
          progress_cpu_s * per_step);
    if (prof) print_profile(*prof, rt.backend->device() == Device::cuda);
  }
  return 0;
}

// --- bench comm ------------------------------------------------------------------------------

const char* const kBenchCommDetails =
    "Runs on every rank of the world (start it with mpirun); rank 0 prints one row per size, from\n"
    "--min to --max bytes, doubling. Each size is timed twice on the same buffers: through the\n"
    "multihead Communicator (an async call + Work::wait(), so its queue, Work handle and progress\n"
    "thread are included) and as the raw blocking MPI call (MPI_Allreduce in place,\n"
    "MPI_Reduce_scatter_block, MPI_Allgather) on the same MPI communicator, with nothing pending.\n"
    "\n"
    "columns (nccl-tests' definitions, https://github.com/NVIDIA/nccl-tests doc/PERFORMANCE.md):\n"
    "  size     S, bytes: all_reduce: the buffer on each rank; reduce_scatter: the input of each\n"
    "           rank (the whole array, n chunks); all_gather: the output of each rank (n chunks)\n"
    "  count    elements in S\n"
    "  type     element type;  redop: the reduction (none for all_gather)\n"
    "  time     microseconds per collective: the mean over the timed ones (--iters, or as many\n"
    "           as fill --seconds) on each rank, then the max over ranks\n"
    "  algbw    S / time, GB/s (1e9 bytes)\n"
    "  busbw    algbw x 2(n-1)/n for all_reduce, algbw x (n-1)/n for reduce_scatter and\n"
    "           all_gather (n ranks): the bandwidth each rank's link sustained, comparable\n"
    "           across rank counts and with the hardware's peak\n"
    "  #wrong   elements wrong after the first collective, summed over ranks (inputs are small\n"
    "           integers, so every reduction is exact and the check is equality)\n"
    "  raw      time, algbw, busbw of the raw MPI call\n"
    "  vs raw   busbw / raw busbw, the cost of the Communicator over MPI itself: the two\n"
    "           columns run alternately in up to 10 pairs of blocks of collectives; this is\n"
    "           the median over the pairs of raw block time / Communicator block time, so a\n"
    "           slow spell of a shared host, which hits both blocks of a pair, cancels out\n"
    "The last lines give the total #wrong (the exit status is 1 when it is not 0) and the mean\n"
    "busbw of both columns over the sizes of at least 1 MB.\n";

// "4K", "256M", "1G", "4096": bytes (binary multiples).
int64_t parse_bytes(const std::string& option, const std::string& text) {
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  int64_t scale = 1;
  const std::string suffix = text.substr(used);
  if (suffix == "K" || suffix == "k")
    scale = int64_t{1} << 10;
  else if (suffix == "M" || suffix == "m")
    scale = int64_t{1} << 20;
  else if (suffix == "G" || suffix == "g")
    scale = int64_t{1} << 30;
  else if (!suffix.empty())
    used = 0;
  if (used == 0 || value < 1)
    user_error("bench comm: ", option, " ", text,
               ": expected a size in bytes such as 4096, 4K, 256M, 1G");
  return value * scale;
}

enum class CommOp { all_reduce, reduce_scatter, all_gather };

// Input element i of rank r: a small integer, so sums over ranks are exact in any dtype.
double bench_value(int rank, int64_t i) {
  return static_cast<double>((rank + 3 * i) % 11 - 5);
}

struct CommTiming {
  double seconds = 0;  // per collective, max over ranks of the per-rank mean
  double algbw = 0, busbw = 0;
};

int bench_comm(int argc, char** argv) {
  std::string op_name = "all_reduce", min_text = "4K", max_text = "256M", dtype_text = "f32";
  int64_t iters = 0, warmup = -1;
  double seconds = 0.5;
  bool json = false, raw_twice = false;
  po::options_description desc;
  desc.add_options()  //
      ("op", po::value(&op_name)->default_value(op_name),
       "all_reduce | reduce_scatter | all_gather")  //
      ("min", po::value(&min_text)->default_value(min_text),
       "smallest size S in bytes (K, M, G: 2^10, 2^20, 2^30)")  //
      ("max", po::value(&max_text)->default_value(max_text),
       "largest size S in bytes; sizes double from --min")  //
      ("iters", po::value(&iters)->default_value(iters),
       "timed collectives per size and column; 0: as many as fill --seconds (at least 5)")  //
      ("seconds", po::value(&seconds)->default_value(seconds),
       "with --iters 0: the time each column spends per size, from a probe of 3 calls; longer "
       "runs give steadier 'vs raw' on a noisy machine")  //
      ("warmup", po::value(&warmup)->default_value(warmup),
       "untimed collectives first; -1: a tenth of the timed ones (at least 2)")          //
      ("dtype", po::value(&dtype_text)->default_value(dtype_text), "f32 | f64 | i32")    //
      ("json", po::bool_switch(&json), "one JSON object per size instead of the table")  //
      ("raw-twice", po::bool_switch(&raw_twice),
       "an A/A run: raw MPI in both columns, so 'vs raw' shows how far from 100% noise alone "
       "takes it on this machine");
  static const Command sub = {"bench comm",
                              "Collective bandwidth: the multihead Communicator beside raw MPI, in "
                              "nccl-tests' table.",
                              nullptr, "mpirun -np 2 multihead bench comm --min 4K --max 256M",
                              kBenchCommDetails};
  if (!parse_command_line(sub, argc, argv, desc)) return 0;
  CommOp op = CommOp::all_reduce;
  if (op_name == "reduce_scatter")
    op = CommOp::reduce_scatter;
  else if (op_name == "all_gather")
    op = CommOp::all_gather;
  else if (op_name != "all_reduce")
    user_error("bench comm: --op ", op_name, ": expected all_reduce, reduce_scatter or all_gather");
  DType dtype = DType::f32;
  const char* type_name = "float";
  if (dtype_text == "f64")
    dtype = DType::f64, type_name = "double";
  else if (dtype_text == "i32")
    dtype = DType::i32, type_name = "int32";
  else if (dtype_text != "f32")
    user_error("bench comm: --dtype ", dtype_text, ": expected f32, f64 or i32");
  const int64_t min_bytes = parse_bytes("--min", min_text),
                max_bytes = parse_bytes("--max", max_text);
  if (min_bytes > max_bytes)
    user_error("bench comm: --min ", min_text, " exceeds --max ", max_text);
  if (iters < 0) user_error("bench comm: --iters must be >= 0");
  if (!(seconds > 0 && seconds <= 3600))
    user_error("bench comm: --seconds ", seconds, ": expected a time in (0, 3600]");

  World& world = World::init();
  auto& comm = dynamic_cast<MpiCommunicator&>(world.world_comm());
  const MPI_Comm raw_comm = comm.comm();
  const int n = comm.size(), rank = comm.rank();
  const MPI_Datatype mpi_type = mpi_datatype(dtype);
  const auto esize = static_cast<int64_t>(dtype_size(dtype));
  const char* redop = op == CommOp::all_gather ? "none" : "sum";
  const double bus_factor = op == CommOp::all_reduce ? 2.0 * (n - 1) / n : double(n - 1) / n;
  const char* raw_name = op == CommOp::all_reduce       ? "MPI_Allreduce"
                         : op == CommOp::reduce_scatter ? "MPI_Reduce_scatter_block"
                                                        : "MPI_Allgather";
  using Clock = std::chrono::steady_clock;

  if (rank == 0 && !json) {
    std::printf("# multihead bench comm: %s, %d rank(s) on %d node(s), %s, %s\n", op_name.c_str(),
                n, n / world.local_size(), comm.name().c_str(),
                op == CommOp::all_reduce ? "in place" : "out of place");
    std::printf(
        "#%51s%-33s%s\n", "",
        raw_twice ? (std::string(raw_name) + " (A/A run)").c_str() : "multihead Communicator",
        raw_name);
    std::printf("#%11s %13s %6s %5s  %9s %7s %7s %6s  %9s %7s %7s  %6s\n", "size", "count", "type",
                "redop", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "vs raw");
    std::printf("#%11s %13s %6s %5s  %9s %7s %7s %6s  %9s %7s %7s  %6s\n", "(B)", "(elements)", "",
                "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "busbw");
    std::fflush(stdout);
  }

  int64_t total_wrong = 0;
  double sum_busbw = 0, sum_raw_busbw = 0;
  int big_rows = 0;
  for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
    // Elements: all_reduce: S / esize per rank; the others: S / esize in all, n chunks of `chunk`.
    int64_t count = bytes / esize, chunk = count;
    if (op != CommOp::all_reduce) {
      chunk = count / n;
      count = chunk * n;
    }
    if (chunk == 0) continue;
    const int64_t size = count * esize;
    Tensor in, out;
    if (op == CommOp::all_reduce) out = Tensor::empty({count}, dtype);
    if (op == CommOp::reduce_scatter)
      in = Tensor::empty({count}, dtype), out = Tensor::empty({chunk}, dtype);
    if (op == CommOp::all_gather)
      in = Tensor::empty({chunk}, dtype), out = Tensor::empty({count}, dtype);
    Tensor& src = op == CommOp::all_reduce ? out : in;
    for (int64_t i = 0; i < src.numel(); ++i) src.set_item(i, bench_value(rank, i));
    if (op != CommOp::all_reduce) out.zero_();

    const std::function<Work()> run_comm = [&] {
      if (op == CommOp::all_reduce) return comm.all_reduce(out, ReduceOp::sum);
      if (op == CommOp::reduce_scatter) return comm.reduce_scatter(in, out, ReduceOp::sum);
      return comm.all_gather(in, out);
    };
    // Raw MPI on the same buffers; called only while no Work is pending (the SERIALIZED contract).
    const std::function<void()> run_raw = [&] {
      const int c = static_cast<int>(chunk);
      if (op == CommOp::all_reduce)
        MH_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, out.raw(), c, mpi_type, MPI_SUM, raw_comm));
      else if (op == CommOp::reduce_scatter)
        MH_MPI_CHECK(MPI_Reduce_scatter_block(in.raw(), out.raw(), c, mpi_type, MPI_SUM, raw_comm));
      else
        MH_MPI_CHECK(MPI_Allgather(in.raw(), c, mpi_type, out.raw(), c, mpi_type, raw_comm));
    };

    // Correctness: the first collective on fresh inputs.
    run_comm().wait();
    int64_t wrong = 0;
    for (int64_t i = 0; i < out.numel(); ++i) {
      double want = 0;
      if (op == CommOp::all_reduce)
        for (int k = 0; k < n; ++k) want += bench_value(k, i);
      else if (op == CommOp::reduce_scatter)
        for (int k = 0; k < n; ++k) want += bench_value(k, rank * chunk + i);
      else
        want = bench_value(static_cast<int>(i / chunk), i % chunk);
      wrong += out.item(i) != want;
    }
    MH_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT64_T, MPI_SUM, raw_comm));
    total_wrong += wrong;
    // Repeated in-place sums would grow the values n-fold per call (to inf, or past INT_MAX);
    // zeros stay zeros and cost the same to move and add.
    if (op == CommOp::all_reduce) out.zero_();

    // The two columns alternate in up to 10 pairs of blocks, each block after a barrier, so that
    // both see the same machine (this one is shared and noisy). Raw MPI runs only between
    // blocks of the Communicator, with no Work pending (the SERIALIZED contract).
    const auto run_block = [&](bool multihead, int64_t k) {
      MH_MPI_CHECK(MPI_Barrier(raw_comm));
      const auto t0 = Clock::now();
      if (multihead) {
        if (raw_twice) {
          std::lock_guard<std::mutex> lock(mpi_call_mutex());
          for (int64_t i = 0; i < k; ++i) run_raw();
        } else {
          for (int64_t i = 0; i < k; ++i) run_comm().wait();
        }
      } else {
        std::lock_guard<std::mutex> lock(mpi_call_mutex());  // nothing is pending; belt and braces
        for (int64_t i = 0; i < k; ++i) run_raw();
      }
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    // How many to time: --iters, or as many as fill --seconds at the slower column's pace in a
    // probe of 3 calls each after 2 (the max over ranks, so every rank runs the same count). A
    // fixed count (it was 512 MiB / size, at most 200) made a 1 MB block 1.6 ms long, and one
    // scheduler tick in it moved that pair's ratio by several %.
    int64_t timed = iters;
    if (timed == 0) {
      run_block(true, 2);
      run_block(false, 2);
      double probe_s = std::max(run_block(true, 3), run_block(false, 3)) / 3;
      MH_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &probe_s, 1, MPI_DOUBLE, MPI_MAX, raw_comm));
      timed = static_cast<int64_t>(std::clamp(seconds / std::max(probe_s, 1e-7), 5.0, 1e7));
    }
    const int64_t untimed = warmup >= 0 ? warmup : std::max<int64_t>(2, timed / 10);
    run_block(true, untimed);
    run_block(false, untimed);
    const int64_t blocks = std::min<int64_t>(timed, 10);
    // [0, blocks): the Communicator's block times, [blocks, 2 blocks): raw MPI's.
    std::vector<double> block_s(static_cast<size_t>(2 * blocks), 0.0);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k = timed / blocks + (b < timed % blocks ? 1 : 0);
      const bool mh_first = b % 2 == 0;
      block_s[static_cast<size_t>(mh_first ? b : blocks + b)] = run_block(mh_first, k);
      block_s[static_cast<size_t>(mh_first ? blocks + b : b)] = run_block(!mh_first, k);
    }
    // Per-rank means, then the max over ranks (outside the timed blocks); block times likewise.
    double secs[2] = {0, 0};  // [0]: multihead, [1]: raw
    for (int64_t b = 0; b < blocks; ++b) {
      secs[0] += block_s[static_cast<size_t>(b)];
      secs[1] += block_s[static_cast<size_t>(blocks + b)];
    }
    for (double& t : secs) t /= static_cast<double>(timed);
    MH_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, secs, 2, MPI_DOUBLE, MPI_MAX, raw_comm));
    MH_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, block_s.data(), static_cast<int>(block_s.size()),
                               MPI_DOUBLE, MPI_MAX, raw_comm));
    // "vs raw" pairs each block with the raw block next to it: the median of their time ratios
    // (= busbw ratios; the two blocks of a pair run the same number of collectives). A slow
    // spell of the host then hits both sides of a pair and cancels out, as a difference of
    // means over the whole row does not.
    std::vector<double> ratios;
    for (int64_t b = 0; b < blocks; ++b) {
      const double mh_b = block_s[static_cast<size_t>(b)];
      if (mh_b > 0) ratios.push_back(block_s[static_cast<size_t>(blocks + b)] / mh_b);
    }
    std::sort(ratios.begin(), ratios.end());
    const size_t r_n = ratios.size();
    const double vs_raw = r_n == 0       ? 0
                          : r_n % 2 == 1 ? ratios[r_n / 2]
                                         : 0.5 * (ratios[r_n / 2 - 1] + ratios[r_n / 2]);
    const auto timing = [&](double t) {
      CommTiming c;
      c.seconds = t;
      c.algbw = static_cast<double>(size) / t / 1e9;
      c.busbw = c.algbw * bus_factor;
      return c;
    };
    const CommTiming mh_t = timing(secs[0]), raw_t = timing(secs[1]);
    if (size >= (int64_t{1} << 20)) {
      sum_busbw += mh_t.busbw;
      sum_raw_busbw += raw_t.busbw;
      ++big_rows;
    }
    if (rank != 0) continue;
    if (json) {
      std::printf(
          "{\"op\": %s, \"ranks\": %d, \"size\": %lld, \"count\": %lld, \"type\": %s, \"redop\": "
          "%s, \"iters\": %lld, \"time_us\": %s, \"algbw\": %s, \"busbw\": %s, \"wrong\": %lld, "
          "\"raw_time_us\": %s, \"raw_algbw\": %s, \"raw_busbw\": %s, \"busbw_vs_raw\": %s}\n",
          json_string(op_name).c_str(), n, static_cast<long long>(size),
          static_cast<long long>(count), json_string(type_name).c_str(), json_string(redop).c_str(),
          static_cast<long long>(timed), json_number(mh_t.seconds * 1e6, "%.2f").c_str(),
          json_number(mh_t.algbw, "%.4f").c_str(), json_number(mh_t.busbw, "%.4f").c_str(),
          static_cast<long long>(wrong), json_number(raw_t.seconds * 1e6, "%.2f").c_str(),
          json_number(raw_t.algbw, "%.4f").c_str(), json_number(raw_t.busbw, "%.4f").c_str(),
          json_number(vs_raw, "%.4f").c_str());
    } else {
      std::printf(" %11lld %13lld %6s %5s  %9.2f %7.3f %7.3f %6lld  %9.2f %7.3f %7.3f  %5.1f%%\n",
                  static_cast<long long>(size), static_cast<long long>(count), type_name, redop,
                  mh_t.seconds * 1e6, mh_t.algbw, mh_t.busbw, static_cast<long long>(wrong),
                  raw_t.seconds * 1e6, raw_t.algbw, raw_t.busbw, 100.0 * vs_raw);
    }
    std::fflush(stdout);
  }
  if (rank == 0 && !json) {
    std::printf("# all #wrong: %lld\n", static_cast<long long>(total_wrong));
    if (big_rows > 0)
      std::printf("# mean busbw over sizes >= 1 MB: %.3f GB/s (raw MPI: %.3f GB/s, %.1f%%)\n",
                  sum_busbw / big_rows, sum_raw_busbw / big_rows,
                  sum_raw_busbw > 0 ? 100.0 * sum_busbw / sum_raw_busbw : 0.0);
    std::fflush(stdout);
  }
  return total_wrong == 0 ? 0 : 1;
}

int run_bench(int argc, char** argv) {
  const std::string what = argc >= 2 ? argv[1] : "";
  if (what == "train") return bench_train(argc - 1, argv + 1);
  if (what == "comm") return bench_comm(argc - 1, argv + 1);
  if (what == "attention") return bench_attention(argc - 1, argv + 1);
  if (what == "gemm") return bench_gemm(argc - 1, argv + 1);
  if (what == "-h" || what == "--help" || what.empty()) {
    std::cout
        << "usage: multihead bench <what> [options]   (multihead bench <what> --help)\n"
           "  train   training tokens/s of a config's model on random full-length batches\n"
           "  comm    collective bandwidth of the Communicator beside raw MPI (under mpirun)\n"
           "  attention  TFLOP/s of the GPU attention implementations (custom, cudnn, naive)\n"
           "  gemm    cuBLASLt GEMM TFLOP/s on a Transformer's shapes beside cuBLAS (GPU)\n"
           "e.g. multihead bench train --config configs/bench-small.yaml --threads 1\n"
           "     mpirun -np 2 multihead bench comm --op all_reduce --min 4K --max 256M\n"
           "     multihead bench attention --head-dim 64 --seq 1024,2048,4096\n"
           "     multihead bench gemm --tokens 25000 --dtype bf16,fp32\n";
    return what.empty() ? 2 : 0;
  }
  user_error("bench: unknown benchmark '", what, "' (expected: train, comm, attention, gemm)");
}

}  // namespace

const Command cmd_bench = {"bench",
                           "Performance measurements (bench train: training tokens/s; bench comm: "
                           "collective bandwidth; bench gemm: GEMM TFLOP/s).",
                           run_bench, "multihead bench train --config configs/bench-small.yaml"};

}  // namespace mh::cli
