// Vectorizable float math for the CPU backend's hot loops. glibc's expf is a scalar call that
// GCC will not vectorize without -ffast-math; this one is plain arithmetic, so loops over it
// become AVX-512 code. Double precision (the gradient-check path) keeps std::exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace mh::cpu {

// e^x for float, max relative error ~2e-7 (about 1.5 ulp) on [-87, 88]; 0 below, +inf-ish above.
// Cody-Waite reduction x = n·ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for e^r
// (the Cephes expf coefficients) and 2^n assembled in the exponent bits.
inline float fast_expf(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Sum and max with 16 independent lanes: the compiler vectorizes these without -ffast-math
// (no reassociation of one accumulator), and lane-wise summation is also more accurate.
template <typename T>
inline T sum_lanes(const T* x, int64_t n) {
  T acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += x[i + l];
  for (; i < n; ++i) acc[0] += x[i];
  T s = 0;
  for (int l = 0; l < 16; ++l) s += acc[l];
  return s;
}

template <typename T>
inline T max_lanes(const T* x, int64_t n) {
  T acc[16];
  for (int l = 0; l < 16; ++l) acc[l] = x[0];
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
  for (; i < n; ++i) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
  T m = acc[0];
  for (int l = 1; l < 16; ++l) m = acc[l] > m ? acc[l] : m;
  return m;
}

template <typename T>
inline T exp_fast(T x) {
  if constexpr (sizeof(T) == 4)
    return fast_expf(x);
  else
    return std::exp(x);
}

}  // namespace mh::cpu
