// BlockPool: the caching policy of a device allocator, apart from the device (the CUDA backend's
// CachingAllocator supplies cudaMalloc/cudaFree as hooks; the unit tests supply host memory).
//
// Why not one free list per exact size. A translation batch has a different shape every step
// (batches are cut by token count from sentences of 10-100 tokens), so its activations come in
// ever new sizes. With exact-size reuse every new size is a cudaMalloc, which is slow and
// synchronizes the device, and the cache keeps growing with blocks of sizes never asked for again
// until the device runs out and everything is flushed. Here a request takes the smallest cached
// block that is large enough and at most twice the (rounded) request: after a few steps the pool
// holds blocks covering the range of sizes a run uses and stops asking the driver, while no
// request wastes more than half of the block it gets. Blocks are never split (a block is one
// driver allocation), which keeps release O(log n) and the pool simple; the factor 2 bounds the
// waste instead.
//
// Out of memory: when the driver refuses, every cached block is returned to it (after the
// synchronize hook, as work on the device may still use them) and the allocation retried once.
//
// Blocks are not tied to a stream (see allocator.h for why that is safe in this backend).
// Thread-safe: blocks may be released from any thread (e.g. when a collective's Work ends).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

namespace mh {

struct AllocatorStats {
  size_t bytes_in_use = 0;    // sizes of live blocks (as cached: at least the rounded request)
  size_t bytes_reserved = 0;  // everything currently obtained from the driver
  int64_t malloc_calls = 0;   // driver allocations so far
  int64_t alloc_calls = 0;    // acquire() calls so far
  int64_t flushes = 0;        // times the cache was returned to the driver on out-of-memory
};

class BlockPool {
 public:
  struct Hooks {
    // A new driver block of exactly `bytes`, or nullptr when the device is out of memory (any
    // other failure throws).
    std::function<void*(size_t bytes)> alloc;
    std::function<void(void* p)> free;
    // Waits until the device no longer uses any block (before cached blocks are freed).
    std::function<void()> synchronize;
  };
  struct Block {
    void* ptr = nullptr;
    size_t size = 0;  // the block's real size (release() takes it back as it is)
  };

  explicit BlockPool(Hooks hooks);
  // Returns every cached block to the driver. Live blocks must have been released before.
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // A block of at least `bytes` (a zero-byte request still gets a distinct block). Throws
  // std::runtime_error naming the sizes when the driver has no memory even after a flush.
  Block acquire(size_t bytes);
  void release(Block b);
  // Returns every cached (free) block to the driver.
  void empty_cache();
  AllocatorStats stats() const;

  // Requests are rounded up to 512 B below 1 MiB and to 2 MiB from there.
  static size_t round_size(size_t bytes);
  // The largest cached block a request of `rounded` bytes may take.
  static size_t max_fit(size_t rounded) { return 2 * rounded; }

 private:
  void flush_locked();  // with mu_ held

  Hooks hooks_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;  // cached blocks by size
  AllocatorStats stats_;
};

}  // namespace mh
