// multihead: dispatch to a subcommand (cli/command.h), and turn errors into one line + exit code:
//   2  bad input (UserError, bad command-line options)
//   1  a bug (InternalError) or an unexpected failure
#include <boost/program_options/errors.hpp>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

#include "backend/cpu/blas_kernels.h"
#include "cli/command.h"
#include "config/config.h"
#include "core/error.h"

namespace {

// Messages are one line by contract; keep it so even if one slipped a newline in.
std::string one_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

int dispatch(int argc, char** argv) {
  if (argc < 2) {
    mh::cli::print_main_help(std::cerr);
    mh::user_error("missing command");
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    mh::cli::print_main_help(std::cout);
    return 0;
  }
  const mh::cli::Command* cmd = mh::cli::find_command(name);
  if (!cmd) {
    std::vector<std::string> names;
    for (const auto& c : mh::cli::commands()) names.emplace_back(c.name);
    const std::string hint = mh::closest_match(name, names);
    mh::user_error("unknown command '", name, "'",
                   hint.empty() ? "" : " (did you mean '" + hint + "'?)",
                   "; 'multihead --help' lists the commands");
  }
  try {
    return cmd->run(argc - 1, argv + 1);
  } catch (const boost::program_options::error& e) {
    throw mh::UserError(mh::str(e.what(), " (see 'multihead ", name, " --help')"));
  }
}

}  // namespace

int main(int argc, char** argv) {
  mh::blas_select_kernels(argv);  // may re-exec once with OPENBLAS_CORETYPE set
  try {
    return dispatch(argc, argv);
  } catch (const mh::UserError& e) {
    std::cerr << "multihead: error: " << one_line(e.what()) << std::endl;
    return 2;
  } catch (const mh::InternalError& e) {
    std::cerr << "multihead: internal error: " << one_line(e.what()) << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "multihead: internal error: " << one_line(e.what()) << std::endl;
    return 1;
  }
}
