// Pre-tokenized parallel corpora: one sentence pair per line,
//
//   <source ids> TAB <target ids> NEWLINE        e.g.  "17 402 9 2\t1 88 3071 5 2"
//
// each side a space-separated list of decimal token ids. Conventions applied while reading:
//   - the source gets data.eos_id appended if it does not already end with it;
//   - the target gets data.bos_id prepended if it does not start with it, and data.eos_id appended
//     if it does not end with it (the model is trained on BOS y1 ... yn EOS);
//   - every id must lie in [0, model.vocab_size) and differ from model.pad_id;
//   - after the specials are added, each side must be at most model.max_len tokens;
//   - neither side may be empty (before the specials are added); a "\r" before the newline is
//     ignored; every line must hold a pair: an empty line is an error, except that the file may
//     end with a newline.
// Any violation throws UserError "<path>:<line>: <what was expected>"; a missing or unreadable
// file throws "<path>: cannot read file (<reason>)".
#pragma once

#include <string>
#include <vector>

#include "config/config.h"
#include "data/batch.h"

namespace mh {

std::vector<Example> read_pairs(const std::string& path, const ModelConfig& m, const DataConfig& d);

}  // namespace mh
