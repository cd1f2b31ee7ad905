// A caching device allocator. Requests are rounded up to size classes (512 B below 1 MiB,
// 2 MiB at and above) and freed blocks go back to a per-class free list, so a training step that
// repeats the same allocations stops calling cudaMalloc after the first step. Memory is only
// returned to the driver (cudaFree) when the allocator is destroyed.
//
// Blocks are not tied to a stream: the backend runs every op on one compute stream, so a block
// freed (in host order) after its last use was enqueued can be reused by work enqueued later on
// that same stream. Work on another stream (communication) must be ordered with events by the
// caller before a block it uses is released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace mh::cuda {

struct AllocatorStats {
  size_t bytes_in_use = 0;    // rounded sizes of live blocks
  size_t bytes_reserved = 0;  // everything obtained from cudaMalloc
  int64_t malloc_calls = 0;   // cudaMalloc calls so far
  int64_t alloc_calls = 0;    // allocate() calls so far
};

class CachingAllocator : public std::enable_shared_from_this<CachingAllocator> {
 public:
  explicit CachingAllocator(int device);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A device block of at least `bytes` (a zero-byte request still gets a distinct block). The
  // shared_ptr's deleter returns it to this allocator, which it keeps alive.
  std::shared_ptr<void> allocate(size_t bytes);
  AllocatorStats stats() const;
  int device() const { return device_; }

  static size_t round_size(size_t bytes);

 private:
  void release(void* p, size_t rounded);

  int device_;
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // rounded size -> free blocks
  std::vector<void*> all_;                               // every cudaMalloc'd block
  AllocatorStats stats_;
};

}  // namespace mh::cuda
