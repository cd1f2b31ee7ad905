// Errors. Two kinds, because users and developers need different things from them:
//   UserError   - bad input (config, file, id). main() prints its one line and exits 2.
//   MH_CHECK    - a broken internal invariant (a bug). Names the file:line and aborts the command.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mh {

// Concatenates anything streamable: str("key ", k, " = ", v).
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Bad input from the user: one line, exit code 2.
struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void user_error(const Args&... args) {
  throw UserError(str(args...));
}

// A broken invariant inside multihead.
struct InternalError : std::logic_error {
  using std::logic_error::logic_error;
};

}  // namespace mh

#define MH_CHECK(cond, ...)                                                                 \
  do {                                                                                      \
    if (!(cond))                                                                            \
      throw ::mh::InternalError(                                                            \
          ::mh::str(__FILE__, ":", __LINE__, ": check failed: " #cond " ", ##__VA_ARGS__)); \
  } while (0)
