// Tensor: a typed, shaped, contiguous view of reference-counted storage.
// Storage is owned by a shared_ptr with a deleter, so a CUDA caching allocator can hand out device
// memory through the same type. Views (reshape, row ranges) share storage; nothing is strided.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace mh {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, u8 };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: F32, F64, BF16, F16, I32, U8

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::u8;
}

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialized / zero-filled host tensors.
  static Tensor empty(const Shape& shape, DType dtype = DType::f32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32);
  // Wraps storage someone else allocated (e.g. a device allocator). `storage` keeps it alive.
  static Tensor wrap(std::shared_ptr<void> storage, const Shape& shape, DType dtype, Device device);

  bool defined() const { return static_cast<bool>(storage_); }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const;  // negative i counts from the end
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  void* raw() const { return static_cast<std::byte*>(storage_.get()) + offset_; }
  template <typename T>
  T* data() const {
    MH_CHECK(dtype_ == dtype_of<T>(), "tensor is ", dtype_name(dtype_));
    return static_cast<T*>(raw());
  }

  // Same storage, new shape with the same element count.
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) of the leading dimension, sharing storage.
  Tensor rows(int64_t begin, int64_t end) const;
  // The tensor as a 2-D matrix [numel / last_dim, last_dim].
  int64_t rows2d() const { return numel_ / (shape_.empty() ? 1 : shape_.back()); }
  int64_t cols2d() const { return shape_.empty() ? 1 : shape_.back(); }

  // A deep copy in fresh host storage.
  Tensor clone() const;
  void zero_();
  // Host-side element access for tests and tools, converting to double (f32/f64/i32/u8 only).
  double item(int64_t flat_index) const;
  void set_item(int64_t flat_index, double value);

 private:
  std::shared_ptr<void> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

}  // namespace mh
