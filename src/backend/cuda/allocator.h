// The CUDA backend's caching device allocator: BlockPool's best-fit cache (backend/block_pool.h:
// why best fit, rounding, out-of-memory flush) over cudaMalloc/cudaFree on one device, so a
// training step stops calling cudaMalloc once the pool covers the sizes the run uses (after the
// first step for fixed shapes, after a few for the varying shapes of translation batches). Memory
// goes back to the driver on out-of-memory, on empty_cache(), and when the allocator is destroyed.
//
// Blocks are not tied to a stream: the backend runs every op on one compute stream, so a block
// freed (in host order) after its last use was enqueued can be reused by work enqueued later on
// that same stream. Work on another stream (communication) must be ordered with events by the
// caller before a block it uses is released (the Communicators' Work handles keep their buffers
// alive until the collective has completed).
#pragma once

#include <cstddef>
#include <memory>

#include "backend/block_pool.h"

namespace mh::cuda {

using mh::AllocatorStats;

class CachingAllocator : public std::enable_shared_from_this<CachingAllocator> {
 public:
  explicit CachingAllocator(int device);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A device block of at least `bytes` (a zero-byte request still gets a distinct block). The
  // shared_ptr's deleter returns it to this allocator, which it keeps alive.
  std::shared_ptr<void> allocate(size_t bytes);
  // Returns every cached (free) block to the driver, after the device has finished with them.
  void empty_cache() { pool_.empty_cache(); }
  AllocatorStats stats() const { return pool_.stats(); }
  int device() const { return device_; }

  static size_t round_size(size_t bytes) { return BlockPool::round_size(bytes); }

 private:
  int device_;
  BlockPool pool_;
};

}  // namespace mh::cuda
