// A host emulation of the GPU primitives the custom attention kernels use (flash_common.cuh), so
// that their source runs on the CPU under test (test_flash_emu.cpp) on machines without a GPU.
// Each CUDA thread of a block is a std::thread; warp-wide instructions (mma.sync, ldmatrix,
// shfl.xor) exchange operands through per-warp scratch between two warp barriers, with the
// semantics of the PTX ISA: mma.m16n8k16 fragment layouts, ldmatrix "lane 8·m + r gives row r of
// matrix m; lane 4·r + w receives word w of row r" (transposed with .trans). cp.async copies are
// queued per thread and only land at cp.async.wait_all, so a kernel that reads shared memory
// before waiting reads stale data here too.
//
// What this cannot show: timing, bank conflicts, register pressure, and anything the real
// hardware does differently from the ISA text this emulation was written from. Accumulation
// order inside one mma differs from the tensor cores' (both fp32).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <barrier>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace mh::cuda::flash {

namespace emu {

struct WarpScratch {
  const void* addr[32];
  uint32_t a[32][4];
  uint32_t b[32][2];
  float f[32];
};

struct AlignedDelete {
  void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(128)); }
};

struct Block {
  int x = 0, y = 0, z = 0;
  // Exactly the bytes the launch asked for (128-byte aligned), so AddressSanitizer sees a kernel
  // that strays past its shared memory.
  std::unique_ptr<unsigned char[], AlignedDelete> smem;
  size_t smem_bytes;
  std::barrier<> block_bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<WarpScratch> scratch;
  // State of other primitive families (flash_sm90_emu.h: mbarriers, warpgroups), made on first use.
  std::mutex ext_mu;
  std::shared_ptr<void> ext;
  Block(int threads, size_t bytes)
      : smem(static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t(128)))),
        smem_bytes(bytes),
        block_bar(threads) {
    for (int w = 0; w < threads / 32; ++w) warp_bar.push_back(std::make_unique<std::barrier<>>(32));
    scratch.resize(static_cast<size_t>(threads / 32));
  }
};

struct PendingCopy {
  void* dst;
  const void* src;
  bool valid;
};

struct Thread {
  int tid = 0;
  Block* block = nullptr;
  std::vector<PendingCopy> pending;
  std::vector<size_t> groups;  // pending.size() at each cp.async.commit_group, oldest first
};

inline thread_local Thread self;

inline int lane() {
  return self.tid & 31;
}
inline WarpScratch& scratch() {
  return self.block->scratch[static_cast<size_t>(self.tid >> 5)];
}
inline void warp_sync() {
  self.block->warp_bar[static_cast<size_t>(self.tid >> 5)]->arrive_and_wait();
}

inline float bits_to_float(uint16_t bits, bool bf16) {
  if (bf16) {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

template <bool kBf16>
void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  WarpScratch& ws = scratch();
  const int l = lane();
  for (int i = 0; i < 4; ++i) ws.a[l][i] = a[i];
  ws.b[l][0] = b0;
  ws.b[l][1] = b1;
  warp_sync();
  // A(r, k): lane (r % 8)·4 + (k % 8) / 2, register r / 8 + 2·(k / 8), half k % 2.
  // B(k, n): lane n·4 + (k % 8) / 2, register k / 8, half k % 2.
  auto half_of = [](uint32_t reg, int k) { return static_cast<uint16_t>(k % 2 ? reg >> 16 : reg); };
  const int g = l >> 2, t = l & 3;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    float acc = 0.f;
    for (int k = 0; k < 16; ++k) {
      const uint32_t ar = ws.a[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)];
      const uint32_t br = ws.b[col * 4 + (k % 8) / 2][k / 8];
      acc += bits_to_float(half_of(ar, k), kBf16) * bits_to_float(half_of(br, k), kBf16);
    }
    d[e] += acc;
  }
  warp_sync();
}

inline void ldmatrix(uint32_t (&r)[4], const void* p, bool trans) {
  WarpScratch& ws = scratch();
  const int l = lane();
  ws.addr[l] = p;
  warp_sync();
  for (int m = 0; m < 4; ++m) {
    uint16_t e[2];
    for (int w = 0; w < 2; ++w) {
      // Plain: row l / 4, column 2·(l % 4) + w of matrix m. Transposed: row 2·(l % 4) + w, column
      // l / 4.
      const int row = trans ? 2 * (l & 3) + w : l >> 2;
      const int col = trans ? l >> 2 : 2 * (l & 3) + w;
      const auto* rp = static_cast<const uint16_t*>(ws.addr[m * 8 + row]);
      e[w] = rp[col];
    }
    r[m] = static_cast<uint32_t>(e[0]) | (static_cast<uint32_t>(e[1]) << 16);
  }
  warp_sync();
}

}  // namespace emu

inline unsigned char* emu_block_smem() {
  return emu::self.block->smem.get();
}
inline int thread_x() {
  return emu::self.tid;
}
inline int block_x() {
  return emu::self.block->x;
}
inline int block_y() {
  return emu::self.block->y;
}
inline int block_z() {
  return emu::self.block->z;
}
inline void block_sync() {
  emu::self.block->block_bar.arrive_and_wait();
}
inline int warp_index() {
  return emu::self.tid >> 5;
}
inline float shfl_xor(float v, int lane_mask) {
  emu::WarpScratch& ws = emu::scratch();
  const int l = emu::lane();
  ws.f[l] = v;
  emu::warp_sync();
  const float r = ws.f[l ^ lane_mask];
  emu::warp_sync();
  return r;
}
inline void atomic_add(float* p, float v) {
  std::atomic_ref<float>(*p).fetch_add(v);
}
inline void atomic_add2(float* p, float a, float b) {
  assert(reinterpret_cast<uintptr_t>(p) % 8 == 0 && "atomic_add2 needs 8-byte alignment");
  atomic_add(p, a);
  atomic_add(p + 1, b);
}

template <typename T>
inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::mma<std::is_same_v<T, __nv_bfloat16>>(d, a, b0, b1);
}
inline void ldsm_x4(uint32_t (&r)[4], const void* p) {
  emu::ldmatrix(r, p, false);
}
inline void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  emu::ldmatrix(r, p, true);
}
inline void cp_async16(void* smem, const void* gmem, bool valid) {
  emu::self.pending.push_back({smem, gmem, valid});
}
inline void cp_async_commit() {
  emu::self.groups.push_back(emu::self.pending.size());
}
// Completes the first n pending copies, in issue order.
inline void cp_async_complete(size_t n) {
  std::vector<emu::PendingCopy>& pending = emu::self.pending;
  for (size_t i = 0; i < n; ++i) {
    const emu::PendingCopy& c = pending[i];
    if (c.valid)
      std::memcpy(c.dst, c.src, 16);
    else
      std::memset(c.dst, 0, 16);
  }
  pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(n));
}
inline void cp_async_wait_all() {
  cp_async_complete(emu::self.pending.size());
  emu::self.groups.clear();
}
// PTX cp.async.wait_group N: all but the N most recent committed groups complete (copies not yet
// committed need not).
template <int N>
inline void cp_async_wait_group() {
  std::vector<size_t>& groups = emu::self.groups;
  if (groups.size() <= static_cast<size_t>(N)) return;
  const size_t done = groups[groups.size() - 1 - N];
  cp_async_complete(done);
  groups.erase(groups.begin(), groups.end() - N);
  for (size_t& g : groups) g -= done;
}

// Runs `kernel()` as a grid of blocks, one block at a time, each with `threads` host threads.
inline void emu_launch(int gx, int gy, int gz, int threads, size_t smem_bytes,
                       const std::function<void()>& kernel) {
  for (int z = 0; z < gz; ++z)
    for (int y = 0; y < gy; ++y)
      for (int x = 0; x < gx; ++x) {
        emu::Block block(threads, smem_bytes);
        block.x = x;
        block.y = y;
        block.z = z;
        // Shared memory starts as junk, as on the GPU: the kernel must write before it reads.
        std::memset(block.smem.get(), 0x7f, block.smem_bytes);
        std::vector<std::thread> ts;
        ts.reserve(static_cast<size_t>(threads));
        // A CUDA thread must not exit with cp.async copies into shared memory in flight: the
        // next block on the SM may own that memory by the time they land.
        std::atomic<int> exited_pending{0};
        for (int t = 0; t < threads; ++t)
          ts.emplace_back([&block, t, &kernel, &exited_pending] {
            emu::self = emu::Thread{t, &block, {}, {}};
            kernel();
            if (!emu::self.pending.empty()) ++exited_pending;
          });
        for (std::thread& t : ts) t.join();
        if (exited_pending > 0)
          throw std::logic_error("emu_launch: " + std::to_string(exited_pending.load()) +
                                 " threads of block (" + std::to_string(x) + ", " +
                                 std::to_string(y) + ", " + std::to_string(z) +
                                 ") exited with cp.async copies pending");
      }
}

}  // namespace mh::cuda::flash
