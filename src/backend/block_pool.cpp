// BlockPool: best-fit caching of driver blocks (see the header).
#include "backend/block_pool.h"

#include <stdexcept>
#include <utility>

#include "core/error.h"

namespace mh {

namespace {
constexpr size_t kSmallQuantum = 512;
constexpr size_t kLargeQuantum = size_t(2) << 20;
constexpr size_t kLargeThreshold = size_t(1) << 20;

std::string mib(size_t bytes) {
  return str(static_cast<double>(bytes) / double(1 << 20), " MiB");
}
}  // namespace

BlockPool::BlockPool(Hooks hooks) : hooks_(std::move(hooks)) {
  MH_CHECK(hooks_.alloc && hooks_.free && hooks_.synchronize, "BlockPool: every hook is needed");
}

BlockPool::~BlockPool() {
  std::lock_guard<std::mutex> lock(mu_);
  try {
    if (!free_.empty()) hooks_.synchronize();
  } catch (...) {  // a destructor does not throw; the blocks go back regardless
  }
  for (auto& [size, p] : free_) hooks_.free(p);
  free_.clear();
}

size_t BlockPool::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t q = bytes < kLargeThreshold ? kSmallQuantum : kLargeQuantum;
  return (bytes + q - 1) / q * q;
}

BlockPool::Block BlockPool::acquire(size_t bytes) {
  const size_t rounded = round_size(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.alloc_calls;
  auto it = free_.lower_bound(rounded);
  if (it != free_.end() && it->first <= max_fit(rounded)) {
    const Block b{it->second, it->first};
    free_.erase(it);
    stats_.bytes_in_use += b.size;
    return b;
  }
  void* p = hooks_.alloc(rounded);
  if (!p && !free_.empty()) {
    flush_locked();
    p = hooks_.alloc(rounded);
  }
  if (!p)
    throw std::runtime_error(str("out of device memory: ", mib(rounded), " requested, ",
                                 mib(stats_.bytes_in_use), " in use by live tensors, ",
                                 mib(stats_.bytes_reserved), " reserved in all"));
  ++stats_.malloc_calls;
  stats_.bytes_reserved += rounded;
  stats_.bytes_in_use += rounded;
  return Block{p, rounded};
}

void BlockPool::release(Block b) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.emplace(b.size, b.ptr);
  stats_.bytes_in_use -= b.size;
}

void BlockPool::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!free_.empty()) flush_locked();
}

void BlockPool::flush_locked() {
  hooks_.synchronize();
  for (auto& [size, p] : free_) {
    hooks_.free(p);
    stats_.bytes_reserved -= size;
  }
  free_.clear();
  ++stats_.flushes;
}

AllocatorStats BlockPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace mh
