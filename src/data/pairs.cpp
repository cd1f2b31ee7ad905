// read_pairs: the pre-tokenized parallel-corpus reader (format and conventions in pairs.h).
#include "data/pairs.h"

#include <sys/stat.h>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace mh {

namespace {

std::string read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) user_error(path, ": cannot read file (", std::strerror(errno), ")");
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    std::fclose(f);
    user_error(path, ": cannot read file (Is a directory)");
  }
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  bool failed = std::ferror(f);
  int err = errno;
  std::fclose(f);
  if (failed) user_error(path, ": cannot read file (", std::strerror(err), ")");
  return text;
}

// Parses one side ("17 402 9") into ids, checking each against the vocabulary.
std::vector<int32_t> parse_side(std::string_view s, const char* side, const std::string& path,
                                int64_t line, const ModelConfig& m) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == ' ') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    std::string_view tok = s.substr(i, j - i);
    int64_t id = 0;
    auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), id);
    if (ec == std::errc::result_out_of_range && end == tok.data() + tok.size())
      user_error(path, ":", line, ": token id ", tok, " >= model.vocab_size (", m.vocab_size, ")");
    if (ec != std::errc() || end != tok.data() + tok.size())
      user_error(path, ":", line, ": expected an integer token id in the ", side, ", got '", tok,
                 "'");
    if (id < 0) user_error(path, ":", line, ": token id ", id, " is negative");
    if (id >= m.vocab_size)
      user_error(path, ":", line, ": token id ", id, " >= model.vocab_size (", m.vocab_size, ")");
    if (id == m.pad_id)
      user_error(path, ":", line, ": token id ", id, " in the ", side,
                 " is model.pad_id; padding cannot appear inside a sentence");
    ids.push_back(static_cast<int32_t>(id));
    i = j;
  }
  if (ids.empty())
    user_error(path, ":", line, ": empty ", side, " (expected at least one token id)");
  return ids;
}

}  // namespace

std::vector<Example> read_pairs(const std::string& path, const ModelConfig& m,
                                const DataConfig& d) {
  for (auto [name, id] : {std::pair{"data.bos_id", d.bos_id}, std::pair{"data.eos_id", d.eos_id}})
    if (id < 0 || id >= m.vocab_size || id == m.pad_id)
      user_error(name, " (", id, ") must be in [0, model.vocab_size = ", m.vocab_size,
                 ") and differ from model.pad_id (", m.pad_id, ")");
  const int32_t bos = static_cast<int32_t>(d.bos_id), eos = static_cast<int32_t>(d.eos_id);

  const std::string text = read_file(path);
  std::vector<Example> out;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    ++line;
    size_t nl = text.find('\n', pos);
    std::string_view l(text.data() + pos, (nl == std::string::npos ? text.size() : nl) - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty())
      user_error(path, ":", line, ": expected 'source ids<TAB>target ids', got an empty line");
    size_t tab = l.find('\t');
    if (tab == std::string_view::npos)
      user_error(path, ":", line, ": expected 'source ids<TAB>target ids', got no tab");
    if (l.find('\t', tab + 1) != std::string_view::npos)
      user_error(path, ":", line, ": expected 'source ids<TAB>target ids', got more than one tab");

    Example e;
    e.src = parse_side(l.substr(0, tab), "source", path, line, m);
    e.tgt = parse_side(l.substr(tab + 1), "target", path, line, m);
    if (e.src.back() != eos) e.src.push_back(eos);
    if (e.tgt.front() != bos) e.tgt.insert(e.tgt.begin(), bos);
    if (e.tgt.back() != eos || e.tgt.size() == 1) e.tgt.push_back(eos);
    for (auto [side, n] : {std::pair{"source", e.src.size()}, std::pair{"target", e.tgt.size()}})
      if (static_cast<int64_t>(n) > m.max_len)
        user_error(path, ":", line, ": ", side, " has ", n,
                   " tokens with BOS/EOS, more than model.max_len (", m.max_len, ")");
    out.push_back(std::move(e));
  }
  if (out.empty()) user_error(path, ": no sentence pairs (empty file)");
  return out;
}

}  // namespace mh
