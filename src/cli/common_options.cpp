#include "cli/common_options.h"

#include <iostream>

#include "config/embedded_toy.h"
#include "core/error.h"

namespace mh::cli {

void add_config_options(po::options_description& desc, ConfigOptions* out) {
  desc.add_options()  //
      ("config", po::value<std::string>(&out->path)->value_name("PATH"),
       "YAML config file (default: the embedded toy config, configs/toy.yaml)")  //
      ("set", po::value<std::vector<std::string>>(&out->overrides)->value_name("KEY=VALUE"),
       "override one config key, e.g. --set model.d_model=256 (repeatable; applied after the "
       "file, in order)");
}

Config resolve_config(const ConfigOptions& opts) {
  if (opts.path.empty())
    return load_config_text(kEmbeddedToyYaml, "embedded:toy.yaml", opts.overrides);
  return load_config(opts.path, opts.overrides);
}

std::optional<po::variables_map> parse_command_line(const Command& cmd, int argc, char** argv,
                                                    const po::options_description& desc) {
  bool help = false;
  po::options_description all = desc;
  all.add_options()("help,h", po::bool_switch(&help), "show this help");
  std::vector<std::string> stray;
  po::options_description hidden;
  hidden.add_options()("mh-positional", po::value<std::vector<std::string>>(&stray));
  po::options_description parsed;
  parsed.add(all).add(hidden);
  po::positional_options_description positional;
  positional.add("mh-positional", -1);

  po::variables_map vm;
  const int style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
  po::store(
      po::command_line_parser(argc, argv).options(parsed).positional(positional).style(style).run(),
      vm);
  // --help before notify(): notify() enforces required options, and help needs none.
  if (vm.count("help") && vm["help"].as<bool>()) {
    print_command_help(std::cout, cmd, all);
    return std::nullopt;
  }
  po::notify(vm);
  (void)help;
  if (!stray.empty())
    user_error("unexpected argument '", stray.front(), "' (see 'multihead ", cmd.name, " --help')");
  return vm;
}

void print_command_help(std::ostream& os, const Command& cmd, const po::options_description& desc) {
  os << "usage: multihead " << cmd.name << " [options]\n" << cmd.summary << "\n\n";
  os << "options:\n" << desc;
  if (cmd.details) os << "\n" << cmd.details;
  if (cmd.example) os << "\nexample:\n  " << cmd.example << "\n";
}

}  // namespace mh::cli
