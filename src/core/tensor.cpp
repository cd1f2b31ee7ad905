#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace mh {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f64:
      return 8;
    case DType::bf16:
      return 2;
    case DType::f16:
      return 2;
    case DType::i32:
      return 4;
    case DType::u8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::bf16:
      return "BF16";
    case DType::f16:
      return "F16";
    case DType::i32:
      return "I32";
    case DType::u8:
      return "U8";
  }
  return "?";
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    MH_CHECK(d >= 0, "negative dimension in ", shape_str(s));
    n *= d;
  }
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  // 64-byte alignment suits AVX-512 loads and cache lines; never a zero-byte allocation.
  size_t bytes = (std::max<size_t>(t.nbytes(), 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::wrap(std::shared_ptr<void> storage, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.storage_ = std::move(storage);
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  MH_CHECK(i >= 0 && i < n, "dim ", i, " of ", shape_str(shape_));
  return shape_[i];
}

Tensor Tensor::view(const Shape& shape) const {
  MH_CHECK(shape_numel(shape) == numel_, "view ", shape_str(shape_), " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  MH_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "rows ", begin, ":", end,
           " of ", shape_str(shape_));
  int64_t row = shape_[0] ? numel_ / shape_[0] : 0;
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  MH_CHECK(device_ == Device::cpu, "clone of a device tensor");
  Tensor t = empty(shape_, dtype_);
  std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

void Tensor::zero_() {
  MH_CHECK(device_ == Device::cpu, "zero_ of a device tensor");
  std::memset(raw(), 0, nbytes());
}

double Tensor::item(int64_t i) const {
  MH_CHECK(device_ == Device::cpu && i >= 0 && i < numel_, "item ", i, " of ", shape_str(shape_));
  switch (dtype_) {
    case DType::f32:
      return static_cast<const float*>(raw())[i];
    case DType::f64:
      return static_cast<const double*>(raw())[i];
    case DType::i32:
      return static_cast<const int32_t*>(raw())[i];
    case DType::u8:
      return static_cast<const uint8_t*>(raw())[i];
    default:
      MH_CHECK(false, "item() on ", dtype_name(dtype_));
  }
  return 0;
}

void Tensor::set_item(int64_t i, double v) {
  MH_CHECK(device_ == Device::cpu && i >= 0 && i < numel_, "set_item ", i);
  switch (dtype_) {
    case DType::f32:
      static_cast<float*>(raw())[i] = static_cast<float>(v);
      break;
    case DType::f64:
      static_cast<double*>(raw())[i] = v;
      break;
    case DType::i32:
      static_cast<int32_t*>(raw())[i] = static_cast<int32_t>(v);
      break;
    case DType::u8:
      static_cast<uint8_t*>(raw())[i] = static_cast<uint8_t>(v);
      break;
    default:
      MH_CHECK(false, "set_item() on ", dtype_name(dtype_));
  }
}

}  // namespace mh
