// The synthetic tasks (reverse, numbers): vocabulary, counter-based generation, held-out split.
#include "data/toy.h"

#include <algorithm>
#include <set>
#include <sstream>

#include "core/philox.h"

namespace mh {

namespace {

constexpr int32_t kFirstSymbol = 4;      // ids 0..3 are <pad> <s> </s> <unk>
constexpr uint32_t kHeldOutSlices = 16;  // 1 in 16 source sequences is held out
constexpr int64_t kMaxDigits = 9;        // numbers: below one billion
constexpr uint32_t kTrainStream = 0, kValidStream = 1;

const char* const kOnes[20] = {"zero",    "one",     "two",       "three",    "four",
                               "five",    "six",     "seven",     "eight",    "nine",
                               "ten",     "eleven",  "twelve",    "thirteen", "fourteen",
                               "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
const char* const kTens[10] = {"",      "",      "twenty",  "thirty", "forty",
                               "fifty", "sixty", "seventy", "eighty", "ninety"};

std::vector<std::string> number_word_list(int64_t n) {
  MH_CHECK(n >= 0 && n < 1'000'000'000, "number_to_words(", n, ")");
  if (n == 0) return {"zero"};
  std::vector<std::string> out;
  auto group = [&](int64_t g) {  // 1..999
    if (g >= 100) {
      out.push_back(kOnes[g / 100]);
      out.push_back("hundred");
    }
    int64_t r = g % 100;
    if (r >= 20) {
      out.push_back(kTens[r / 10]);
      if (r % 10) out.push_back(kOnes[r % 10]);
    } else if (r > 0) {
      out.push_back(kOnes[r]);
    }
  };
  const int64_t millions = n / 1'000'000, thousands = n / 1000 % 1000, rest = n % 1000;
  if (millions) group(millions), out.push_back("million");
  if (thousands) group(thousands), out.push_back("thousand");
  if (rest) group(rest);
  return out;
}

// Random draws for one (seed, index, stream, attempt): a counter-based stream of 32-bit words.
class Draws {
 public:
  Draws(uint64_t seed, uint64_t index, uint32_t stream, uint32_t attempt)
      : seed_(seed), index_(index), stream_(stream), attempt_(attempt) {}

  uint32_t next32() {
    if (lane_ == 4) {
      bits_ = philox4x32(static_cast<uint32_t>(index_), static_cast<uint32_t>(index_ >> 32),
                         attempt_, (stream_ << 24) | block_++, static_cast<uint32_t>(seed_),
                         static_cast<uint32_t>(seed_ >> 32));
      lane_ = 0;
    }
    return bits_.v[lane_++];
  }
  // Uniform in [0, n), n >= 1 (64 random bits, multiply-shift: bias below 2^-32 for n < 2^32).
  uint64_t below(uint64_t n) {
    uint64_t x = (uint64_t{next32()} << 32) | next32();
    return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
  }

 private:
  uint64_t seed_, index_;
  uint32_t stream_, attempt_, block_ = 0;
  Philox4 bits_{};
  int lane_ = 4;
};

uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::string number_to_words(int64_t n) {
  std::string s;
  for (const std::string& w : number_word_list(n)) {
    if (!s.empty()) s += ' ';
    s += w;
  }
  return s;
}

// ---- ToyVocab ----------------------------------------------------------------------------------

std::string ToyVocab::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id == kPad || id == kBos) continue;
    if (id == kEos) break;
    std::string w =
        id >= 0 && id < static_cast<int32_t>(words.size()) ? words[id] : str("<", id, ">");
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

std::vector<int32_t> ToyVocab::encode(const std::string& text) const {
  auto find = [&](const std::string& w) -> int32_t {
    for (size_t i = kFirstSymbol; i < words.size(); ++i)
      if (words[i] == w) return static_cast<int32_t>(i);
    return -1;
  };
  std::vector<int32_t> ids;
  std::istringstream in(text);
  std::string w;
  while (in >> w) {
    int32_t id = find(w);
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    std::vector<int32_t> chars;
    for (char c : w) {
      int32_t cid = find(std::string(1, c));
      if (cid < 0) break;
      chars.push_back(cid);
    }
    if (chars.size() == w.size())
      ids.insert(ids.end(), chars.begin(), chars.end());
    else
      ids.push_back(kUnk);
  }
  return ids;
}

// ---- ToyTask -----------------------------------------------------------------------------------

ToyTask::ToyTask(const ModelConfig& m, const DataConfig& d)
    : name_(d.task), seed_(d.seed), symbols_(d.toy_symbols) {
  if (d.task == "reverse")
    kind_ = Kind::reverse;
  else if (d.task == "numbers")
    kind_ = Kind::numbers;
  else
    user_error("data.task: '", d.task, "' is not a synthetic task (expected reverse or numbers)");

  const char* layout = "the toy tasks' vocabulary is fixed: 0 <pad>, 1 <s>, 2 </s>, 3 <unk>";
  if (m.pad_id != ToyVocab::kPad) user_error("model.pad_id (", m.pad_id, ") must be 0: ", layout);
  if (d.bos_id != ToyVocab::kBos) user_error("data.bos_id (", d.bos_id, ") must be 1: ", layout);
  if (d.eos_id != ToyVocab::kEos) user_error("data.eos_id (", d.eos_id, ") must be 2: ", layout);
  if (d.toy_min_len < 1) user_error("data.toy_min_len (", d.toy_min_len, ") must be >= 1");
  if (d.toy_max_len < d.toy_min_len)
    user_error("data.toy_max_len (", d.toy_max_len, ") must be >= data.toy_min_len (",
               d.toy_min_len, ")");
  if (d.toy_valid_size < 0) user_error("data.toy_valid_size (", d.toy_valid_size, ") must be >= 0");

  vocab_.words = {"<pad>", "<s>", "</s>", "<unk>"};
  if (kind_ == Kind::reverse) {
    if (d.toy_symbols < 1 || d.toy_symbols > 1'000'000)
      user_error("data.toy_symbols (", d.toy_symbols, ") must be in [1, 1000000]");
    for (int64_t i = 0; i < d.toy_symbols; ++i)
      vocab_.words.push_back(i < 26 ? std::string(1, static_cast<char>('a' + i)) : str("s", i));
    min_len_ = d.toy_min_len;
    max_len_ = d.toy_max_len;
    max_src_len_ = max_len_ + 1;
    max_tgt_len_ = max_len_ + 2;
  } else {
    for (int i = 0; i < 10; ++i) vocab_.words.push_back(std::to_string(i));
    for (const char* w : kOnes) vocab_.words.push_back(w);
    for (int i = 2; i < 10; ++i) vocab_.words.push_back(kTens[i]);
    for (const char* w : {"hundred", "thousand", "million"}) vocab_.words.push_back(w);
    min_len_ = std::min(d.toy_min_len, kMaxDigits);
    max_len_ = std::min(d.toy_max_len, kMaxDigits);
    int64_t largest = 1;
    for (int64_t i = 0; i < max_len_; ++i) largest *= 10;
    max_src_len_ = max_len_ + 1;
    // 10^D - 1 (all nines) has the most words among numbers of at most D digits.
    max_tgt_len_ = static_cast<int64_t>(number_word_list(largest - 1).size()) + 2;
  }

  if (m.vocab_size < vocab_size_needed())
    user_error("model.vocab_size (", m.vocab_size, ") is smaller than the ", name_,
               " task's vocabulary (", vocab_size_needed(), " = 4 specials + ",
               vocab_size_needed() - 4, " symbols)");
  if (m.max_len < std::max(max_src_len_, max_tgt_len_))
    user_error("model.max_len (", m.max_len, ") is shorter than the longest ", name_, " sequence (",
               std::max(max_src_len_, max_tgt_len_), " tokens with BOS/EOS for data.toy_max_len ",
               d.toy_max_len, ")");

  // The held-out set: distinct held-out sources, drawn in order from the validation stream.
  std::set<std::vector<int32_t>> seen;
  const uint64_t max_draws = 100 * kHeldOutSlices * static_cast<uint64_t>(d.toy_valid_size) + 10000;
  for (uint64_t j = 0; static_cast<int64_t>(valid_.size()) < d.toy_valid_size; ++j) {
    if (j == max_draws)
      user_error("data.toy_valid_size (", d.toy_valid_size, ") is more than the ", name_,
                 " task can hold out: ", valid_.size(), " distinct held-out sequences in ", j,
                 " draws; lower data.toy_valid_size or enlarge the task (data.toy_max_len",
                 kind_ == Kind::reverse ? ", data.toy_symbols)" : ")");
    std::vector<int32_t> s = draw_source(seed_, j, kValidStream, 0);
    if (held_out(s) && seen.insert(s).second) valid_.push_back(make_example(s));
  }
}

std::vector<int32_t> ToyTask::draw_source(uint64_t seed, uint64_t index, uint32_t stream,
                                          uint32_t attempt) const {
  Draws r(seed, index, stream, attempt);
  const int64_t len = min_len_ + static_cast<int64_t>(r.below(max_len_ - min_len_ + 1));
  std::vector<int32_t> s;
  s.reserve(len);
  if (kind_ == Kind::reverse) {
    for (int64_t i = 0; i < len; ++i)
      s.push_back(kFirstSymbol + static_cast<int32_t>(r.below(symbols_)));
  } else {
    // A len-digit number: leading digit 1..9 (0..9 for one digit), the rest 0..9.
    for (int64_t i = 0; i < len; ++i) {
      int32_t digit = i == 0 && len > 1 ? 1 + static_cast<int32_t>(r.below(9))
                                        : static_cast<int32_t>(r.below(10));
      s.push_back(kFirstSymbol + digit);
    }
  }
  return s;
}

bool ToyTask::held_out(const std::vector<int32_t>& src) const {
  uint64_t h = kind_ == Kind::reverse ? 0x7265766572736531ull : 0x6E756D6265727331ull;
  for (int32_t id : src) h = mix64(h ^ static_cast<uint32_t>(id));
  h = mix64(h ^ src.size());
  return (h >> 32) % kHeldOutSlices == 0;
}

Example ToyTask::example(uint64_t index) const {
  for (uint32_t attempt = 0; attempt < 1000; ++attempt) {
    std::vector<int32_t> s = draw_source(seed_, index, kTrainStream, attempt);
    if (!held_out(s)) return make_example(s);
  }
  user_error("the ", name_, " task is too small: every draw for training example ", index,
             " is held out; enlarge it (data.toy_max_len, data.toy_symbols)");
}

Example ToyTask::make_example(const std::vector<int32_t>& s) const {
  Example e;
  e.src = s;
  e.src.push_back(ToyVocab::kEos);
  e.tgt.push_back(ToyVocab::kBos);
  if (kind_ == Kind::reverse) {
    for (int32_t id : s)
      if (id < kFirstSymbol || id >= kFirstSymbol + symbols_)
        user_error("reverse: token id ", id, " is not one of the task's symbols");
    e.tgt.insert(e.tgt.end(), s.rbegin(), s.rend());
  } else {
    if (s.empty() || static_cast<int64_t>(s.size()) > kMaxDigits)
      user_error("numbers: expected 1 to ", kMaxDigits, " digits, got ", s.size(), " tokens");
    int64_t n = 0;
    for (int32_t id : s) {
      if (id < kFirstSymbol || id >= kFirstSymbol + 10)
        user_error("numbers: token '",
                   id >= 0 && id < vocab_size_needed() ? vocab_.words[id] : std::to_string(id),
                   "' is not a digit");
      n = n * 10 + (id - kFirstSymbol);
    }
    for (const std::string& w : number_word_list(n)) {
      auto it = std::find(vocab_.words.begin() + kFirstSymbol + 10, vocab_.words.end(), w);
      MH_CHECK(it != vocab_.words.end(), "numbers vocabulary lacks ", w);
      e.tgt.push_back(static_cast<int32_t>(it - vocab_.words.begin()));
    }
  }
  e.tgt.push_back(ToyVocab::kEos);
  return e;
}

}  // namespace mh
