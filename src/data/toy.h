// Synthetic translation tasks, generated in memory: small enough to train on a laptop CPU in
// minutes, with exact answers to check a model against.
//
//   reverse   source: L symbols (L uniform in [data.toy_min_len, data.toy_max_len]) drawn from an
//             alphabet of data.toy_symbols letters a, b, c, ...; target: the same symbols reversed.
//   numbers   source: the decimal digits of an integer, D digits with D uniform in
//             [min(toy_min_len, 9), min(toy_max_len, 9)] and the value uniform among D-digit
//             numbers (D = 1: 0..9); target: its English words, "three hundred forty two thousand
//             seventeen" (no "and", no hyphens). toy_symbols is not used.
//
// Vocabulary (fixed per task, so every config with the same task shares it): 0 <pad>, 1 <s> (BOS),
// 2 </s> (EOS), 3 <unk>, then the task's symbols: reverse: the letters; numbers: the digits 0..9,
// then the words zero ... nineteen, twenty ... ninety, hundred, thousand, million. The config must
// agree: model.pad_id 0, data.bos_id 1, data.eos_id 2, model.vocab_size >= vocab_size_needed().
//
// Determinism and the held-out split:
//   - training example i is a pure function of (data.seed, i) (counter-based Philox draws), so
//     data-parallel ranks can each generate their own disjoint share of a global batch;
//   - a source sequence is held out when a hash of (task, sequence) falls in a 1/16 slice. The
//     split is a property of the task alone, the same for every seed, so a model trained with any
//     seed has never seen any held-out sequence. Training draws redraw held-out sequences;
//     valid() holds data.toy_valid_size distinct held-out examples drawn with data.seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "data/batch.h"

namespace mh {

struct ToyVocab {
  static constexpr int32_t kPad = 0, kBos = 1, kEos = 2, kUnk = 3;
  std::vector<std::string> words;  // id -> display string

  // Space-joined words; drops <pad> and <s>, stops at the first </s>; ids outside the vocabulary
  // print as "<id>".
  std::string decode(const std::vector<int32_t>& ids) const;
  // Whitespace-separated words to ids (no BOS/EOS added). A word that is not in the vocabulary
  // but whose characters all are is split into them ("342" -> 3 4 2, "abc" -> a b c); anything
  // else becomes <unk>.
  std::vector<int32_t> encode(const std::string& text) const;
};

class ToyTask {
 public:
  // Validates the config (UserError naming the key): the task name, the special ids, the lengths,
  // model.vocab_size and model.max_len; then draws the held-out set.
  ToyTask(const ModelConfig& m, const DataConfig& d);

  const std::string& name() const { return name_; }
  const ToyVocab& vocab() const { return vocab_; }
  int64_t vocab_size_needed() const { return static_cast<int64_t>(vocab_.words.size()); }
  // Longest source (with EOS) and target (with BOS, EOS) the task produces.
  int64_t max_src_len() const { return max_src_len_; }
  int64_t max_tgt_len() const { return max_tgt_len_; }

  // Training example `index` (never a held-out one): a pure function of (data.seed, index).
  Example example(uint64_t index) const;
  // The held-out examples, data.toy_valid_size of them, distinct, in a fixed order.
  const std::vector<Example>& valid() const { return valid_; }
  // Whether a source sequence (task symbols, without EOS) belongs to the held-out set.
  bool held_out(const std::vector<int32_t>& src_symbols) const;
  // The example for a source sequence (task symbols, without EOS): src + EOS, BOS target EOS.
  // For numbers, the symbols must be digits. UserError if they are not the task's symbols.
  Example make_example(const std::vector<int32_t>& src_symbols) const;

 private:
  enum class Kind { reverse, numbers };
  std::vector<int32_t> draw_source(uint64_t seed, uint64_t index, uint32_t stream,
                                   uint32_t attempt) const;

  Kind kind_;
  std::string name_;
  ToyVocab vocab_;
  uint64_t seed_;
  int64_t min_len_, max_len_;  // reverse: symbols per source; numbers: digits
  int64_t symbols_;            // reverse: alphabet size
  int64_t max_src_len_ = 0, max_tgt_len_ = 0;
  std::vector<Example> valid_;
};

// English words for 0 <= n < 10^9, as the numbers task spells them: 342017 -> "three hundred
// forty two thousand seventeen".
std::string number_to_words(int64_t n);

}  // namespace mh
