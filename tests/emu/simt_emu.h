// A host emulation of plain SIMT CUDA (threads, blocks, __syncthreads, warp shuffles, atomics,
// static __shared__ arrays), so the CUDA backend's elementwise / reduction kernels run on the
// CPU under test (tests/emu/test_*_emu.cpp) on machines without a GPU. The tensor-core
// instructions of the attention kernels have their own emulation (flash_emu.h).
//
// How. A kernel's source (its *_kernels.cuh header; the launchers with <<<>>> stay in the .cu)
// compiles as host C++ after this header: __global__ and __launch_bounds__ vanish, threadIdx and
// blockIdx are thread-locals, and a `__shared__` array becomes a function-local static, i.e. one
// copy shared by all threads, which is block-shared memory because blocks run one at a time.
// emu::launch runs the grid block by block, each block's threads as std::threads; a thread that
// returns early drops out of the barriers (as an exited GPU thread no longer holds one up).
// Warp shuffles exchange through per-warp scratch between two warp barriers.
//
// Include it after the CUDA headers (it redefines their __global__ and __shared__ keywords), and
// only in emulation builds (MH_SIMT_EMU).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#undef __global__
#define __global__
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static

namespace mh::emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct Block {
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<uint64_t> scratch;  // one slot per thread, for shuffles
  explicit Block(int threads) : bar(threads), scratch(static_cast<size_t>(threads)) {
    for (int w = 0; w * 32 < threads; ++w)
      warp_bar.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - w * 32)));
  }
};

inline thread_local Block* tl_block = nullptr;
inline thread_local int tl_linear = 0;

}  // namespace mh::emu

inline thread_local mh::emu::Dim3 threadIdx, blockIdx;
inline mh::emu::Dim3 blockDim, gridDim;

inline void __syncthreads() {
  mh::emu::tl_block->bar.arrive_and_wait();
}

namespace mh::emu {
inline void warp_sync() {
  tl_block->warp_bar[static_cast<size_t>(tl_linear / 32)]->arrive_and_wait();
}
template <typename T>
T shfl_from(T v, int src_lane_of_warp) {
  static_assert(sizeof(T) <= 8);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  tl_block->scratch[static_cast<size_t>(tl_linear)] = bits;
  warp_sync();
  const uint64_t got =
      tl_block->scratch[static_cast<size_t>(tl_linear / 32 * 32 + src_lane_of_warp)];
  warp_sync();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
}  // namespace mh::emu

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int width = 32) {
  const int lane = mh::emu::tl_linear & 31;
  const int src = (lane ^ lane_mask) < ((lane / width) + 1) * width ? lane ^ lane_mask : lane;
  return mh::emu::shfl_from(v, src);
}
template <typename T>
T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta, int width = 32) {
  const int lane = mh::emu::tl_linear & 31;
  const int src =
      (lane % width) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return mh::emu::shfl_from(v, src);
}
template <typename T>
T __shfl_sync(unsigned /*mask*/, T v, int src_lane, int width = 32) {
  const int lane = mh::emu::tl_linear & 31;
  return mh::emu::shfl_from(v, lane / width * width + src_lane % width);
}

inline float atomicAdd(float* p, float v) {
  return std::atomic_ref<float>(*p).fetch_add(v);
}
inline double atomicAdd(double* p, double v) {
  return std::atomic_ref<double>(*p).fetch_add(v);
}
inline int atomicAdd(int* p, int v) {
  return std::atomic_ref<int>(*p).fetch_add(v);
}
// The native 16-bit atomicAdd (sm_70+ for __half, sm_80+ for __nv_bfloat16): old + v rounded to
// nearest, as one atomic read-modify-write.
namespace mh::emu {
template <typename H>
H atomic_add_16(H* p, H v) {
  std::atomic_ref<H> a(*p);
  H old = a.load();
  while (!a.compare_exchange_weak(
      old, static_cast<H>(static_cast<float>(old) + static_cast<float>(v)))) {
  }
  return old;
}
}  // namespace mh::emu
inline __half atomicAdd(__half* p, __half v) {
  return mh::emu::atomic_add_16(p, v);
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  return mh::emu::atomic_add_16(p, v);
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}

namespace mh::emu {

// Runs kernel() over grid × block, one block at a time.
inline void launch(Dim3 grid, Dim3 block, const std::function<void()>& kernel) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b(threads);
        std::vector<std::thread> ts;
        ts.reserve(static_cast<size_t>(threads));
        for (int t = 0; t < threads; ++t)
          ts.emplace_back([&, t] {
            tl_block = &b;
            tl_linear = t;
            blockIdx = Dim3{bx, by, bz};
            threadIdx = Dim3{static_cast<unsigned>(t) % block.x,
                             static_cast<unsigned>(t) / block.x % block.y,
                             static_cast<unsigned>(t) / (block.x * block.y)};
            kernel();
            // An exited thread no longer holds up its block's or its warp's barriers.
            b.warp_bar[static_cast<size_t>(t / 32)]->arrive_and_drop();
            b.bar.arrive_and_drop();
          });
        for (std::thread& th : ts) th.join();
      }
}

}  // namespace mh::emu
