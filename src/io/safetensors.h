// safetensors files (https://github.com/huggingface/safetensors): 8-byte little-endian header
// length N, N bytes of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
// "__metadata__": {str: str}}, then the raw little-endian data. Written atomically.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace mh {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // host tensors, by name
  std::map<std::string, std::string> metadata;
};

// Writes to `path` + ".tmp" and renames, so a failed write leaves no partial file. Tensors must
// be host tensors. Throws UserError naming the path on I/O failure.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and validates the whole file (header JSON, dtypes, offsets within the file, no overlap).
// Throws UserError "<path>: <what is wrong>" on a missing, unreadable or malformed file.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace mh
