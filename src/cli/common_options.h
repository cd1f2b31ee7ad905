// Option parsing shared by every subcommand, so --config, --set and --help mean the same
// everywhere. Built on boost::program_options; a subcommand declares its own options in an
// options_description, adds the common ones, and calls parse_command_line().
#pragma once

#include <boost/program_options.hpp>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "cli/command.h"
#include "config/config.h"

namespace mh::cli {

namespace po = boost::program_options;

// --config and --set, for subcommands that run on a config.
struct ConfigOptions {
  std::string path;                    // --config PATH; empty: the embedded toy config
  std::vector<std::string> overrides;  // --set key=value, in command-line order (later wins)
};

// Adds --config PATH and --set KEY=VALUE (repeatable) to `desc`, storing into `*out`.
void add_config_options(po::options_description& desc, ConfigOptions* out);

// The effective config: the --config file (or the embedded toy config, named "embedded:toy.yaml")
// with the --set overrides applied, validated. Throws UserError.
Config resolve_config(const ConfigOptions& opts);

// Parses a subcommand's arguments (argv[0] is its name) against `desc` plus -h/--help. Returns
// nullopt when --help was given, after printing the usage to stdout: the caller returns 0.
// Unknown options and missing values throw po::error, stray arguments UserError (both exit 2).
std::optional<po::variables_map> parse_command_line(const Command& cmd, int argc, char** argv,
                                                    const po::options_description& desc);

// `multihead <cmd> --help`: usage, summary, options, example.
void print_command_help(std::ostream& os, const Command& cmd, const po::options_description& desc);

}  // namespace mh::cli
