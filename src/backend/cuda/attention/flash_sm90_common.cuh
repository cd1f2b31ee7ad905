// Device helpers of the Hopper (sm_90a) attention kernels (flash_fwd_sm90.cu, flash_bwd_sm90.cu):
// wgmma (the warpgroup's asynchronous tensor-core MMA, operands from shared memory through matrix
// descriptors, or A from registers), mbarriers with transaction counts, the bulk tensor copy
// (TMA: cp.async.bulk.tensor, tiled, 128-byte swizzle), the bulk reduction of shared memory into
// global (cp.reduce.async.bulk), named barriers, the async-proxy fence, stmatrix and setmaxnreg.
//
// Layouts used (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Operation",
// sections "Register Fragments and Shared Memory Matrix Layouts" and "Matrix Descriptor Format"):
//   D (m64nN, f32), thread t of the warpgroup, warp w = t / 32, g = lane / 4, q = lane % 4:
//     d[i] is (row 16w + g + 8·((i / 2) % 2), col 8·(i / 4) + 2q + i % 2): the m16n8 C layout of
//     mma.sync, one per warp, repeated over N / 8 column tiles.
//   A from registers (m64k16, 4 × 2 halves): a0 = (16w + g, 2q..2q+1), a1 = (16w + g + 8, same),
//     a2 = (16w + g, 2q+8..2q+9), a3 = (16w + g + 8, 2q+8..2q+9): the mma.m16n8k16 A layout per
//     warp, so an accumulator converts to an A operand in registers (acc_to_a in flash_common.cuh).
//   Shared memory tiles here are all "128B swizzle" tiles as TMA writes them with
//   CU_TENSOR_MAP_SWIZZLE_128B: rows of 64 16-bit elements (128 bytes), 8-row atoms of 1024 bytes
//   (1024-byte aligned), the 16-byte chunk c of row r stored at chunk c ^ (r % 8). A [rows][D]
//   tile is D / 64 such column blocks, each [rows][64].
//   Descriptor (64 bits): start address >> 4 (bits 0-13), leading byte offset >> 4 (16-29),
//   stride byte offset >> 4 (32-45), base offset (49-51, 0: every start here has address bits
//   7-9 zero), swizzle mode (62-63, 1 = 128B).
//     K-major operand (Q as A, K as B of S = Q Kᵀ): element (mn, k) of one k16 step at
//       start + (mn / 8)·SBO + (mn % 8)·128 + 2k, SBO = 1024; LBO unused with swizzling; the
//       k16 steps within a 64-column block advance the start by 32 bytes.
//     MN-major operand (V as B of O += P V, the transpose bit set): element (k, n) at
//       start + (n / 64)·LBO + 2·(n % 64) + (k / 8)·SBO + (k % 8)·128, LBO = the column-block
//       stride, SBO = 1024; a k16 step advances the start by 16 rows (2048 bytes).
//   and the swizzle is applied to the address: bits 4-6 ^= bits 7-9.
//
// Everything compiles as host C++ with MH_FLASH_EMU too (tests/emu/flash_sm90_emu.h supplies the
// primitives): test_flash_sm90_emu runs the kernel source on the CPU.
#pragma once

#include <cstdint>
#include <type_traits>

#include "backend/cuda/attention/flash_common.cuh"

#if !defined(MH_FLASH_EMU)
#include <cuda.h>  // CUtensorMap (the type only: the launcher gets the encoder from the runtime)
#endif

// The sm_90a device pass: wgmma and setmaxnreg exist only there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MH_SM90A_DEVICE 1
#endif

namespace mh::cuda::flash {

// A tiled TMA load as cuTensorMapEncodeTiled takes it (host code, shared by the launcher and the
// emulation): 16-bit elements, `rank` dimensions, dim 0 contiguous, strides in bytes of
// dimensions 1..rank-1, a box of `box` elements, 128-byte swizzle, zero fill out of bounds.
struct TmaSpec {
  const void* base = nullptr;
  int rank = 0;
  uint64_t dims[5] = {};
  uint64_t strides[5] = {};  // bytes; strides[0] (the element) is 2
  uint32_t box[5] = {};
};

// The tensor map of a [rows, heads, D] token tensor (attention_problem.h's layout) as 4-D
// (64, D / 64, heads, rows), so that one box is a [box_rows][64] column block of one head: the
// 128-byte swizzle span is the box's inner extent (64 · 2 bytes).
inline TmaSpec token_tma_spec(const void* base, int64_t rows, int heads, int d, int box_rows) {
  TmaSpec s;
  s.base = base;
  s.rank = 4;
  s.dims[0] = 64;
  s.dims[1] = static_cast<uint64_t>(d / 64);
  s.dims[2] = static_cast<uint64_t>(heads);
  s.dims[3] = static_cast<uint64_t>(rows);
  s.strides[0] = 2;
  s.strides[1] = 128;
  s.strides[2] = static_cast<uint64_t>(d) * 2;
  s.strides[3] = static_cast<uint64_t>(heads) * d * 2;
  s.box[0] = 64;
  s.box[1] = 1;
  s.box[2] = 1;
  s.box[3] = static_cast<uint32_t>(box_rows);
  return s;
}

// Shared-memory matrix descriptor of a 128B-swizzled operand (see the top of this file).
MH_FLASH_FN uint64_t smem_desc_sw128(uint32_t smem_byte_addr, uint32_t lbo_bytes,
                                     uint32_t sbo_bytes) {
  return static_cast<uint64_t>((smem_byte_addr >> 4) & 0x3fff) |
         (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fff) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3fff) << 32) | (uint64_t{1} << 62);
}
// The same descriptor for an operand `bytes` (a multiple of 16) further on: one 32-bit add to the
// start address field, where smem_desc_sw128 of the new address costs a shift, a mask and ORs
// per wgmma (a sixth of the backward's instructions per step were such descriptor arithmetic).
// Shared-memory addresses are below 2^18, so the field (address >> 4, 14 bits) never carries
// into the leading byte offset: the result equals smem_desc_sw128(address + bytes, ...).
MH_FLASH_FN uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = static_cast<uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xffffffff00000000ull) | lo;
}

}  // namespace mh::cuda::flash

#if defined(MH_FLASH_EMU)
#include "flash_sm90_emu.h"  // tests/emu/: host definitions of the primitives below
#define MH_GRID_CONSTANT
#else
#define MH_GRID_CONSTANT __grid_constant__

namespace mh::cuda::flash {

using TmaMap = CUtensorMap;

// --- mbarrier (PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier") ----
__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count)
               : "memory");
}
// Makes the initialized barriers visible to the other threads and to the async proxy (TMA).
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Arrives and raises the barrier's pending transaction count by `bytes` (what TMA will deliver).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, int parity) {
  uint32_t done = 0;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(smem_addr(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits until the phase of parity `parity` has completed (a fresh barrier is in phase 0, so
// waiting for parity 1 returns at once). No deadlock watchdog: a timer loop here (trap after
// 10 s) cost the backward its register allocation, 384-912 bytes of spills and serialized
// wgmma, inlined or not (out of line, ptxas could not allocate at all under setmaxnreg).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, int parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// --- bulk tensor copy (PTX ISA "cp.async.bulk.tensor") ------------------------------------------
// Box at coordinates (c0..c3) of `map` into shared memory at `dst` (1024-byte aligned for the
// 128-byte swizzle); completes `box bytes` of transactions on `bar`. Out-of-bounds elements are
// zero and still count.
__device__ __forceinline__ void tma_load_4d(void* dst, const TmaMap* map, int c0, int c1, int c2,
                                            int c3, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_addr(bar))
      : "memory");
}

// --- generic -> async proxy
// ----------------------------------------------------------------------- 16 zero bytes stored to
// shared memory by this thread (generic proxy).
__device__ __forceinline__ void smem_zero16(void* p) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(smem_addr(p)), "r"(0) : "memory");
}
// Orders this thread's earlier generic-proxy shared-memory writes before later async-proxy
// accesses (wgmma operand reads, TMA) once a barrier has passed.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Barrier `id` (1..15; 0 is __syncthreads) among `count` threads (a multiple of 32).
__device__ __forceinline__ void named_bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// Arrives at barrier `id` without waiting (the producer side of a producer/consumer pair whose
// other side waits with named_bar_sync; `count` is the same total).
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// Two floats stored to shared memory (generic proxy; a bulk copy reads them after
// fence_proxy_async and a barrier).
__device__ __forceinline__ void smem_store_f32x2(void* p, float a, float b) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(smem_addr(p)), "f"(a), "f"(b) : "memory");
}

// --- bulk reduction to global memory, sm_90 (PTX ISA "cp.reduce.async.bulk",
// "cp.async.bulk.commit_group", "cp.async.bulk.wait_group") ------------------------------------
// dst[i] += src[i] for `bytes` / 4 floats (the add is atomic per element), src in shared memory;
// both addresses 16-byte aligned, bytes a multiple of 16. Completion per thread, in bulk groups.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, const void* src, uint32_t bytes) {
  asm volatile(
      "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
      "r"(smem_addr(src)), "r"(bytes)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Until at most N of this thread's bulk groups are still reading their shared-memory source.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Until at most N of this thread's bulk groups are incomplete (their writes done).
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// --- stmatrix (PTX ISA "stmatrix"), sm_90 -------------------------------------------------------
// Four 8×8 16-bit matrices from the warp's registers to shared memory, transposed: r[m] of lane l
// holds (row l / 4, cols 2·(l % 4), +1) of matrix m (the mma C layout, packed to 16 bits), and
// lane 8m + x gives the 16-byte address where column x of matrix m is stored (as a row). So a
// keys × queries accumulator lands in shared memory as queries × keys.
__device__ __forceinline__ void stmatrix_x4_trans(const uint32_t (&r)[4], void* p) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                   smem_addr(p)),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// --- setmaxnreg (PTX ISA "setmaxnreg"), sm_90a: moves registers between the warpgroups of a block
// (the producer gives up what the consumers take). Every warp of a warpgroup executes it.
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#if defined(MH_SM90A_DEVICE)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#if defined(MH_SM90A_DEVICE)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// --- wgmma (PTX ISA "wgmma.mma_async", "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group") -
__device__ __forceinline__ void wgmma_fence() {
#if defined(MH_SM90A_DEVICE)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(MH_SM90A_DEVICE)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(MH_SM90A_DEVICE)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving accesses of `d` across the asynchronous MMA (its reads and
// writes of the accumulators are invisible to the compiler between issue and wait).
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#if defined(MH_SM90A_DEVICE)
// d (64 × N, f32) = A·B + (scale_d ? d : 0); TB = 1: B is MN-major (transposed). One wrapper per
// (A from shared memory "ss" or registers "rs", N, element type): the element type only changes
// the instruction's name, so each shape is written once below and instantiated for bf16 and f16.
// The accumulator operands and their placeholders, 32 (N = 64) or 64 (N = 128) floats:
#define MH_WGMMA_D32                                                                              \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define MH_WGMMA_D64                                                                             \
  MH_WGMMA_D32, "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),    \
      "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), \
      "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), \
      "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), \
      "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define MH_WGMMA_R32                                       \
  "{"                                                      \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15," \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define MH_WGMMA_R64                                                 \
  "{"                                                                \
  "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"           \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31," \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47," \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define MH_WGMMA_SS_N64(NAME, TY)                                                       \
  template <int TB>                                                                     \
  __device__ __forceinline__ void NAME(float(&d)[32], uint64_t a_desc, uint64_t b_desc, \
                                       int scale_d) {                                   \
    asm volatile(                                                                       \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                    \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " MH_WGMMA_R32        \
        "}, %32, %33, p, 1, 1, 0, %35;\n}\n"                                            \
        : MH_WGMMA_D32                                                                  \
        : "l"(a_desc), "l"(b_desc), "r"(scale_d), "n"(TB));                             \
  }
#define MH_WGMMA_RS_N64(NAME, TY)                                                             \
  template <int TB>                                                                           \
  __device__ __forceinline__ void NAME(float(&d)[32], const uint32_t(&a)[4], uint64_t b_desc, \
                                       int scale_d) {                                         \
    asm volatile(                                                                             \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                          \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " " MH_WGMMA_R32              \
        "}, {%32,%33,%34,%35}, %36, p, 1, 1, %38;\n}\n"                                       \
        : MH_WGMMA_D32                                                                        \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d), "n"(TB));    \
  }
#define MH_WGMMA_SS_N128(NAME, TY)                                                      \
  template <int TB>                                                                     \
  __device__ __forceinline__ void NAME(float(&d)[64], uint64_t a_desc, uint64_t b_desc, \
                                       int scale_d) {                                   \
    asm volatile(                                                                       \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                    \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " MH_WGMMA_R64       \
        "}, %64, %65, p, 1, 1, 0, %67;\n}\n"                                            \
        : MH_WGMMA_D64                                                                  \
        : "l"(a_desc), "l"(b_desc), "r"(scale_d), "n"(TB));                             \
  }
#define MH_WGMMA_RS_N128(NAME, TY)                                                            \
  template <int TB>                                                                           \
  __device__ __forceinline__ void NAME(float(&d)[64], const uint32_t(&a)[4], uint64_t b_desc, \
                                       int scale_d) {                                         \
    asm volatile(                                                                             \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                          \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " " MH_WGMMA_R64             \
        "}, {%64,%65,%66,%67}, %68, p, 1, 1, %70;\n}\n"                                       \
        : MH_WGMMA_D64                                                                        \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(scale_d), "n"(TB));    \
  }
// clang-format off
MH_WGMMA_SS_N64(wgmma_ss_bf16_n64, "bf16")
MH_WGMMA_SS_N64(wgmma_ss_f16_n64, "f16")
MH_WGMMA_RS_N64(wgmma_rs_bf16_n64, "bf16")
MH_WGMMA_RS_N64(wgmma_rs_f16_n64, "f16")
MH_WGMMA_SS_N128(wgmma_ss_bf16_n128, "bf16")
MH_WGMMA_SS_N128(wgmma_ss_f16_n128, "f16")
MH_WGMMA_RS_N128(wgmma_rs_bf16_n128, "bf16")
MH_WGMMA_RS_N128(wgmma_rs_f16_n128, "f16")
// clang-format on
#undef MH_WGMMA_SS_N64
#undef MH_WGMMA_RS_N64
#undef MH_WGMMA_SS_N128
#undef MH_WGMMA_RS_N128
#undef MH_WGMMA_R32
#undef MH_WGMMA_R64
#undef MH_WGMMA_D32
#undef MH_WGMMA_D64
#endif  // MH_SM90A_DEVICE

// d (64 × N per warpgroup, f32) = A·B + (scale_d ? d : 0), A and B from shared memory (K-major A;
// B K-major for TB = 0, MN-major for TB = 1).
template <typename T, int N, int TB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc,
                                         int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated for N = 64 and 128");
#if defined(MH_SM90A_DEVICE)
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64 && kBf16) wgmma_ss_bf16_n64<TB>(d, a_desc, b_desc, scale_d);
  if constexpr (N == 64 && !kBf16) wgmma_ss_f16_n64<TB>(d, a_desc, b_desc, scale_d);
  if constexpr (N == 128 && kBf16) wgmma_ss_bf16_n128<TB>(d, a_desc, b_desc, scale_d);
  if constexpr (N == 128 && !kBf16) wgmma_ss_f16_n128<TB>(d, a_desc, b_desc, scale_d);
#else
  __trap();
#endif
}
// The same with A from registers (the layout at the top of this file).
template <typename T, int N, int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b_desc,
                                         int scale_d) {
  static_assert(N == 64 || N == 128, "instantiated for N = 64 and 128");
#if defined(MH_SM90A_DEVICE)
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64 && kBf16) wgmma_rs_bf16_n64<TB>(d, a, b_desc, scale_d);
  if constexpr (N == 64 && !kBf16) wgmma_rs_f16_n64<TB>(d, a, b_desc, scale_d);
  if constexpr (N == 128 && kBf16) wgmma_rs_bf16_n128<TB>(d, a, b_desc, scale_d);
  if constexpr (N == 128 && !kBf16) wgmma_rs_f16_n128<TB>(d, a, b_desc, scale_d);
#else
  __trap();
#endif
}

}  // namespace mh::cuda::flash
#endif  // !MH_FLASH_EMU
