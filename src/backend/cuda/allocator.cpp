// The caching device allocator (allocator.h).
#include "backend/cuda/allocator.h"

#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"

namespace mh::cuda {

namespace {
constexpr size_t kSmallQuantum = 512;
constexpr size_t kLargeQuantum = size_t(2) << 20;
constexpr size_t kLargeThreshold = size_t(1) << 20;

// Sets the device for the scope and restores the previous one.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    MH_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != device) MH_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev) cudaSetDevice(prev);
  }
};
}  // namespace

CachingAllocator::CachingAllocator(int device) : device_(device) {}

CachingAllocator::~CachingAllocator() {
  // Live tensors hold a shared_ptr to this allocator, so by now every block is free.
  int prev = -1;
  cudaGetDevice(&prev);
  cudaSetDevice(device_);
  cudaDeviceSynchronize();  // no error check in a destructor: the blocks go back regardless
  for (void* p : all_) cudaFree(p);
  if (prev >= 0) cudaSetDevice(prev);
}

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t q = bytes < kLargeThreshold ? kSmallQuantum : kLargeQuantum;
  return (bytes + q - 1) / q * q;
}

std::shared_ptr<void> CachingAllocator::allocate(size_t bytes) {
  const size_t rounded = round_size(bytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.alloc_calls;
    auto it = free_.find(rounded);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
    }
  }
  if (!p) {
    DeviceGuard guard(device_);
    cudaError_t e = cudaMalloc(&p, rounded);
    if (e == cudaErrorMemoryAllocation) {
      // Out of memory with blocks cached in other classes: give them back and retry once.
      cudaGetLastError();  // clear the sticky-free error state of the failed call
      std::lock_guard<std::mutex> lock(mu_);
      MH_CUDA_CHECK(cudaDeviceSynchronize());
      for (auto& [size, blocks] : free_) {
        for (void* b : blocks) {
          MH_CUDA_CHECK(cudaFree(b));
          std::erase(all_, b);
          stats_.bytes_reserved -= size;
        }
        blocks.clear();
      }
      e = cudaMalloc(&p, rounded);
    }
    MH_CUDA_CHECK(e);
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(p);
    stats_.bytes_reserved += rounded;
    ++stats_.malloc_calls;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_in_use += rounded;
  }
  std::shared_ptr<CachingAllocator> self = shared_from_this();
  return std::shared_ptr<void>(p, [self, rounded](void* q) { self->release(q, rounded); });
}

void CachingAllocator::release(void* p, size_t rounded) {
  std::lock_guard<std::mutex> lock(mu_);
  free_[rounded].push_back(p);
  stats_.bytes_in_use -= rounded;
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace mh::cuda
