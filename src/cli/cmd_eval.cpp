// `multihead eval`: loss of saved weights on a pre-tokenized parallel file, as one JSON line.
#include <iostream>

#include "cli/common_options.h"
#include "core/json.h"
#include "data/batcher.h"
#include "data/pairs.h"
#include "dist/world.h"
#include "train/checkpoint.h"
#include "train/runtime.h"
#include "train/trainer.h"

namespace mh::cli {
namespace {

int run_eval(int argc, char** argv) {
  ConfigOptions config_opts;
  std::string weights, pairs;
  po::options_description desc;
  add_config_options(desc, &config_opts);
  desc.add_options()  //
      ("weights", po::value<std::string>(&weights)->required()->value_name("FILE"),
       "model weights (.safetensors, as written by train.save)")  //
      ("pairs", po::value<std::string>(&pairs)->required()->value_name("FILE"),
       "pre-tokenized pairs: one per line, source ids TAB target ids (space-separated)");
  if (!parse_command_line(cmd_eval, argc, argv, desc)) return 0;
  Config cfg = resolve_config(config_opts);
  cfg.train.init_from = weights;
  const std::vector<Example> examples = read_pairs(pairs, cfg.model, cfg.data);
  Runtime rt = make_runtime(cfg, World::init());
  Trainer trainer(cfg, *rt.backend);
  trainer.init();
  EvalResult r = trainer.evaluate(
      batches_of(examples, cfg.data.batch_size, static_cast<int32_t>(cfg.model.pad_id)));
  std::cout << "{\"tokens\": " << r.tokens << ", \"nll\": " << json_number(r.nll, "%.8g")
            << ", \"loss\": " << json_number(r.loss, "%.8g") << "}\n";
  return 0;
}

}  // namespace

const Command cmd_eval = {
    "eval",
    "Mean NLL and label-smoothed loss per target token of saved weights on a pairs file "
    "(dropout off), as one JSON line.",
    run_eval,
    "multihead eval --config configs/toy.yaml --weights runs/toy/model.safetensors --pairs "
    "valid.pairs"};

}  // namespace mh::cli
