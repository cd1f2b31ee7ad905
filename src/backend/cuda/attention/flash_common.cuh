// Device helpers shared by the custom attention kernels (flash_fwd.cu, flash_bwd.cu): the sm_80
// tensor-core instruction (mma.sync m16n8k16, fp32 accumulators), ldmatrix, cp.async, the
// swizzled shared-memory tile layout, and the dropout bits.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   A (16×16, 4 regs of 2 elements): a0 = (row g, cols 2t, 2t+1), a1 = (row g+8, same cols),
//     a2 = (row g, cols 2t+8, 2t+9), a3 = (row g+8, cols 2t+8, 2t+9)
//   B (16×8, 2 regs): b0 = (rows 2t, 2t+1, col g), b1 = (rows 2t+8, 2t+9, col g)
//   C (16×8, 4 floats): c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1)
// so an accumulator tile converts to an A operand in registers (C of n-tiles 2k and 2k+1 is A of
// k-step k): P never leaves the registers between its two GEMMs.
// ldmatrix.x4 loads four 8×8 matrices, lane l giving the row address of matrix l / 8, row l % 8;
// each lane receives (row g, cols 2t, 2t+1) of each matrix, or with .trans (rows 2t, 2t+1,
// col g): the B layout of a row-major [k][n] tile.
//
// The kernels (flash_fwd_kernel.cuh, flash_bwd_kernel.cuh) are written against this header only,
// so that they also compile as host C++ with MH_FLASH_EMU defined: tests/emu/flash_emu.h then
// supplies the same primitives for 128 host threads per block, and test_flash_emu runs the very
// kernel source on the CPU (indexing, masks, online softmax, dropout, barriers), without a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "backend/cuda/attention/attention_problem.h"
#include "core/philox.h"

#if defined(MH_FLASH_EMU)
#include "flash_emu.h"  // tests/emu/: host definitions of the primitives below
#define MH_FLASH_FN inline
#define MH_FLASH_KERNEL(...) inline void
#define MH_FLASH_SMEM(name) unsigned char* name = ::mh::cuda::flash::emu_block_smem()
#else
#define MH_FLASH_FN __device__ __forceinline__
// (threads[, min blocks per SM]): setmaxnreg needs both, or ptxas ignores it (C7508).
#define MH_FLASH_KERNEL(...) __global__ void __launch_bounds__(__VA_ARGS__)
#define MH_FLASH_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace mh::cuda::flash {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

MH_FLASH_FN int imin(int a, int b) {
  return a < b ? a : b;
}

// 2^x as one SFU instruction (ex2.approx.ftz: relative error ~2^-22, results below 2^-126 flushed
// to 0), FlashAttention's exp2f under --use_fast_math. Plain exp2f wraps the MUFU in a range
// fix-up for such tiny results (a compare, a halving and a squaring) that softmax probabilities
// do not need. The emulation rounds the same way but for the last bits.
MH_FLASH_FN float exp2_fast(float x) {
#if defined(MH_FLASH_EMU)
  const float r = std::exp2(x);
  return r < std::numeric_limits<float>::min() ? 0.f : r;
#else
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#endif
}

#if !defined(MH_FLASH_EMU)
__device__ __forceinline__ int thread_x() {
  return threadIdx.x;
}
__device__ __forceinline__ int block_x() {
  return blockIdx.x;
}
__device__ __forceinline__ int block_y() {
  return blockIdx.y;
}
__device__ __forceinline__ int block_z() {
  return blockIdx.z;
}
__device__ __forceinline__ void block_sync() {
  __syncthreads();
}
// threadIdx.x / 32, known to the compiler as the same in every lane (a shuffle from lane 0):
// values derived from it (a warpgroup's shared-memory offsets, wgmma descriptors) then live in
// uniform registers, instead of being moved into them (R2UR) before every wgmma. All 32 lanes must
// be active.
__device__ __forceinline__ int warp_index() {
  return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) >> 5, 0);
}
__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}
// p[0] += a, p[1] += b (p 8-byte aligned; each element atomic by itself): one vector atomic on
// sm_90+ (atomicAdd on float2 is Hopper's), two scalar ones before. Halves dQ's atomics.
__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// d += a · b (m16n8k16, fp32 accumulate)
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// 16 bytes global -> shared, asynchronously; valid = false writes 16 zero bytes and reads nothing
// (rows past a sequence's end: zeros keep 0 · V finite).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::);
}
// All but the N most recently committed groups have landed (this thread's copies).
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif  // !MH_FLASH_EMU

// p[0], p[1] as one 8-byte load (p 8-byte aligned): per-row statistics of a pair of columns.
MH_FLASH_FN void load_f32x2(const float* p, float& a, float& b) {
#if defined(MH_FLASH_EMU)
  assert(reinterpret_cast<uintptr_t>(p) % 8 == 0 && "load_f32x2 needs 8-byte alignment");
  a = p[0];
  b = p[1];
#else
  const float2 v = *reinterpret_cast<const float2*>(p);
  a = v.x;
  b = v.y;
#endif
}

template <typename T>
MH_FLASH_FN uint32_t pack2(float lo, float hi);
template <>
MH_FLASH_FN uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}
template <>
MH_FLASH_FN uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}

template <typename T>
MH_FLASH_FN float to_f(T x);
template <>
MH_FLASH_FN float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
MH_FLASH_FN float to_f<__half>(__half x) {
  return __half2float(x);
}

// Element (row, col) of a shared-memory tile with COLS 16-bit elements per row. The 16-byte
// chunks of a row are XOR-swizzled with the row index, so the 8 rows one ldmatrix reads at the
// same column fall into different banks (an unswizzled 128- or 256-byte row puts them all in
// one). cp.async writes and ldmatrix reads go through the same map.
template <int COLS>
MH_FLASH_FN int swz(int row, int col) {
  constexpr int kChunks = COLS / 8;
  constexpr int kMask = (kChunks < 8 ? kChunks : 8) - 1;
  return row * COLS + ((((col >> 3) ^ (row & kMask))) << 3) + (col & 7);
}

// Copies rows [0, ROWS) of a [*, COLS] global tile (row stride `stride` elements) into a swizzled
// shared tile; rows >= `valid` become zeros. `safe` is any readable address (never dereferenced
// for invalid rows, but the instruction still takes an operand).
// Thread t copies chunk column t % (COLS / 8) of rows t / (COLS / 8) + i · (THREADS / (COLS / 8)):
// with the number of passes a compile-time constant the loop unrolls fully. (Written as a loop
// from `tid` in steps of THREADS, nvcc kept it rolled with a remainder, and every chunk paid a
// 64-bit multiply, branches and reconvergence: about 100 instructions per tile on sm_90a, a
// quarter of the forward's instructions per key tile.) kAdvance: the source pointer advances
// by one row step per pass (a 64-bit add); without it each pass's address is a product, which
// nvcc then recomputes from the tile's base. The forward advances (its loop over key tiles:
// 611 -> 538 SASS instructions, sm_90a); the backward does not (advancing spilled 64 bytes in
// flash_bwd_tiles_kernel and 8 more in sm_80's head_dim 128, for no fewer instructions).
template <int ROWS, int COLS, int THREADS, bool kAdvance = false, typename T>
MH_FLASH_FN void load_tile(T* smem, const T* g, int64_t stride, int valid, const T* safe, int tid) {
  constexpr int kChunksPerRow = COLS / 8;
  static_assert(THREADS % kChunksPerRow == 0, "whole rows per pass");
  constexpr int kRowStep = THREADS / kChunksPerRow, kPasses = (ROWS + kRowStep - 1) / kRowStep;
  const int ch = tid % kChunksPerRow, r0 = tid / kChunksPerRow;
  const int64_t step = kRowStep * stride;
  const T* src = g + r0 * stride + ch * 8;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int r = r0 + i * kRowStep;
    if (ROWS % kRowStep == 0 || r < ROWS) {
      const bool ok = r < valid;
      cp_async16(smem + swz<COLS>(r, ch * 8), ok ? (kAdvance ? src : src + i * step) : safe, ok);
    }
    if constexpr (kAdvance) src += step;
  }
}

// The 32 random bits behind element `idx` of the dropout stream (seed, offset): lane idx % 4 of
// Philox block idx / 4, as philox_uniform_at (core/philox.h). Selected without indexing the
// array by a run-time value (which would put it in local memory).
MH_FLASH_FN uint32_t dropout_bits(uint64_t seed, uint64_t offset, uint64_t idx) {
  const uint64_t block = idx >> 2;
  const Philox4 r = philox4x32(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                               static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                               static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint32_t lane = static_cast<uint32_t>(idx & 3);
  const uint32_t lo = lane & 1 ? r.v[1] : r.v[0], hi = lane & 1 ? r.v[3] : r.v[2];
  return lane & 2 ? hi : lo;
}

// What both kernels take from an AttnProblem besides their buffers.
struct FlashShape {
  const int32_t *key_len, *cu_q, *cu_k;
  int heads, max_len_q, max_len_k;
  int64_t total_q;
  bool causal;
  float scale;       // softmax scale
  float scale_log2;  // scale · log2(e): the kernels work in base 2 (exp2_fast)
  bool dropout;
  uint32_t drop_threshold;  // keep iff (bits >> 8) >= threshold (as the CPU's dropout)
  float drop_scale;         // 1 / (1 - p)
  uint64_t seed, offset;
};

// Host code, shared by the launchers and the emulation. The dropout threshold and scale are
// computed as the CPU's dropout computes them (CpuBackend dropout_apply).
inline FlashShape flash_shape(const AttnProblem& pr) {
  FlashShape f;
  f.key_len = pr.key_len;
  f.cu_q = pr.cu_seqlens_q;
  f.cu_k = pr.cu_seqlens_k;
  f.heads = pr.heads;
  f.max_len_q = pr.max_len_q;
  f.max_len_k = pr.max_len_k;
  f.total_q = pr.total_q;
  f.causal = pr.causal;
  f.scale = pr.scale;
  f.scale_log2 = pr.scale * kLog2e;
  f.dropout = pr.dropout > 0.f;
  f.drop_threshold = static_cast<uint32_t>(std::ceil(pr.dropout * 16777216.0f));
  f.drop_scale = f.dropout ? static_cast<float>(1.0 / (1.0 - pr.dropout)) : 1.f;
  f.seed = pr.seed;
  f.offset = pr.offset;
  return f;
}

// Accumulator tiles 2k and 2k + 1 (C layout, fp32) as the A operand of k-step k, rounded to T.
template <typename T, int N>
MH_FLASH_FN void acc_to_a(const float (&c)[N][4], int k, uint32_t (&a)[4]) {
  a[0] = pack2<T>(c[2 * k][0], c[2 * k][1]);
  a[1] = pack2<T>(c[2 * k][2], c[2 * k][3]);
  a[2] = pack2<T>(c[2 * k + 1][0], c[2 * k + 1][1]);
  a[3] = pack2<T>(c[2 * k + 1][2], c[2 * k + 1][3]);
}

// The backward kernels' per-step dispatch: f(masked, dropout), both as std::bool_constant, with
// masked = !all_visible, so that a step whose every element is visible compiles no mask test.
template <typename Dropout, typename F>
MH_FLASH_FN void with_mask(bool all_visible, Dropout dropout, F&& f) {
  if (all_visible)
    f(std::false_type{}, dropout);
  else
    f(std::true_type{}, dropout);
}

// Where sequence b's rows are and how many there are (attention_problem.h's two batch forms).
struct SeqRows {
  int q0, len_q, k0, len_k;
};
MH_FLASH_FN SeqRows seq_rows(int b, const int32_t* cu_q, const int32_t* cu_k,
                             const int32_t* key_len, int max_len_q, int max_len_k) {
  SeqRows s;
  if (cu_q) {
    s.q0 = cu_q[b];
    s.len_q = cu_q[b + 1] - s.q0;
    s.k0 = cu_k[b];
    s.len_k = cu_k[b + 1] - s.k0;
  } else {
    s.q0 = b * max_len_q;
    s.len_q = max_len_q;
    s.k0 = b * max_len_k;
    const int n = key_len[b];
    s.len_k = n < 0 ? 0 : (n > max_len_k ? max_len_k : n);
  }
  return s;
}

// The forward's last step, shared by flash_fwd and flash_fwd_sm90 (flash_bwd reads what it
// writes): for this lane's rows r_lo and r_hi of the block, O = acc / l and the row log-sum-exp
// lse = ln Σ exp(scale·s) = (m + log2 l) · ln 2, after l is summed over the 4 lanes of the quad.
// acc(dt, i) is value i of dim tile dt in the m16n8 C layout; og and lse point at the block's
// first row, rs elements apart.
template <typename T, int D, typename Acc>
MH_FLASH_FN void write_o_lse(const Acc& acc, float (&l_run)[2], const float (&m_run)[2], T* og,
                             int64_t rs, float* lse, int r_lo, int r_hi, int rows_here, int t4) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += shfl_xor(l_run[r], 1);
    l_run[r] += shfl_xor(l_run[r], 2);
  }
  const float inv[2] = {l_run[0] > 0.f ? 1.f / l_run[0] : 0.f,
                        l_run[1] > 0.f ? 1.f / l_run[1] : 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r == 0 ? r_lo : r_hi;
    if (row >= rows_here) continue;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<uint32_t*>(og + row * rs + dt * 8 + 2 * t4) =
          pack2<T>(acc(dt, 2 * r) * inv[r], acc(dt, 2 * r + 1) * inv[r]);
    if (t4 == 0) lse[row] = l_run[r] > 0.f ? (m_run[r] + log2f(l_run[r])) * kLn2 : INFINITY;
  }
}

}  // namespace mh::cuda::flash
