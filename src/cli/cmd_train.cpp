// `multihead train`: train the model a config describes (the embedded toy config by default).
#include "cli/common_options.h"
#include "train/train_run.h"

namespace mh::cli {
namespace {

int run_train(int argc, char** argv) {
  ConfigOptions config_opts;
  po::options_description desc;
  add_config_options(desc, &config_opts);
  if (!parse_command_line(cmd_train, argc, argv, desc)) return 0;
  run_training(resolve_config(config_opts));
  return 0;
}

}  // namespace

const Command cmd_train = {
    "train",
    "Train the Transformer: progress line, metrics.jsonl and config.yaml in train.out_dir, "
    "weights to train.save.",
    run_train, "multihead train --config configs/toy.yaml --set train.steps=500"};

}  // namespace mh::cli
