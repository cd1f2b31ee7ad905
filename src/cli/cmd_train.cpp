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
    run_train, "multihead train --config configs/toy.yaml --set train.steps=500",
    "Without --config it trains the embedded toy task (reverse a sequence of letters) and then\n"
    "prints held-out examples with their exact-match accuracy.\n\n"
    "Keys you will most often set (all keys: multihead config --help-keys):\n"
    "  model.d_model, model.heads, model.d_ff, model.encoder_layers, model.decoder_layers\n"
    "  model.dropout, model.norm (post|pre), model.share_embeddings\n"
    "  data.task (reverse|numbers|pairs), data.train_pairs, data.valid_pairs, data.batch_size\n"
    "  train.steps, train.tokens_per_step (gradient accumulation), train.lr_scale, train.warmup\n"
    "  train.label_smoothing, train.clip_norm, train.save, train.init_from, train.out_dir\n\n"
    "Outputs in train.out_dir: config.yaml (the effective config, loadable with --config) and\n"
    "metrics.jsonl (one JSON object per step: loss, nll, lr, grad_norm, tokens, elapsed_s; plus\n"
    "validation lines). train.save writes the weights as safetensors.\n"};

}  // namespace mh::cli
