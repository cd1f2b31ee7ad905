// Helpers for the SIMT kernel emulation tests (tests/emu/test_*_emu.cpp): host buffers that stand
// in for device memory (16-byte aligned, or misaligned by one element to force the scalar paths),
// random inputs rounded to the kernel's dtype, the CPU backend's F32 tensors, and the error
// measure of the GPU tests (tests/cuda/test_kernels_a.cpp): max |got − ref| / max |ref|, with
// tolerances F32 1e-5, BF16 1e-2, F16 2e-3.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "core/tensor.h"

namespace mh::emu_test {

using Vec = std::vector<float>;

template <typename T>
constexpr DType dtype_t() {
  if constexpr (std::is_same_v<T, float>)
    return DType::f32;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return DType::bf16;
  else
    return DType::f16;
}

template <typename T>
float to_f(T x) {
  return static_cast<float>(x);
}
template <typename T>
T from_f(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16(x);  // round to nearest even, as the kernels' conversions
  else
    return __float2half(x);
}
template <typename T>
float round_t(float x) {
  return to_f(from_f<T>(x));
}

inline double tolerance(DType t) {
  switch (t) {
    case DType::bf16:
      return 1e-2;
    case DType::f16:
      return 2e-3;
    default:
      return 1e-5;
  }
}

// n values uniform in ±[lo, hi] (never zero), rounded to T.
template <typename T>
Vec random_values(std::mt19937& rng, int64_t n, float lo = 0.05f, float hi = 2.f) {
  std::uniform_real_distribution<float> mag(lo, hi);
  std::bernoulli_distribution sign(0.5);
  Vec v(static_cast<size_t>(n));
  for (float& x : v) x = round_t<T>((sign(rng) ? -1.f : 1.f) * mag(rng));
  return v;
}

// n elements of T standing in for a device buffer: 16-byte aligned, or one element past that.
template <typename T>
class Buf {
 public:
  explicit Buf(int64_t n, bool misalign = false)
      : n_(n), store_(static_cast<size_t>(n + 1) * sizeof(T) + 16) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(store_.data());
    const uintptr_t aligned = (base + 15) / 16 * 16;
    p_ = reinterpret_cast<T*>(store_.data() + (aligned - base) + (misalign ? sizeof(T) : 0));
  }
  Buf(const Vec& v, bool misalign = false) : Buf(static_cast<int64_t>(v.size()), misalign) {
    for (int64_t i = 0; i < n_; ++i) p_[i] = from_f<T>(v[static_cast<size_t>(i)]);
  }
  T* p() { return p_; }
  const T* p() const { return p_; }
  int64_t n() const { return n_; }
  // 0xFF bytes: NaN in F32, BF16 and F16.
  void poison() { std::memset(static_cast<void*>(p_), 0xFF, static_cast<size_t>(n_) * sizeof(T)); }
  Vec values() const {
    Vec v(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) v[static_cast<size_t>(i)] = to_f(p_[i]);
    return v;
  }

 private:
  int64_t n_;
  std::vector<unsigned char> store_;
  T* p_ = nullptr;
};

inline Tensor host(const Vec& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f32);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

inline Vec values(const Tensor& h) {
  return Vec(h.data<float>(), h.data<float>() + h.numel());
}

// max |got − ref| / max |ref|; a NaN anywhere in got counts as infinite error.
inline double rel_err(const Vec& got, const Vec& ref) {
  if (got.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, mag = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(d <= diff)) diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
    mag = std::max(mag, std::fabs(static_cast<double>(ref[i])));
  }
  return mag > 0 ? diff / mag : diff;
}

}  // namespace mh::emu_test

#define EXPECT_CLOSE(got, ref, dtype)                                            \
  EXPECT_LE(::mh::emu_test::rel_err(got, ref), ::mh::emu_test::tolerance(dtype)) \
      << "dtype " << ::mh::dtype_name(dtype)
