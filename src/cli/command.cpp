#include "cli/command.h"

#include <ostream>

namespace mh::cli {

const std::vector<Command>& commands() {
#define MH_CLI_LIST_COMMAND(name) cmd_##name,
  static const std::vector<Command> all = {MH_CLI_COMMANDS(MH_CLI_LIST_COMMAND)};
#undef MH_CLI_LIST_COMMAND
  return all;
}

const Command* find_command(std::string_view name) {
  for (const Command& c : commands())
    if (name == c.name) return &c;
  return nullptr;
}

void print_main_help(std::ostream& os) {
  os << "multihead: trains the Transformer of \"Attention Is All You Need\".\n\n"
        "usage: multihead <command> [options]\n"
        "       multihead <command> --help   (the options of one command)\n\n"
        "commands:\n";
  size_t width = 0;
  for (const Command& c : commands()) width = std::max(width, std::string_view(c.name).size());
  for (const Command& c : commands()) {
    std::string_view name = c.name;
    os << "  " << name << std::string(width - name.size() + 3, ' ') << c.summary << "\n";
    if (c.example) os << "  " << std::string(width + 3, ' ') << "e.g. " << c.example << "\n";
  }
  os << "\nconfigs: --config FILE.yaml (default: the embedded toy config) and --set "
        "section.key=value\n"
        "(repeatable; default < file < --set). `multihead config --help-keys` lists every key.\n";
}

}  // namespace mh::cli
