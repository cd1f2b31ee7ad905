// Model weights as safetensors, keyed by the parameter names of ARCHITECTURE.md, stored as F32.
#pragma once

#include <string>

#include "model/transformer.h"

namespace mh {

// Writes every parameter (atomically: nothing half-written on failure).
void save_weights(Transformer& model, Backend& be, const std::string& path, int64_t step);
// Loads every parameter; the file must hold exactly the model's parameters with the same shapes
// (UserError naming the file and the first tensor that differs). Returns the step stored in the
// file's metadata (0 if none).
int64_t load_weights(Transformer& model, Backend& be, const std::string& path);

}  // namespace mh
