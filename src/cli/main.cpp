// multihead: dispatch to a subcommand (cli/command.h), and turn errors into one line + exit code:
//   2  bad input (UserError, bad command-line options)
//   1  a bug (InternalError) or an unexpected failure
#include <unistd.h>

#include <boost/program_options/errors.hpp>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

#include "backend/cpu/blas_kernels.h"
#include "cli/command.h"
#include "config/config.h"
#include "core/error.h"
#include "dist/world.h"

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

// Ends the process with `code` after an error. In a distributed job the other ranks may be
// waiting for this one in a collective, so the whole job is ended (MPI_Abort), never left hanging.
// The line goes out in one write(2), so lines of ranks failing together do not interleave.
static int fail(const char* kind, const std::string& what, int code) {
  std::string line = std::string("multihead: ") + kind + ": ";
  if (mh::World::is_distributed()) line += "rank " + std::to_string(mh::World::get().rank()) + ": ";
  line += one_line(what) + "\n";
  std::cout.flush();
  if (::write(2, line.data(), line.size()) < 0) std::cerr << line;
  if (mh::World::is_distributed()) mh::World::abort(code);
  mh::World::finalize();
  return code;
}

int main(int argc, char** argv) {
  mh::blas_select_kernels(argv);  // may re-exec once with OPENBLAS_CORETYPE set
  try {
    const int code = dispatch(argc, argv);
    mh::World::finalize();
    return code;
  } catch (const mh::UserError& e) {
    return fail("error", e.what(), 2);
  } catch (const mh::InternalError& e) {
    return fail("internal error", e.what(), 1);
  } catch (const std::exception& e) {
    return fail("internal error", e.what(), 1);
  }
}
