#include "train/checkpoint.h"

#include <set>
#include <vector>

#include "io/safetensors.h"

namespace mh {

namespace {
// A host copy of t in dtype `to` (f32 or f64). Reduced-precision device values are widened to
// f32 on the device first.
Tensor host_as(Backend& be, const Tensor& t, DType to) {
  Tensor src = t;
  if (t.dtype() != DType::f32 && t.dtype() != DType::f64) {
    src = be.empty(t.shape(), DType::f32);
    be.cast(t, src);
  }
  Tensor host = Tensor::empty(src.shape(), src.dtype());
  be.copy(src, host);
  if (to == t.dtype()) return host;
  Tensor out = Tensor::empty(t.shape(), to);
  for (int64_t i = 0; i < t.numel(); ++i) out.set_item(i, host.item(i));
  return out;
}
}  // namespace

void save_weights(Transformer& model, Backend& be, const std::string& path, int64_t step) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  model.for_each_param(
      [&](Param& p) { tensors.emplace_back(p.name, host_as(be, p.value, DType::f32)); });
  save_safetensors(path, tensors, {{"format", "multihead"}, {"step", std::to_string(step)}});
}

int64_t load_weights(Transformer& model, Backend& be, const std::string& path) {
  SafetensorsFile file = load_safetensors(path);
  std::set<std::string> used;
  model.for_each_param([&](Param& p) {
    auto it = file.tensors.find(p.name);
    if (it == file.tensors.end())
      user_error(path, ": no tensor '", p.name, "' (is this a checkpoint of this model config?)");
    const Tensor& t = it->second;
    if (t.shape() != p.value.shape())
      user_error(path, ": tensor '", p.name, "' has shape ", shape_str(t.shape()),
                 ", the model expects ", shape_str(p.value.shape()));
    if (t.dtype() != DType::f32 && t.dtype() != DType::f64)
      user_error(path, ": tensor '", p.name, "' is ", dtype_name(t.dtype()), ", expected F32");
    const bool reduced = p.value.dtype() != DType::f32 && p.value.dtype() != DType::f64;
    be.upload(host_as(be, t, reduced ? DType::f32 : p.value.dtype()), p.value);
    used.insert(p.name);
  });
  for (const auto& [name, t] : file.tensors)
    if (!used.count(name))
      user_error(path, ": unexpected tensor '", name, "' (not a parameter of this model config)");
  auto step = file.metadata.find("step");
  if (step == file.metadata.end()) return 0;
  try {
    return std::stoll(step->second);
  } catch (const std::exception&) {
    user_error(path, ": metadata step '", step->second, "' is not an integer");
  }
}

}  // namespace mh
