// safetensors reader and writer. The header JSON is parsed by a small strict parser for the subset
// the format uses (objects, arrays, strings, integers); everything a file claims is checked before
// a byte of tensor data is read, so a malformed or hostile file costs no more than its header.
#include "io/safetensors.h"

#include <sys/stat.h>
#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

namespace mh {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swapping");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr int kMaxJsonDepth = 64;

// ---- JSON subset -------------------------------------------------------------------------------

struct Json {
  enum class Kind { object, array, string, integer } kind = Kind::integer;
  std::vector<std::string> keys;  // object: keys in file order, values[i] belongs to keys[i]
  std::vector<Json> values;       // object values or array elements
  std::string text;               // string
  int64_t integer = 0;            // integer
};

const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::object:
      return "an object";
    case Json::Kind::array:
      return "an array";
    case Json::Kind::string:
      return "a string";
    case Json::Kind::integer:
      return "an integer";
  }
  return "?";
}

class JsonParser {
 public:
  JsonParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the header object");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    if (pos_ >= s_.size())
      user_error(path_, ": malformed safetensors header JSON: unexpected end (", what, ")");
    user_error(path_, ": malformed safetensors header JSON: ", what, " at byte ", pos_);
  }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  void expect(char c) {
    if (pos_ >= s_.size() || s_[pos_] != c) fail(str("expected '", c, "'"));
    ++pos_;
  }

  Json parse_value(int depth) {
    if (depth > kMaxJsonDepth) fail("nesting too deep");
    if (pos_ >= s_.size()) fail("expected a value");
    char c = s_[pos_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') {
      Json v;
      v.kind = Json::Kind::string;
      v.text = parse_string();
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_integer();
    fail(str("unsupported value starting with '", c,
             "' (expected object, array, string or integer)"));
  }

  Json parse_object(int depth) {
    Json v;
    v.kind = Json::Kind::object;
    expect('{');
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    std::set<std::string> seen;
    while (true) {
      skip_ws();
      if (peek() != '"') fail("expected a string key");
      std::string key = parse_string();
      if (!seen.insert(key).second) fail(str("duplicate key \"", key, "\""));
      skip_ws();
      expect(':');
      skip_ws();
      v.keys.push_back(std::move(key));
      v.values.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      return v;
    }
  }

  Json parse_array(int depth) {
    Json v;
    v.kind = Json::Kind::array;
    expect('[');
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    while (true) {
      skip_ws();
      v.values.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect(']');
      return v;
    }
  }

  Json parse_integer() {
    size_t start = pos_;
    bool neg = false;
    if (peek() == '-') {
      neg = true;
      ++pos_;
    }
    if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit");
    if (peek() == '0' && pos_ + 1 < s_.size() && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9')
      fail("leading zero in a number");
    uint64_t mag = 0;
    const uint64_t limit = neg ? uint64_t{1} << 63 : uint64_t{std::numeric_limits<int64_t>::max()};
    while (peek() >= '0' && peek() <= '9') {
      uint64_t d = static_cast<uint64_t>(peek() - '0');
      if (mag > (limit - d) / 10) {
        pos_ = start;
        fail("integer out of range");
      }
      mag = mag * 10 + d;
      ++pos_;
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') fail("numbers must be integers");
    Json v;
    v.kind = Json::Kind::integer;
    v.integer = neg ? static_cast<int64_t>(0 - mag) : static_cast<int64_t>(mag);
    return v;
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9')
        cp |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        cp |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        cp |= static_cast<unsigned>(c - 'A' + 10);
      else
        fail("bad hex digit in \\u escape");
    }
    return cp;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[pos_++]);
      if (c == '"') return out;
      if (c < 0x20) {
        --pos_;
        fail("control character in a string");
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned cp = parse_hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
              fail("unpaired surrogate in \\u escape");
            pos_ += 2;
            unsigned lo = parse_hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate in \\u escape");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --pos_;
          fail(str("unknown escape '\\", e, "'"));
      }
    }
  }

  const std::string& path_;
  const std::string& s_;
  size_t pos_ = 0;
};

// JSON string literal for a header key or value (escapes what JSON requires, keeps UTF-8 as is).
std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

bool dtype_from_name(const std::string& s, DType* out) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::u8}) {
    if (s == dtype_name(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

// An open FILE* closed on scope exit.
struct File {
  std::FILE* f = nullptr;
  ~File() {
    if (f) std::fclose(f);
  }
};

std::string errno_text() {
  return std::strerror(errno);
}

}  // namespace

// ---- writing -----------------------------------------------------------------------------------

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Header: {"__metadata__":{...},"name":{"dtype":"F32","shape":[..],"data_offsets":[b,e]},...}
  // compact, as the reference (serde_json) writes it; tensors in the caller's order.
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool mfirst = true;
    for (const auto& [k, v] : metadata) {
      if (!mfirst) header += ',';
      header += json_quote(k);
      header += ':';
      header += json_quote(v);
      mfirst = false;
    }
    header += "}";
    first = false;
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    MH_CHECK(name != "__metadata__", "tensor name __metadata__ is reserved");
    MH_CHECK(names.insert(name).second, "duplicate tensor name ", name);
    MH_CHECK(t.defined(), "tensor ", name, " is undefined");
    MH_CHECK(t.device() == Device::cpu, "tensor ", name, " is not a host tensor");
    uint64_t end = offset + t.nbytes();
    if (!first) header += ',';
    header += json_quote(name);
    header += str(":{\"dtype\":\"", dtype_name(t.dtype()), "\",\"shape\":[");
    for (int i = 0; i < t.ndim(); ++i) {
      if (i) header += ',';
      header += std::to_string(t.shape()[i]);
    }
    header += str("],\"data_offsets\":[", offset, ",", end, "]}");
    offset = end;
    first = false;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // data section starts 8-byte aligned

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) user_error(path, ": cannot write file (", errno_text(), ")");
  auto fail = [&](const char* what) {
    std::string why = errno ? errno_text() : "unknown error";
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    user_error(path, ": cannot write file (", what, ": ", why, ")");
  };
  auto write = [&](const void* p, size_t n) {
    errno = 0;
    if (n && std::fwrite(p, 1, n, f) != n) fail("write");
  };
  uint64_t n = header.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  write(len, 8);
  write(header.data(), header.size());
  for (const auto& [name, t] : tensors) write(t.raw(), t.nbytes());
  errno = 0;
  int rc = std::fclose(f);
  f = nullptr;
  if (rc != 0) fail("close");
  errno = 0;
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("rename");
}

// ---- reading -----------------------------------------------------------------------------------

SafetensorsFile load_safetensors(const std::string& path) {
  File file;
  file.f = std::fopen(path.c_str(), "rb");
  if (!file.f) user_error(path, ": cannot read file (", errno_text(), ")");
  struct stat st;
  if (fstat(fileno(file.f), &st) != 0) user_error(path, ": cannot read file (", errno_text(), ")");
  if (S_ISDIR(st.st_mode)) user_error(path, ": cannot read file (Is a directory)");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    user_error(path, ": not a safetensors file (", file_size,
               " bytes; expected at least the 8-byte header length)");

  unsigned char len[8];
  if (std::fread(len, 1, 8, file.f) != 8) user_error(path, ": cannot read file (short read)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{len[i]} << (8 * i);
  if (n > kMaxHeaderBytes)
    user_error(path, ": not a safetensors file (header length ", n, " exceeds the ",
               kMaxHeaderBytes, "-byte limit)");
  if (n > file_size - 8)
    user_error(path, ": truncated safetensors file (header length ", n, " but only ", file_size - 8,
               " bytes follow)");
  if (n == 0) user_error(path, ": not a safetensors file (empty header)");
  std::string header(n, '\0');
  if (std::fread(header.data(), 1, n, file.f) != n)
    user_error(path, ": cannot read file (short read)");
  const uint64_t data_size = file_size - 8 - n;

  Json root = JsonParser(path, header).parse_document();
  if (root.kind != Json::Kind::object)
    user_error(path, ": malformed safetensors header: expected a JSON object, got ",
               kind_name(root.kind));

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  SafetensorsFile out;
  for (size_t i = 0; i < root.keys.size(); ++i) {
    const std::string& name = root.keys[i];
    const Json& v = root.values[i];
    if (name == "__metadata__") {
      if (v.kind != Json::Kind::object)
        user_error(path, ": __metadata__ must be an object of strings, got ", kind_name(v.kind));
      for (size_t j = 0; j < v.keys.size(); ++j) {
        if (v.values[j].kind != Json::Kind::string)
          user_error(path, ": __metadata__ \"", v.keys[j], "\" must be a string, got ",
                     kind_name(v.values[j].kind));
        out.metadata[v.keys[j]] = v.values[j].text;
      }
      continue;
    }
    auto bad = [&](const auto&... what) { user_error(path, ": tensor '", name, "': ", what...); };
    if (v.kind != Json::Kind::object)
      bad("expected an object {dtype, shape, data_offsets}, got ", kind_name(v.kind));
    const Json *dt = nullptr, *sh = nullptr, *off = nullptr;
    for (size_t j = 0; j < v.keys.size(); ++j) {
      if (v.keys[j] == "dtype")
        dt = &v.values[j];
      else if (v.keys[j] == "shape")
        sh = &v.values[j];
      else if (v.keys[j] == "data_offsets")
        off = &v.values[j];
      else
        bad("unknown key \"", v.keys[j], "\" (expected dtype, shape, data_offsets)");
    }
    if (!dt || !sh || !off) bad("missing ", !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    Entry e;
    e.name = name;
    if (dt->kind != Json::Kind::string) bad("dtype must be a string");
    if (!dtype_from_name(dt->text, &e.dtype))
      bad("unsupported dtype \"", dt->text, "\" (expected F32, F64, BF16, F16, I32 or U8)");
    if (sh->kind != Json::Kind::array) bad("shape must be an array of integers");
    uint64_t numel = 1;
    bool overflow = false;
    for (const Json& d : sh->values) {
      if (d.kind != Json::Kind::integer || d.integer < 0)
        bad("shape must be an array of non-negative integers");
      e.shape.push_back(d.integer);
      uint64_t du = static_cast<uint64_t>(d.integer);
      if (du != 0 && numel > std::numeric_limits<uint64_t>::max() / du) overflow = true;
      numel *= du;
    }
    if (off->kind != Json::Kind::array || off->values.size() != 2 ||
        off->values[0].kind != Json::Kind::integer || off->values[1].kind != Json::Kind::integer ||
        off->values[0].integer < 0 || off->values[1].integer < off->values[0].integer)
      bad("data_offsets must be [begin, end] with 0 <= begin <= end");
    e.begin = static_cast<uint64_t>(off->values[0].integer);
    e.end = static_cast<uint64_t>(off->values[1].integer);
    const uint64_t esize = dtype_size(e.dtype);
    if (overflow || numel > std::numeric_limits<uint64_t>::max() / esize ||
        numel * esize != e.end - e.begin)
      bad("shape ", shape_str(e.shape), " of ", dt->text, " needs ",
          overflow ? std::string("too many") : std::to_string(numel * esize),
          " bytes but data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin);
    if (e.end > data_size)
      bad("data_offsets [", e.begin, ", ", e.end, "] run past the data section (", data_size,
          " bytes)");
    entries.push_back(std::move(e));
  }

  // No two tensors may share bytes (empty tensors occupy none).
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      user_error(path, ": tensors '", by_offset[i - 1]->name, "' and '", by_offset[i]->name,
                 "' overlap in the data section");

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (t.nbytes()) {
      if (std::fseek(file.f, static_cast<long>(8 + n + e.begin), SEEK_SET) != 0 ||
          std::fread(t.raw(), 1, t.nbytes(), file.f) != t.nbytes())
        user_error(path, ": cannot read tensor '", e.name, "' (", errno_text(), ")");
    }
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace mh
