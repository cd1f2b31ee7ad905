// `multihead config`: the effective config (file + --set, defaults filled in) as YAML that
// --config accepts, or with --help-keys the reference of every key.
#include <iostream>

#include "cli/common_options.h"

namespace mh::cli {
namespace {

int run_config(int argc, char** argv) {
  ConfigOptions config_opts;
  bool help_keys = false;
  po::options_description desc;
  add_config_options(desc, &config_opts);
  desc.add_options()("help-keys", po::bool_switch(&help_keys),
                     "list every config key: type, default and meaning");
  if (!parse_command_line(cmd_config, argc, argv, desc)) return 0;
  if (help_keys) {
    std::cout << config_help();
    return 0;
  }
  std::cout << config_to_yaml(resolve_config(config_opts));
  return 0;
}

}  // namespace

const Command cmd_config = {
    "config", "Print the effective config as YAML (loadable with --config), or every key's help.",
    run_config, "multihead config --config configs/paper-base.yaml --set train.steps=10"};

}  // namespace mh::cli
