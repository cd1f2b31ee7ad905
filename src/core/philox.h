// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
// Counter-based: the bits for element i of call c at step s depend only on (seed, s, c, i), so
// dropout masks are reproducible, need no state, and the CUDA kernels can draw the very same bits
// as the CPU reference. Header-only and host/device-callable.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MH_HD __host__ __device__ __forceinline__
#else
#define MH_HD inline
#endif

namespace mh {

struct Philox4 {
  uint32_t v[4];
};

MH_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// counter: 128 bits (c0..c3), key: 64 bits (k0, k1).
MH_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                         uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    uint32_t lo0 = philox_mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// A uniform float in [0, 1) from 24 random bits.
MH_HD float philox_uniform(uint32_t bits) {
  return (bits >> 8) * (1.0f / 16777216.0f);
}

// The uniform for element `i` of the random stream (seed, offset). Each Philox call yields four
// uniforms; element i takes lane i % 4 of counter i / 4. `offset` separates streams (e.g. the
// step and the index of the dropout site within the step).
MH_HD float philox_uniform_at(uint64_t seed, uint64_t offset, uint64_t i) {
  uint64_t block = i >> 2;
  Philox4 r = philox4x32(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                         static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                         static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return philox_uniform(r.v[i & 3]);
}

}  // namespace mh
