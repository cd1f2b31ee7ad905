// Just enough JSON writing for one-line outputs and metrics files.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>

namespace mh {

inline std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

// A number in printf format; NaN and infinities (not JSON) become null.
inline std::string json_number(double v, const char* format = "%.17g") {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace mh
