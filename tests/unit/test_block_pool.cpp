// BlockPool (the CUDA allocator's caching policy) over host memory: a fake driver that counts
// allocations and can be given a memory budget, so the policy is tested on any machine (and under
// AddressSanitizer: blocks are real host allocations the test writes into).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/block_pool.h"

namespace mh {
namespace {

constexpr size_t MiB = size_t(1) << 20;

// A host "device": malloc/free with a byte budget (nullptr past it), counting calls.
struct FakeDevice {
  size_t budget = SIZE_MAX, live = 0;
  int64_t allocs = 0, frees = 0, syncs = 0;
  std::map<void*, size_t> blocks;  // live driver blocks and their sizes
  BlockPool::Hooks hooks() {
    BlockPool::Hooks h;
    h.alloc = [this](size_t bytes) -> void* {
      if (live + bytes > budget) return nullptr;
      void* p = std::malloc(bytes);
      if (!p) return nullptr;
      live += bytes;
      ++allocs;
      blocks[p] = bytes;
      return p;
    };
    h.free = [this](void* p) {
      auto it = blocks.find(p);
      EXPECT_NE(it, blocks.end()) << "freeing a block the device never gave";
      if (it == blocks.end()) return;
      live -= it->second;
      blocks.erase(it);
      ++frees;
      std::free(p);
    };
    h.synchronize = [this] { ++syncs; };
    return h;
  }
};

TEST(BlockPool, RoundsToSizeClasses) {
  EXPECT_EQ(BlockPool::round_size(0), 512u);
  EXPECT_EQ(BlockPool::round_size(1), 512u);
  EXPECT_EQ(BlockPool::round_size(513), 1024u);
  EXPECT_EQ(BlockPool::round_size(MiB - 1), MiB);
  EXPECT_EQ(BlockPool::round_size(MiB), 2 * MiB);
  EXPECT_EQ(BlockPool::round_size(2 * MiB + 1), 4 * MiB);
}

TEST(BlockPool, ReusesTheSmallestBlockThatFitsWithinTwiceTheRequest) {
  FakeDevice dev;
  BlockPool pool(dev.hooks());
  std::vector<BlockPool::Block> held;
  for (size_t s : {4 * MiB, 8 * MiB, 16 * MiB}) held.push_back(pool.acquire(s));
  for (auto& b : held) pool.release(b);
  ASSERT_EQ(dev.allocs, 3);

  const BlockPool::Block a = pool.acquire(5 * MiB);  // 6 MiB rounded: 8 is the best fit
  EXPECT_EQ(a.size, 8 * MiB);
  const BlockPool::Block b = pool.acquire(3 * MiB);  // 4 MiB rounded: exactly 4
  EXPECT_EQ(b.size, 4 * MiB);
  const BlockPool::Block c = pool.acquire(6 * MiB + 1);  // 8 MiB rounded: 16 is within 2x
  EXPECT_EQ(c.size, 16 * MiB);
  EXPECT_EQ(dev.allocs, 3);
  const BlockPool::Block d = pool.acquire(1000);  // nothing cached within 2x of 1024 B
  EXPECT_EQ(d.size, 1024u);
  EXPECT_EQ(dev.allocs, 4);
  for (auto& x : {a, b, c, d}) pool.release(x);

  // A request never takes a block more than twice its rounded size.
  const BlockPool::Block e = pool.acquire(2 * MiB);  // 4 MiB is within 2x of 2 MiB
  EXPECT_EQ(e.size, 4 * MiB);
  const BlockPool::Block f = pool.acquire(2 * MiB);  // 8 MiB is not: a new block
  EXPECT_EQ(f.size, 2 * MiB);
  EXPECT_EQ(dev.allocs, 5);
  pool.release(e);
  pool.release(f);
}

TEST(BlockPool, LiveBlocksAreDistinctAndWritable) {
  FakeDevice dev;
  BlockPool pool(dev.hooks());
  std::vector<BlockPool::Block> held;
  for (size_t s : {size_t(0), size_t(0), size_t(1), size_t(700), 3 * MiB, 3 * MiB})
    held.push_back(pool.acquire(s));
  std::set<void*> ptrs;
  for (auto& b : held) {
    EXPECT_TRUE(ptrs.insert(b.ptr).second) << "two live blocks share an address";
    std::memset(b.ptr, 0x5a, b.size);  // AddressSanitizer checks the whole block exists
  }
  for (auto& b : held) pool.release(b);
  const AllocatorStats s = pool.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.alloc_calls, 6);
  EXPECT_EQ(s.malloc_calls, 6);
  EXPECT_EQ(s.bytes_reserved, 3 * 512u + 1024u + 2 * 4 * MiB);  // 700 B rounds to 1 KiB
}

// A translation-like run: every step allocates activations whose sizes scale with that step's
// batch length (random, 10 to 100 tokens), holds them until the end of the step, frees them. The
// pool must stop asking the driver after a warm-up, and keep its reserve within a small multiple
// of a step's peak: 146 driver allocations, all in the first half, and a reserve of 3.4x the
// largest step. (With exact-size reuse, max_fit(r) == r, the same run makes 434 allocations and
// reserves 9.5x: this test then fails on the reserve.)
struct StepStats {
  int64_t allocs_late = 0;  // driver allocations in the second half of the run
  size_t reserved = 0, peak_live = 0;
};
StepStats run_variable_shapes(BlockPool& pool, FakeDevice& dev, int steps) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> len(10, 100);
  // Per-token bytes of 40 activations (d_model 512 floats, d_ff 2048 floats, heads' scores ...)
  // at a batch of 64 sentences.
  std::vector<size_t> per_token;
  for (int i = 0; i < 40; ++i) per_token.push_back(size_t(64) * 4 * (i % 3 == 0 ? 2048 : 512));
  StepStats st;
  for (int step = 0; step < steps; ++step) {
    const size_t l = static_cast<size_t>(len(rng));
    if (step == steps / 2) st.allocs_late = -dev.allocs;
    std::vector<BlockPool::Block> live;
    size_t live_bytes = 0;
    for (size_t pt : per_token) {
      live.push_back(pool.acquire(pt * l));
      live_bytes += pt * l;
    }
    st.peak_live = std::max(st.peak_live, live_bytes);
    for (auto it = live.rbegin(); it != live.rend(); ++it) pool.release(*it);
  }
  st.allocs_late += dev.allocs;
  st.reserved = pool.stats().bytes_reserved;
  return st;
}

TEST(BlockPool, VariableShapesStopAllocatingAfterWarmUp) {
  FakeDevice dev;
  BlockPool pool(dev.hooks());
  const StepStats st = run_variable_shapes(pool, dev, 400);
  std::cout << "400 steps: " << dev.allocs << " driver allocations (" << st.allocs_late
            << " in steps 200-399), reserve " << st.reserved / MiB << " MiB, largest step "
            << st.peak_live / MiB << " MiB live\n";
  EXPECT_EQ(st.allocs_late, 0) << "driver allocations in steps 200-399";
  EXPECT_LE(st.reserved, 4 * st.peak_live) << "reserve vs the largest step's live bytes";
  EXPECT_EQ(pool.stats().flushes, 0);
}

// A step that repeats exactly (fixed shapes: bench train, the GPU test AllocatorReusesBlocks)
// stops allocating from the driver after at most two runs, whatever the order of allocations and
// frees inside it: 1000 random step programs (sizes from 100 B to 64 MiB, random lifetimes), each
// run 6 times. Two, not one: in the second run a request may take a larger cached block (best
// fit, within 2x) that a later request of the same run then misses; about 3% of these programs
// allocate again in their second run, none after it. (Exact-size reuse settles after one run but
// costs memory and allocations with varying shapes, see above.)
TEST(BlockPool, RepeatedStepsStopAllocatingAfterTwoRuns) {
  std::mt19937 rng(99);
  int second_run_allocated = 0;
  for (int program = 0; program < 1000; ++program) {
    std::uniform_int_distribution<int> n_ops(5, 60);
    std::uniform_real_distribution<double> log_size(std::log(100.0), std::log(64.0 * MiB));
    struct Op {
      bool alloc;
      size_t bytes;
      int slot;
    };
    std::vector<Op> ops;
    int slots = 0;
    std::vector<int> live;
    for (int i = 0, n = n_ops(rng); i < n; ++i) {
      if (!live.empty() && rng() % 3 == 0) {  // free a random live tensor
        const size_t k = rng() % live.size();
        ops.push_back({false, 0, live[k]});
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
      } else {
        ops.push_back({true, static_cast<size_t>(std::exp(log_size(rng))), slots});
        live.push_back(slots++);
      }
    }
    for (int slot : live) ops.push_back({false, 0, slot});  // the step ends: everything freed

    FakeDevice dev;
    BlockPool pool(dev.hooks());
    int64_t after_first = 0, after_second = 0;
    for (int run = 0; run < 6; ++run) {
      std::vector<BlockPool::Block> held(static_cast<size_t>(slots));
      for (const Op& op : ops) {
        if (op.alloc)
          held[static_cast<size_t>(op.slot)] = pool.acquire(op.bytes);
        else
          pool.release(held[static_cast<size_t>(op.slot)]);
      }
      if (run == 0) after_first = dev.allocs;
      if (run == 1) after_second = dev.allocs;
    }
    second_run_allocated += after_second > after_first;
    ASSERT_EQ(dev.allocs, after_second) << "program " << program << " (" << ops.size()
                                        << " operations) allocated again after its second run";
    ASSERT_EQ(pool.stats().bytes_in_use, 0u);
  }
  std::cout << second_run_allocated << " of 1000 step programs allocated in their second run\n";
  EXPECT_LT(second_run_allocated, 100);
}

// Out of memory with blocks cached: the pool synchronizes, returns them, and retries once.
TEST(BlockPool, OutOfMemoryFlushesTheCacheAndRetries) {
  FakeDevice dev;
  dev.budget = 64 * MiB;
  BlockPool pool(dev.hooks());
  std::vector<BlockPool::Block> held;
  for (int i = 0; i < 6; ++i) held.push_back(pool.acquire(8 * MiB));  // 48 MiB
  for (auto& b : held) pool.release(b);
  held.clear();
  // 40 MiB: every cached block is too small, and the driver has 16 MiB left: flush (48 MiB
  // back), then it fits.
  const BlockPool::Block big = pool.acquire(40 * MiB);
  EXPECT_EQ(big.size, 40 * MiB);
  EXPECT_EQ(dev.syncs, 1);
  EXPECT_EQ(dev.frees, 6);
  AllocatorStats s = pool.stats();
  EXPECT_EQ(s.flushes, 1);
  EXPECT_EQ(s.bytes_reserved, 40 * MiB);
  EXPECT_EQ(s.bytes_in_use, 40 * MiB);

  // Nothing cached and still too big: an error naming the sizes, and the pool still works.
  try {
    pool.acquire(30 * MiB);
    ADD_FAILURE() << "no error for 30 MiB with 24 MiB free";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("out of device memory: 30 MiB requested"), std::string::npos) << msg;
    EXPECT_NE(msg.find("40 MiB in use"), std::string::npos) << msg;
  }
  pool.release(big);
  const BlockPool::Block again = pool.acquire(30 * MiB);  // 40 MiB cached: within 2x
  EXPECT_EQ(again.size, 40 * MiB);
  pool.release(again);
}

TEST(BlockPool, EmptyCacheAndDestructorReturnEverything) {
  FakeDevice dev;
  {
    BlockPool pool(dev.hooks());
    BlockPool::Block a = pool.acquire(3 * MiB), b = pool.acquire(100);
    pool.release(a);
    pool.empty_cache();
    EXPECT_EQ(dev.frees, 1);
    EXPECT_EQ(pool.stats().bytes_reserved, 512u);
    pool.release(b);
  }
  EXPECT_EQ(dev.frees, 2);
  EXPECT_TRUE(dev.blocks.empty());
}

}  // namespace
}  // namespace mh
