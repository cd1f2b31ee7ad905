// The subcommand registry: `multihead <command> [options]`.
//
// Adding a subcommand is one new file plus one line:
//   1. src/cli/cmd_<name>.cpp defines `const Command cmd_<name> = {"<name>", "<summary>",
//      run_<name>, "<example>"};` inside namespace mh::cli (see cmd_info.cpp), parsing its options
//      with parse_command_line() from common_options.h;
//   2. add `X(<name>)` to MH_CLI_COMMANDS below (the order is the order of `multihead --help`).
#pragma once

#include <iosfwd>
#include <string_view>
#include <vector>

namespace mh::cli {

struct Command {
  const char* name;     // as typed: `multihead <name>`
  const char* summary;  // one line for `multihead --help`
  // Runs the subcommand on the arguments after "multihead" (argv[0] is the subcommand's name) and
  // returns the exit code. Bad input throws UserError or a boost::program_options error (exit 2).
  int (*run)(int argc, char** argv);
  const char* example = nullptr;  // one typical invocation, shown by the help texts
  const char* details = nullptr;  // more to teach in `multihead <name> --help` (optional)
};

// clang-format off
#define MH_CLI_COMMANDS(X) \
  X(train)                 \
  X(eval)                  \
  X(info)                  \
  X(bench)                 \
  X(config)
// clang-format on

#define MH_CLI_DECLARE_COMMAND(name) extern const Command cmd_##name;
MH_CLI_COMMANDS(MH_CLI_DECLARE_COMMAND)
#undef MH_CLI_DECLARE_COMMAND

// Every subcommand, in help order.
const std::vector<Command>& commands();
// The subcommand called `name`, or nullptr.
const Command* find_command(std::string_view name);
// `multihead --help`: what it is, the subcommands with a summary and an example each.
void print_main_help(std::ostream& os);

}  // namespace mh::cli
