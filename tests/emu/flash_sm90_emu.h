// A host emulation of the Hopper primitives of flash_sm90_common.cuh, so that the sm_90a
// attention forward (flash_fwd_sm90_kernel.cuh) runs on the CPU under test
// (test_flash_sm90_emu.cpp). Builds on flash_emu.h (one std::thread per CUDA thread, warp
// barriers, shfl). Written from the PTX ISA text, not from the kernel:
//   wgmma.mma_async ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate Operation"): the
//     128 threads of a warpgroup issue together; the operation is queued and only runs at
//     wgmma.wait_group, so a kernel that reads its accumulators early reads stale values here
//     too. Operands come from shared memory through the matrix descriptor ("Matrix Descriptor
//     Format": start address, leading/stride byte offsets, base offset, swizzle mode) in the
//     canonical layouts ("Shared Memory Matrix Layout": K-major and MN-major, 128B swizzle), or A
//     from registers ("Register Fragments": the m16n8k16 A layout per warp); the accumulator is
//     the "Matrix D" fragment: d[i] of thread t is (row 16·(t/32) + (t%32)/4 + 8·((i/2)%2),
//     col 8·(i/4) + 2·(t%4) + i%2).
//   The 128B swizzle ("Shared Memory Matrix Layout", and the tensor-map swizzle of TMA): the
//     16-byte chunk bits 4-6 of a shared-memory address are XORed with its bits 7-9.
//   mbarrier ("mbarrier" and "Phase completion"): a phase completes when its pending arrival
//     count and its transaction count both reach zero; try_wait.parity P succeeds once the phase
//     of parity P has completed (so at once on a fresh barrier for P = 1).
//   cp.async.bulk.tensor, tiled ("Tensor copy", "Bounding box", "Out of bound access"): box
//     elements in dimension order (dim 0 fastest), out-of-bound elements written as zero and
//     counted in the transaction bytes, 128B swizzle applied to the destination addresses.
//   cp.reduce.async.bulk (.global.shared::cta.bulk_group.add.f32) with commit_group and
//     wait_group(.read): queued at issue, executed at the wait that covers its group.
//   bar.sync / bar.arrive (named barriers): std::barrier, arrive without waiting for bar.arrive.
//   wgmma.fence: required (conservatively) before the first wgmma after each wait.
//   fence.proxy.async ("Memory consistency: proxies"): this thread's generic-proxy stores
//     (smem_zero16) reach the async proxy (wgmma, TMA) only at the fence; without it they stay
//     invisible here.
// Only what the kernel uses is modeled (16-bit types, m64nNk16 with N = 64 or 128, the 128B
// swizzle with 128-byte box rows, 4-D boxes); anything else fails loudly.
#pragma once

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "flash_emu.h"

namespace mh::cuda::flash {

using TmaMap = TmaSpec;

namespace emu {

[[noreturn]] inline void sm90_fail(const char* what) {
  std::fprintf(stderr, "flash_sm90_emu: %s\n", what);
  std::abort();
}
#define MH_SM90_EMU_CHECK(cond, what)                     \
  do {                                                    \
    if (!(cond)) ::mh::cuda::flash::emu::sm90_fail(what); \
  } while (0)

struct Mbar {
  int expected = 0, pending = 0;
  int64_t tx = 0;
  int phase = 0;  // parity of the current (incomplete) phase
};

struct WgmmaOp {
  bool a_in_regs = false;
  uint32_t a[128][4];  // every thread's A registers, as issued
  uint64_t a_desc = 0, b_desc = 0;
  int n = 0, trans_b = 0, scale_d = 0;
  bool bf16 = false;
  float* d = nullptr;
};

// Per-block state (created on first use).
struct Sm90Block {
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint32_t, Mbar> mbars;                                        // by shared-memory address
  std::map<int, std::pair<int, std::unique_ptr<std::barrier<>>>> named;  // id -> (count, barrier)
  std::unique_ptr<std::barrier<>> wg_bar[8];
  uint32_t wg_a[8][128][4];
  uint64_t wg_desc[8][128][2];
  Sm90Block() {
    for (auto& b : wg_bar) b = std::make_unique<std::barrier<>>(128);
  }
};

// Races between warpgroups: with delayed_warpgroup = w, the threads of warpgroup w sleep
// delay_ms before each fence.proxy.async (so their shared-memory stores land late) and each
// wgmma.wait_group (so their MMAs read shared memory late). A barrier a kernel lacks then shows as
// wrong results instead of passing by the luck of the host's scheduler; the delay must outlast
// what the other warpgroup emulates meanwhile (milliseconds here). -1: no delay.
inline std::atomic<int> delayed_warpgroup{-1};
inline std::atomic<int> delay_ms{50};
inline void maybe_delay() {
  if (self.tid / 128 == delayed_warpgroup.load())
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load()));
}

inline Sm90Block& sm90_block() {
  Block& b = *self.block;
  std::lock_guard<std::mutex> lock(b.ext_mu);
  if (!b.ext) b.ext = std::make_shared<Sm90Block>();
  return *static_cast<Sm90Block*>(b.ext.get());
}

// A cp.reduce.async.bulk (.add.f32, shared -> global) not yet waited for.
struct BulkReduce {
  float* dst = nullptr;
  uint32_t src = 0, bytes = 0;  // shared-memory address and size
};

// Per-thread state: wgmma operations not yet waited for, generic stores not yet fenced, bulk
// reductions not yet waited for.
struct Sm90Thread {
  std::vector<std::unique_ptr<WgmmaOp>> open;
  std::vector<std::vector<std::unique_ptr<WgmmaOp>>> groups;
  // Generic-proxy 16-bit stores (smem_zero16, stmatrix) not yet fenced: (address, value).
  std::vector<std::pair<uint32_t, uint16_t>> unfenced;
  // wgmma.fence since the thread last waited (or started): registers written in between may be
  // wgmma operands, which needs the fence ("wgmma.fence": before the first wgmma.mma_async and
  // between register accesses and a wgmma.mma_async reading them). Conservative: every batch of
  // wgmma after a wait needs one.
  bool wgmma_fenced = false;
  std::vector<BulkReduce> bulk_open;                 // issued since the last commit_group
  std::vector<std::vector<BulkReduce>> bulk_groups;  // committed, oldest first
  // A thread must not exit with bulk reductions in flight: they read shared memory that the next
  // block on the SM may own, and their writes would be lost here.
  ~Sm90Thread() {
    if (!bulk_open.empty() || !bulk_groups.empty())
      std::fprintf(stderr, "flash_sm90_emu: a thread exited with bulk reductions pending\n"),
          std::abort();
  }
};
inline thread_local Sm90Thread sm90_self;

inline unsigned char* smem_at(uint32_t addr, size_t bytes) {
  MH_SM90_EMU_CHECK(addr + bytes <= self.block->smem_bytes, "shared-memory access out of range");
  return self.block->smem.get() + addr;
}

// The 128B swizzle: bits 4-6 of the address ^= bits 7-9.
inline uint32_t swizzle128(uint32_t addr) {
  return addr ^ (((addr >> 7) & 7u) << 4);
}

// Address of element (mn, k) (k < 16: one k16 step) of a descriptor operand; mn_major: the
// transposed (MN-major) canonical layout. Canonical layouts for the 128B swizzle, in 16-byte
// units T (PTX ISA "Shared Memory Matrix Layout"; T = 8 16-bit elements):
//   K-major:  ((8, m), (T, 2k)) : ((8T, SBO), (1, T))  - 8 rows of 128 bytes, row groups SBO apart
//   MN-major: ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO)) - 64 MN-contiguous elements per
//             128-byte row, 64-element blocks LBO apart, 8 k-rows of 128 bytes, groups SBO apart
inline uint32_t desc_addr(uint64_t desc, int mn, int k, bool mn_major) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3fff) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3fff) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3fff) << 4;
  const uint32_t base_offset = static_cast<uint32_t>((desc >> 49) & 7);
  const uint32_t mode = static_cast<uint32_t>(desc >> 62);
  MH_SM90_EMU_CHECK(mode == 1, "only the 128B swizzle mode (1) is modeled");
  // "Matrix base offset": the start's position within the 1024-byte pattern ((start >> 7) % 8).
  MH_SM90_EMU_CHECK(base_offset == ((start >> 7) & 7), "matrix base offset does not match start");
  uint32_t a;
  if (!mn_major)
    a = start + static_cast<uint32_t>(mn / 8) * sbo + static_cast<uint32_t>(mn % 8) * 128 +
        static_cast<uint32_t>(k) * 2;
  else
    a = start + static_cast<uint32_t>(mn / 64) * lbo + static_cast<uint32_t>(mn % 64) * 2 +
        static_cast<uint32_t>(k / 8) * sbo + static_cast<uint32_t>(k % 8) * 128;
  return swizzle128(a);
}

inline float desc_elem(uint64_t desc, int mn, int k, bool mn_major, bool bf16) {
  uint16_t bits;
  std::memcpy(&bits, smem_at(desc_addr(desc, mn, k, mn_major), 2), 2);
  return bits_to_float(bits, bf16);
}

// Runs one queued wgmma for the calling thread's accumulator elements.
inline void wgmma_execute(const WgmmaOp& op) {
  const int t = self.tid & 127, w = t / 32, g = (t % 32) / 4, q = t % 4;
  for (int i = 0; i < op.n / 2; ++i) {
    const int row = 16 * w + g + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * q + i % 2;
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) {
      float a;
      if (op.a_in_regs) {
        // A fragment (m16n8k16 A layout in warp row / 16): lane (r % 8)·4 + (k % 8) / 2,
        // register (r / 8) + 2·(k / 8), half k % 2, with r = row % 16.
        const int r = row % 16;
        const uint32_t reg = op.a[(row / 16) * 32 + (r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)];
        a = bits_to_float(static_cast<uint16_t>(k % 2 ? reg >> 16 : reg), op.bf16);
      } else {
        a = desc_elem(op.a_desc, row, k, false, op.bf16);  // A K-major (no transpose)
      }
      sum += a * desc_elem(op.b_desc, col, k, op.trans_b != 0, op.bf16);
    }
    op.d[i] = (op.scale_d ? op.d[i] : 0.f) + sum;
  }
}

inline void wgmma_issue(std::unique_ptr<WgmmaOp> op, const uint32_t* a_regs) {
  MH_SM90_EMU_CHECK(sm90_self.wgmma_fenced, "wgmma.mma_async without a wgmma.fence before it");
  Sm90Block& B = sm90_block();
  const int wg = self.tid / 128, t = self.tid % 128;
  MH_SM90_EMU_CHECK(wg < 8, "warpgroup index");
  if (a_regs)
    for (int i = 0; i < 4; ++i) B.wg_a[wg][t][i] = a_regs[i];
  B.wg_desc[wg][t][0] = op->a_desc;
  B.wg_desc[wg][t][1] = op->b_desc;
  B.wg_bar[wg]->arrive_and_wait();  // all 128 threads issue (.sync.aligned)
  if (a_regs) std::memcpy(op->a, B.wg_a[wg], sizeof(op->a));
  for (int u = 0; u < 128; ++u)
    MH_SM90_EMU_CHECK(B.wg_desc[wg][u][0] == op->a_desc && B.wg_desc[wg][u][1] == op->b_desc,
                      "the threads of a warpgroup issued different descriptors");
  B.wg_bar[wg]->arrive_and_wait();
  sm90_self.open.push_back(std::move(op));
}

}  // namespace emu

inline uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - emu::self.block->smem.get());
}

// --- mbarrier
// --------------------------------------------------------------------------------------
inline void mbar_init(uint64_t* bar, int count) {
  emu::Sm90Block& B = emu::sm90_block();
  std::lock_guard<std::mutex> lock(B.mu);
  emu::Mbar m;
  m.expected = m.pending = count;
  B.mbars[smem_addr(bar)] = m;
}
inline void mbar_fence_init() {}

namespace emu {
inline Mbar& mbar_of(Sm90Block& B, const uint64_t* bar) {
  auto it = B.mbars.find(smem_addr(bar));
  MH_SM90_EMU_CHECK(it != B.mbars.end(), "mbarrier used before mbarrier.init");
  return it->second;
}
// Caller holds B.mu.
inline void mbar_update(Sm90Block& B, Mbar& m, int arrivals, int64_t tx_delta) {
  m.tx += tx_delta;
  m.pending -= arrivals;
  MH_SM90_EMU_CHECK(m.pending >= 0, "more arrivals than the barrier's count in one phase");
  if (m.pending == 0 && m.tx == 0) {
    m.phase ^= 1;
    m.pending = m.expected;
  }
  B.cv.notify_all();
}
}  // namespace emu

inline void mbar_arrive(uint64_t* bar) {
  emu::Sm90Block& B = emu::sm90_block();
  std::lock_guard<std::mutex> lock(B.mu);
  emu::mbar_update(B, emu::mbar_of(B, bar), 1, 0);
}
inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  emu::Sm90Block& B = emu::sm90_block();
  std::lock_guard<std::mutex> lock(B.mu);
  emu::mbar_update(B, emu::mbar_of(B, bar), 1, bytes);
}
inline void mbar_wait(uint64_t* bar, int parity) {
  emu::Sm90Block& B = emu::sm90_block();
  std::unique_lock<std::mutex> lock(B.mu);
  emu::Mbar& m = emu::mbar_of(B, bar);
  B.cv.wait(lock, [&] { return m.phase != (parity & 1); });
}

// --- TMA -----------------------------------------------------------------------------------------
inline void tma_load_4d(void* dst, const TmaMap* map, int c0, int c1, int c2, int c3,
                        uint64_t* bar) {
  const TmaSpec& s = *map;
  MH_SM90_EMU_CHECK(s.rank == 4, "4-D tensor maps only");
  MH_SM90_EMU_CHECK(s.strides[0] == 2 && s.box[0] * 2 == 128,
                    "modeled: 16-bit elements, 128-byte box rows (the 128B swizzle span)");
  MH_SM90_EMU_CHECK(reinterpret_cast<uintptr_t>(s.base) % 16 == 0, "global address alignment");
  for (int i = 1; i < 4; ++i)
    MH_SM90_EMU_CHECK(s.strides[i] % 16 == 0 && s.box[i] >= 1 && s.box[i] <= 256,
                      "tensor map strides (multiples of 16) and box (1..256)");
  const uint32_t d0 = smem_addr(dst);
  MH_SM90_EMU_CHECK(d0 % 128 == 0, "TMA destination must be 128-byte aligned");
  const int c[4] = {c0, c1, c2, c3};
  uint32_t bytes = 0;
  for (uint32_t i3 = 0; i3 < s.box[3]; ++i3)
    for (uint32_t i2 = 0; i2 < s.box[2]; ++i2)
      for (uint32_t i1 = 0; i1 < s.box[1]; ++i1)
        for (uint32_t i0 = 0; i0 < s.box[0]; ++i0) {
          const int64_t x[4] = {int64_t{c[0]} + i0, int64_t{c[1]} + i1, int64_t{c[2]} + i2,
                                int64_t{c[3]} + i3};
          bool in = true;
          int64_t off = 0;
          for (int j = 0; j < 4; ++j) {
            in = in && x[j] >= 0 && x[j] < static_cast<int64_t>(s.dims[j]);
            off += x[j] * static_cast<int64_t>(s.strides[j]);
          }
          uint16_t v = 0;
          if (in) std::memcpy(&v, static_cast<const unsigned char*>(s.base) + off, 2);
          const uint32_t lin = (((i3 * s.box[2] + i2) * s.box[1] + i1) * s.box[0] + i0) * 2;
          std::memcpy(emu::smem_at(emu::swizzle128(d0 + lin), 2), &v, 2);
          bytes += 2;
        }
  emu::Sm90Block& B = emu::sm90_block();
  std::lock_guard<std::mutex> lock(B.mu);
  emu::mbar_update(B, emu::mbar_of(B, bar), 0, -static_cast<int64_t>(bytes));
}

// --- generic -> async proxy
// -------------------------------------------------------------------------
// The only readers of what these stores write are wgmma and TMA (the async proxy), so a store
// lands in the emulated shared memory at this thread's next fence.proxy.async, not before: a
// kernel that forgets the fence feeds wgmma stale data here too.
inline void smem_zero16(void* p) {
  const uint32_t a = smem_addr(p);
  MH_SM90_EMU_CHECK(a % 16 == 0, "st.shared.v4 needs a 16-byte aligned address");
  for (uint32_t i = 0; i < 8; ++i) emu::sm90_self.unfenced.push_back({a + 2 * i, 0});
}
// stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 ("stmatrix"): lane 8m + x gives the address of
// row x of stored matrix m, which is column x of the fragment: element r of that row is
// (row r, col x) of matrix m, held by lane 4r + x / 2 in register m, half x % 2.
inline void stmatrix_x4_trans(const uint32_t (&r)[4], void* p) {
  emu::WarpScratch& ws = emu::scratch();
  const int l = emu::lane();
  ws.addr[l] = p;
  for (int i = 0; i < 4; ++i) ws.a[l][i] = r[i];
  emu::warp_sync();
  if (l == 0)
    for (int m = 0; m < 4; ++m)
      for (int x = 0; x < 8; ++x) {
        const uint32_t row = smem_addr(ws.addr[8 * m + x]);
        MH_SM90_EMU_CHECK(row % 16 == 0, "stmatrix row addresses must be 16-byte aligned");
        for (int e = 0; e < 8; ++e) {
          const uint32_t reg = ws.a[4 * e + x / 2][m];
          emu::sm90_self.unfenced.push_back(
              {row + 2 * e, static_cast<uint16_t>(x % 2 ? reg >> 16 : reg)});
        }
      }
  emu::warp_sync();  // lane 0 holds the warp's stores: they land at its fence
}
inline void fence_proxy_async() {
  emu::maybe_delay();
  for (const auto& [a, v] : emu::sm90_self.unfenced) std::memcpy(emu::smem_at(a, 2), &v, 2);
  emu::sm90_self.unfenced.clear();
}
// st.shared.v2.f32: a generic-proxy store like smem_zero16's, read only by the async proxy
// (cp.reduce.async.bulk), so it lands at the fence.
inline void smem_store_f32x2(void* p, float a, float b) {
  const uint32_t at = smem_addr(p);
  MH_SM90_EMU_CHECK(at % 8 == 0, "st.shared.v2.f32 needs an 8-byte aligned address");
  uint16_t h[4];
  std::memcpy(h, &a, 4);
  std::memcpy(h + 2, &b, 4);
  for (uint32_t i = 0; i < 4; ++i) emu::sm90_self.unfenced.push_back({at + 2 * i, h[i]});
}

// --- bulk reduction ("cp.reduce.async.bulk", bulk_group completion): queued at issue, read from
// shared memory and added at the wait that covers its group, the latest moment the hardware may
// read, so that a source overwritten before the wait shows here too.
inline void bulk_reduce_add_f32(float* dst, const void* src, uint32_t bytes) {
  const uint32_t at = smem_addr(src);
  MH_SM90_EMU_CHECK(at % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0 && bytes % 16 == 0,
                    "cp.reduce.async.bulk: 16-byte aligned addresses, a multiple of 16 bytes");
  emu::smem_at(at, bytes);  // range check
  emu::sm90_self.bulk_open.push_back({dst, at, bytes});
}
inline void bulk_commit() {
  emu::sm90_self.bulk_groups.push_back(std::move(emu::sm90_self.bulk_open));
  emu::sm90_self.bulk_open.clear();
}
namespace emu {
inline void bulk_complete_all_but(size_t n) {
  maybe_delay();
  auto& gs = sm90_self.bulk_groups;
  while (gs.size() > n) {
    for (const BulkReduce& r : gs.front()) {
      const unsigned char* src = smem_at(r.src, r.bytes);
      for (uint32_t i = 0; i < r.bytes / 4; ++i) {
        float v;
        std::memcpy(&v, src + 4 * i, 4);
        std::atomic_ref<float>(r.dst[i]).fetch_add(v);
      }
    }
    gs.erase(gs.begin());
  }
}
}  // namespace emu
// Reading done and writing done are one moment here.
template <int N>
inline void bulk_wait_read() {
  emu::bulk_complete_all_but(N);
}
template <int N>
inline void bulk_wait() {
  emu::bulk_complete_all_but(N);
}

template <int N>
inline void setmaxnreg_inc() {}
template <int N>
inline void setmaxnreg_dec() {}
namespace emu {
// Barrier `id` of this block, made on first use with `count` threads.
inline std::barrier<>& named_barrier(int id, int count) {
  Sm90Block& B = sm90_block();
  std::lock_guard<std::mutex> lock(B.mu);
  auto& e = B.named[id];
  if (!e.second) e = {count, std::make_unique<std::barrier<>>(count)};
  MH_SM90_EMU_CHECK(e.first == count, "named barrier used with different thread counts");
  return *e.second;
}
}  // namespace emu
inline void named_bar_sync(int id, int count) {
  emu::named_barrier(id, count).arrive_and_wait();
}
// bar.arrive: counts toward the phase, does not wait for it.
inline void named_bar_arrive(int id, int count) {
  [[maybe_unused]] auto token = emu::named_barrier(id, count).arrive();
}

// --- wgmma ---------------------------------------------------------------------------------------
inline void wgmma_fence() {
  emu::sm90_self.wgmma_fenced = true;
}
inline void wgmma_commit() {
  emu::sm90_self.groups.push_back(std::move(emu::sm90_self.open));
  emu::sm90_self.open.clear();
}
template <int N>
inline void wgmma_wait() {
  emu::maybe_delay();
  MH_SM90_EMU_CHECK(emu::sm90_self.open.empty(), "wgmma.wait_group with uncommitted wgmma");
  emu::sm90_self.wgmma_fenced = false;
  auto& gs = emu::sm90_self.groups;
  while (gs.size() > static_cast<size_t>(N)) {
    for (const auto& op : gs.front()) emu::wgmma_execute(*op);
    gs.erase(gs.begin());
  }
}
template <int R>
inline void fence_regs(float (&)[R]) {}

// The fields both wgmma forms share: B's descriptor, shape, transpose, scale-d, type, D.
template <typename T, int N, int TB>
inline std::unique_ptr<emu::WgmmaOp> wgmma_op(float (&d)[N / 2], uint64_t b_desc, int scale_d) {
  auto op = std::make_unique<emu::WgmmaOp>();
  op->b_desc = b_desc;
  op->n = N;
  op->trans_b = TB;
  op->scale_d = scale_d;
  op->bf16 = std::is_same_v<T, __nv_bfloat16>;
  op->d = d;
  return op;
}
template <typename T, int N, int TB>
inline void wgmma_ss(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc, int scale_d) {
  auto op = wgmma_op<T, N, TB>(d, b_desc, scale_d);
  op->a_desc = a_desc;
  emu::wgmma_issue(std::move(op), nullptr);
}
template <typename T, int N, int TB>
inline void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b_desc, int scale_d) {
  auto op = wgmma_op<T, N, TB>(d, b_desc, scale_d);
  op->a_in_regs = true;
  emu::wgmma_issue(std::move(op), a);
}

}  // namespace mh::cuda::flash
