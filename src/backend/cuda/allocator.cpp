// The caching device allocator (allocator.h): BlockPool's hooks on one CUDA device.
#include "backend/cuda/allocator.h"

#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"

namespace mh::cuda {

namespace {
// Sets the device for the scope and restores the previous one (pool hooks may run on any thread).
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
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};

BlockPool::Hooks cuda_hooks(int device) {
  BlockPool::Hooks h;
  h.alloc = [device](size_t bytes) -> void* {
    DeviceGuard guard(device);
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the error the failed call left, so later checks do not see it
      return nullptr;
    }
    MH_CUDA_CHECK(e);
    return p;
  };
  // No throwing from free: it also runs in the destructor; a failure there leaks one block.
  h.free = [device](void* p) {
    int prev = -1;
    cudaGetDevice(&prev);
    if (prev != device) cudaSetDevice(device);
    cudaFree(p);
    if (prev >= 0 && prev != device) cudaSetDevice(prev);
  };
  h.synchronize = [device] {
    DeviceGuard guard(device);
    MH_CUDA_CHECK(cudaDeviceSynchronize());
  };
  return h;
}
}  // namespace

CachingAllocator::CachingAllocator(int device) : device_(device), pool_(cuda_hooks(device)) {}

// Live tensors hold a shared_ptr to this allocator, so by now every block is back in the pool,
// whose destructor synchronizes the device and frees them.
CachingAllocator::~CachingAllocator() = default;

std::shared_ptr<void> CachingAllocator::allocate(size_t bytes) {
  const BlockPool::Block b = pool_.acquire(bytes);
  std::shared_ptr<CachingAllocator> self = shared_from_this();
  return std::shared_ptr<void>(b.ptr, [self, b](void*) { self->pool_.release(b); });
}

}  // namespace mh::cuda
