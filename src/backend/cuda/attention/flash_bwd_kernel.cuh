// The backward kernels (see flash_bwd.cu for the scheme and their resources), in a header of
// their own so that tests/emu/test_flash_emu.cpp can run this same source on the CPU
// (flash_common.cuh).
#pragma once

#include <cmath>
#include <type_traits>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_common.cuh"

namespace mh::cuda::flash {

// Tile sizes: BN keys per block (one warp per 16), BM query rows per step. The launcher
// instantiates the defaults; the emulation test also runs other sizes.
constexpr int kBwdBN = 64;
constexpr int bwd_threads(int bn) {
  return bn / 16 * 32;
}
// Query rows per step: 64 at head_dim 64; 32 at 128, so that dK and dV (2 · 16 × 128 fp32 per
// warp) plus the score tiles fit in registers.
template <int D>
constexpr int kBwdBMOf = D == 64 ? 64 : 32;

template <typename T>
struct BwdParams : FlashShape {
  const T *q, *k, *v, *dout;
  const float* lse;   // [H, total_q], natural log
  const float* dsum;  // [H, total_q]: rowsum(dO ∘ O)
  float* dq_acc;      // [total_q, H·D] fp32
  T *dq, *dk, *dv;
  bool dq_direct;  // dQ's rows are stored to dq (each from one block), not added to dq_acc
};

// Whether every query row's dQ comes from a single block of BN keys (no sequence has more keys),
// so that the block stores it rounded, without the fp32 accumulator, its zeroing and the pass
// that converts it: translation batches of sentences up to BN tokens, where those passes cost
// as much traffic as the kernel's own.
inline bool bwd_dq_direct(const AttnProblem& pr, int bn) {
  return pr.max_len_k <= bn;
}

// The kernel's arguments for a problem (host code; shared by the launcher and the emulation).
// dq_acc: zeroed fp32 [total_q, H·D] (unused with dq_direct; io.dq zeroed instead);
// dsum: rowsum(dO ∘ O) [H, total_q].
template <typename T>
inline BwdParams<T> bwd_params(const AttnProblem& pr, const AttnBwdIO& io, float* dq_acc,
                               const float* dsum, bool dq_direct) {
  BwdParams<T> p;
  static_cast<FlashShape&>(p) = flash_shape(pr);
  p.q = static_cast<const T*>(io.q);
  p.k = static_cast<const T*>(io.k);
  p.v = static_cast<const T*>(io.v);
  p.dout = static_cast<const T*>(io.dout);
  p.lse = io.lse;
  p.dsum = dsum;
  p.dq_acc = dq_acc;
  p.dq = static_cast<T*>(io.dq);
  p.dq_direct = dq_direct;
  p.dk = static_cast<T*>(io.dk);
  p.dv = static_cast<T*>(io.dv);
  return p;
}
template <typename T, int D, int BN = kBwdBN, int BM = kBwdBMOf<D>>
constexpr int bwd_smem_bytes() {
  // K, V; Q and dO twice (the query block computed on and the next one, loading); dSᵀ; lse and D
  // twice.
  return (2 * BN * D + 4 * BM * D + BN * BM) * static_cast<int>(sizeof(T)) +
         4 * BM * static_cast<int>(sizeof(float));
}

// The query blocks a backward block streams, one step ahead of the math: Q and dO by cp.async into
// one of two buffers (one commit group per block), and their rows' lse (base 2) and D, read into
// registers by one thread per row and stored beside the buffers later (store_stats), when their
// slot's readers are done. Both backward kernels (strips and tiles) use it.
template <typename T, int BM, int D, int THREADS>
struct QBlockStream {
  T *sQ2, *sdO2;          // 2 × [BM][D] each
  float *sLse2, *sDsum2;  // 2 × [BM] each
  const BwdParams<T>* p;
  SeqRows sr;
  int h, tid;
  int64_t rs;
  float next_lse = INFINITY, next_dsum = 0.f;

  MH_FLASH_FN void load(int m0, int buf) const {
    const int q_here = imin(BM, sr.len_q - m0);
    load_tile<BM, D, THREADS>(sQ2 + buf * BM * D, p->q + (sr.q0 + m0) * rs + h * D, rs, q_here,
                              p->q, tid);
    load_tile<BM, D, THREADS>(sdO2 + buf * BM * D, p->dout + (sr.q0 + m0) * rs + h * D, rs, q_here,
                              p->dout, tid);
    cp_async_commit();
  }
  MH_FLASH_FN void read_stats(int m0) {
    const int64_t at = h * p->total_q + sr.q0 + m0 + tid;
    const bool ok = tid < BM && m0 + tid < sr.len_q;
    next_lse = ok ? p->lse[at] * kLog2e : INFINITY;
    next_dsum = ok ? p->dsum[at] : 0.f;
  }
  MH_FLASH_FN void store_stats(int buf) const {
    if (tid < BM) {
      sLse2[buf * BM + tid] = next_lse;
      sDsum2[buf * BM + tid] = next_dsum;
    }
  }
};

// Row half r (accumulator elements 2r, 2r + 1) of N dQ column tiles of 8, at element `at`: stored
// rounded where the block holds every key of the sequence (dq_direct: dQ is complete), else added
// to the fp32 accumulator, which blocks of the sequence's other keys add to as well.
template <typename T, int N>
MH_FLASH_FN void put_dq_row(const BwdParams<T>& p, int64_t at, const float (&acc)[N][4], int r) {
  if (p.dq_direct) {
#pragma unroll
    for (int dt = 0; dt < N; ++dt)
      *reinterpret_cast<uint32_t*>(p.dq + at + dt * 8) =
          pack2<T>(acc[dt][2 * r], acc[dt][2 * r + 1]);
  } else {
#pragma unroll
    for (int dt = 0; dt < N; ++dt)
      atomic_add2(p.dq_acc + at + dt * 8, acc[dt][2 * r], acc[dt][2 * r + 1]);
  }
}

// --- 2. the main kernel --------------------------------------------------------------------------
template <typename T, int D, int BN = kBwdBN, int BM = kBwdBMOf<D>>
MH_FLASH_KERNEL(bwd_threads(BN))
flash_bwd_kernel(const BwdParams<T> p) {
  constexpr int kBM = BM, kThreads = bwd_threads(BN), kWarps = BN / 16;
  // dQ's tile (kBM × D) is split over the warps: kBM / 16 row groups × the rest over D (so there
  // are at least 2·kBM threads: one per query row loads its lse and D).
  static_assert(BN % 16 == 0 && BM % 16 == 0 && kWarps % (BM / 16) == 0, "tile sizes");
  MH_FLASH_SMEM(smem_raw);
  T* sK = reinterpret_cast<T*>(smem_raw);  // [BN][D]
  T* sV = sK + BN * D;                     // [BN][D]
  T* sQ2 = sV + BN * D;                    // 2 × [kBM][D]: buffers alternate by query block
  T* sdO2 = sQ2 + 2 * kBM * D;             // 2 × [kBM][D]
  T* sdS = sdO2 + 2 * kBM * D;             // [BN][kBM]: dSᵀ, keys × queries
  float* sLse2 = reinterpret_cast<float*>(sdS + BN * kBM);  // 2 × [kBM], base 2
  float* sDsum2 = sLse2 + 2 * kBM;                          // 2 × [kBM]

  const int b = block_z(), h = block_y(), n0 = block_x() * BN;
  const SeqRows sr = seq_rows(b, p.cu_q, p.cu_k, p.key_len, p.max_len_q, p.max_len_k);
  // Key rows this block writes: padded batches also own the rows past key_len (their gradient is
  // 0); packed batches have no such rows.
  const int k_rows = p.cu_q ? sr.len_k : p.max_len_k;
  if (n0 >= k_rows) return;
  const int tid = thread_x(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t rs = static_cast<int64_t>(p.heads) * D;
  const T* kg = p.k + (sr.k0 + n0) * rs + h * D;
  const T* vg = p.v + (sr.k0 + n0) * rs + h * D;
  T* dkg = p.dk + (sr.k0 + n0) * rs + h * D;
  T* dvg = p.dv + (sr.k0 + n0) * rs + h * D;
  const int keys_here = imin(BN, k_rows - n0);

  float dk[D / 8][4], dv[D / 8][4];  // this warp's 16 keys × D
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;

  if (n0 < sr.len_k) {
    load_tile<BN, D, kThreads>(sK, kg, rs, sr.len_k - n0, p.k, tid);
    load_tile<BN, D, kThreads>(sV, vg, rs, sr.len_k - n0, p.v, tid);
    cp_async_commit();
    // Causal: query i sees key j only if j <= i, so query blocks before n0 see none of these.
    const int m_begin = p.causal ? (n0 / kBM) * kBM : 0;
    const int key_lo = n0 + warp * 16 + g, key_hi = key_lo + 8;  // this lane's two keys
    QBlockStream<T, kBM, D, kThreads> qs{sQ2, sdO2, sLse2, sDsum2, &p, sr, h, tid, rs};
    if (m_begin < sr.len_q) {
      qs.load(m_begin, 0);
      qs.read_stats(m_begin);
      qs.store_stats(0);
    }
    // Software pipeline: while one query block is computed on, the next one's Q, dO, lse and D
    // are on their way (the loads used to be waited for at every step, with 8 warps per SM to
    // hide them). Two barriers per step, at the top and before dQ: every read of a step's Q, dO,
    // lse and D precedes its second barrier, and every read of its dSᵀ precedes the next step's
    // first, so the buffers each overwrites are free (a third barrier at the end of every step,
    // until 2026-11-29, guarded nothing these two did not).
    for (int m0 = m_begin, it = 0; m0 < sr.len_q; m0 += kBM, ++it) {
      const int cur = it & 1;
      const bool more = m0 + kBM < sr.len_q;
      if (more) {
        // Buffer cur ^ 1 was last read before the previous step's second barrier.
        qs.load(m0 + kBM, cur ^ 1);
        qs.read_stats(m0 + kBM);
        cp_async_wait_group<1>();  // everything but that prefetch: K, V and this block
      } else {
        cp_async_wait_all();
      }
      block_sync();
      const T* sQ = sQ2 + cur * kBM * D;
      const T* sdO = sdO2 + cur * kBM * D;
      const float* sLse = sLse2 + cur * kBM;
      const float* sDsum = sDsum2 + cur * kBM;
      const int q_here = imin(kBM, sr.len_q - m0);

      // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: 16 keys × kBM queries per warp.
      float s[kBM / 8][4], dp[kBM / 8][4];
#pragma unroll
      for (int i = 0; i < kBM / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ak[4], av[4];
        const int ar = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                  ac = kk * 16 + (lane >> 4) * 8;
        ldsm_x4(ak, sK + swz<D>(ar, ac));
        ldsm_x4(av, sV + swz<D>(ar, ac));
#pragma unroll
        for (int nt2 = 0; nt2 < kBM / 16; ++nt2) {
          const int br = nt2 * 16 + (lane & 7) + (lane >> 4) * 8,
                    bc = kk * 16 + ((lane >> 3) & 1) * 8;
          uint32_t bq[4], bo[4];
          ldsm_x4(bq, sQ + swz<D>(br, bc));
          ldsm_x4(bo, sdO + swz<D>(br, bc));
          mma16816<T>(s[2 * nt2], ak, bq[0], bq[1]);
          mma16816<T>(s[2 * nt2 + 1], ak, bq[2], bq[3]);
          mma16816<T>(dp[2 * nt2], av, bo[0], bo[1]);
          mma16816<T>(dp[2 * nt2 + 1], av, bo[2], bo[3]);
        }
      }

      // Pᵀ, then s <- P∘Z (for dV) and dp <- dSᵀ (for dK and dQ). A step whose every key and
      // query is valid and (causal) whose last key is at or before its first query evaluates no
      // mask per element; only the edge and diagonal steps do. Dropout is decided once per step,
      // not per element: a branch per element (its test waits on that element's exp) kept the
      // compiler from overlapping the 32 exps and shared-memory reads of a thread (the SASS had
      // one branch region per element even without dropout).
      const bool all_visible =
          n0 + BN <= sr.len_k && m0 + kBM <= sr.len_q && (!p.causal || n0 + BN - 1 <= m0);
      auto p_and_ds = [&](auto masked, auto dropout) {
#pragma unroll
        for (int nt = 0; nt < kBM / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = e < 2 ? key_lo : key_hi, ql = nt * 8 + 2 * t4 + (e & 1), q = m0 + ql;
            const bool visible = !decltype(masked)::value ||
                                 (key < sr.len_k && q < sr.len_q && (!p.causal || key <= q));
            const float pr = visible ? exp2_fast(s[nt][e] * p.scale_log2 - sLse[ql]) : 0.f;
            float g_val = dp[nt][e], p_used = pr;
            if constexpr (decltype(dropout)::value) {
              if (pr != 0.f) {
                const uint64_t idx =
                    ((static_cast<uint64_t>(b) * p.heads + h) * p.max_len_q + q) * p.max_len_k +
                    key;
                const bool keep = (dropout_bits(p.seed, p.offset, idx) >> 8) >= p.drop_threshold;
                g_val = keep ? g_val * p.drop_scale : 0.f;
                p_used = keep ? pr * p.drop_scale : 0.f;
              }
            }
            dp[nt][e] = pr * (g_val - sDsum[ql]) * p.scale;
            s[nt][e] = p_used;
          }
        }
      };
      if (p.dropout)
        with_mask(all_visible, std::true_type{}, p_and_ds);
      else
        with_mask(all_visible, std::false_type{}, p_and_ds);

        // dV += (P∘Z)ᵀ dO and dK += dSᵀ Q: A operands from registers, B = dO, Q tiles (trans).
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) {
        uint32_t ap[4], ads[4];
        acc_to_a<T>(s, kk, ap);
        acc_to_a<T>(dp, kk, ads);
        const int br = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int dt2 = 0; dt2 < D / 16; ++dt2) {
          const int bc = dt2 * 16 + (lane >> 4) * 8;
          uint32_t bo[4], bq[4];
          ldsm_x4_trans(bo, sdO + swz<D>(br, bc));
          ldsm_x4_trans(bq, sQ + swz<D>(br, bc));
          mma16816<T>(dv[2 * dt2], ap, bo[0], bo[1]);
          mma16816<T>(dv[2 * dt2 + 1], ap, bo[2], bo[3]);
          mma16816<T>(dk[2 * dt2], ads, bq[0], bq[1]);
          mma16816<T>(dk[2 * dt2 + 1], ads, bq[2], bq[3]);
        }
      }

      // dSᵀ to shared memory (keys × queries), for dQ = dS K across all warps' keys.
#pragma unroll
      for (int nt = 0; nt < kBM / 8; ++nt) {
        const int ql = nt * 8 + 2 * t4;
        *reinterpret_cast<uint32_t*>(sdS + swz<kBM>(warp * 16 + g, ql)) =
            pack2<T>(dp[nt][0], dp[nt][1]);
        *reinterpret_cast<uint32_t*>(sdS + swz<kBM>(warp * 16 + g + 8, ql)) =
            pack2<T>(dp[nt][2], dp[nt][3]);
      }
      block_sync();

      // dQ[m0 .. m0 + kBM) += dS K: warp w takes 16 query rows × DW dims of the tile.
      constexpr int kWarpsM = kBM / 16, kWarpsD = kWarps / kWarpsM, DW = D / kWarpsD;
      static_assert(DW % 16 == 0, "each warp's share of dQ's columns: a multiple of 16");
      const int qr0 = (warp % kWarpsM) * 16, d0 = (warp / kWarpsM) * DW;
      float dq[DW / 8][4];
#pragma unroll
      for (int i = 0; i < DW / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t ads[4];  // dS rows (queries) × keys, read transposed out of dSᵀ
        ldsm_x4_trans(ads, sdS + swz<kBM>(kk * 16 + (lane & 7) + (lane >> 4) * 8,
                                          qr0 + ((lane >> 3) & 1) * 8));
#pragma unroll
        for (int dt2 = 0; dt2 < DW / 16; ++dt2) {
          uint32_t bk[4];
          ldsm_x4_trans(bk, sK + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                        d0 + dt2 * 16 + (lane >> 4) * 8));
          mma16816<T>(dq[2 * dt2], ads, bk[0], bk[1]);
          mma16816<T>(dq[2 * dt2 + 1], ads, bk[2], bk[3]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int ql = qr0 + g + 8 * r;
        if (ql >= q_here) continue;
        put_dq_row<T>(p, (sr.q0 + m0 + ql) * rs + h * D + d0 + 2 * t4, dq, r);
      }
      // Read by the next step, after its first barrier; read last before the second barrier of the
      // previous step.
      if (more) qs.store_stats(cur ^ 1);
    }
    // Causal keys that no query sees ran no step: their K/V group is still in flight, and a
    // block must not exit with copies into its shared memory pending. (A no-op otherwise.)
    cp_async_wait_all();
  }

  // dK, dV for this warp's 16 keys (0 for keys no query saw, and for padding keys).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kl = warp * 16 + g + 8 * r;
    if (kl >= keys_here) continue;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<uint32_t*>(dkg + kl * rs + dt * 8 + 2 * t4) =
          pack2<T>(dk[dt][2 * r], dk[dt][2 * r + 1]);
      *reinterpret_cast<uint32_t*>(dvg + kl * rs + dt * 8 + 2 * t4) =
          pack2<T>(dv[dt][2 * r], dv[dt][2 * r + 1]);
    }
  }
}

}  // namespace mh::cuda::flash

namespace mh::cuda::flash {

// --- 3. the same backward in FlashAttention-2's layout (head_dim 64; MH_FLASH_BWD=tiles) ---------
// A block owns kTilesBN = 128 keys with 8 warps and steps through the queries 128 at a time. Each
// GEMM is split over the warps in two dimensions, as FlashAttention-2 splits it, rather than
// giving every warp a 16-key strip: S = Q Kᵀ and dP = dO Vᵀ as 2 × 4 warps of 64 queries × 32
// keys; P and dS go through shared memory; dV = Pᵀ dO and dK = dSᵀ Q as 4 × 2 warps of 32 keys ×
// 32 dims (held across the steps), dQ = dS K as 4 × 2 warps of 32 queries × 32 dims. A step
// is 4× the strips kernel's work between its two barriers, each query block's lse and D are
// read once per 128 keys, and dQ gets half the atomics per FLOP.
constexpr int kTilesBN = 128, kTilesBM = 128, kTilesThreads = 256;
template <typename T>
constexpr int bwd_tiles_smem_bytes() {
  // K, V; Q and dO twice (this query block and the next); P and dS; lse and D twice.
  return (2 * kTilesBN * 64 + 4 * kTilesBM * 64 + 2 * kTilesBM * kTilesBN) *
             static_cast<int>(sizeof(T)) +
         4 * kTilesBM * static_cast<int>(sizeof(float));
}

template <typename T>
MH_FLASH_KERNEL(kTilesThreads, 1)
flash_bwd_tiles_kernel(const BwdParams<T> p) {
  constexpr int D = 64, BN = kTilesBN, BM = kTilesBM, kThreads = kTilesThreads;
  MH_FLASH_SMEM(smem_raw);
  T* sK = reinterpret_cast<T*>(smem_raw);  // [BN][D]
  T* sV = sK + BN * D;                     // [BN][D]
  T* sQ2 = sV + BN * D;                    // 2 × [BM][D]: buffers alternate by query block
  T* sdO2 = sQ2 + 2 * BM * D;              // 2 × [BM][D]
  T* sP = sdO2 + 2 * BM * D;               // [BM][BN]: P∘Z, queries × keys
  T* sdS = sP + BM * BN;                   // [BM][BN]: dS
  float* sLse2 = reinterpret_cast<float*>(sdS + BM * BN);  // 2 × [BM], base 2
  float* sDsum2 = sLse2 + 2 * BM;                          // 2 × [BM]

  const int b = block_z(), h = block_y(), n0 = block_x() * BN;
  const SeqRows sr = seq_rows(b, p.cu_q, p.cu_k, p.key_len, p.max_len_q, p.max_len_k);
  const int k_rows = p.cu_q ? sr.len_k : p.max_len_k;  // as flash_bwd_kernel
  if (n0 >= k_rows) return;
  const int tid = thread_x(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t rs = static_cast<int64_t>(p.heads) * D;
  const T* kg = p.k + (sr.k0 + n0) * rs + h * D;
  const T* vg = p.v + (sr.k0 + n0) * rs + h * D;
  T* dkg = p.dk + (sr.k0 + n0) * rs + h * D;
  T* dvg = p.dv + (sr.k0 + n0) * rs + h * D;
  const int keys_here = imin(BN, k_rows - n0);
  // The warps' places: S and dP 2 (queries) × 4 (keys); dV, dK 4 (keys) × 2 (dims); dQ 4
  // (queries) × 2 (dims).
  const int wm = warp & 1, wn = warp >> 1, w4 = warp & 3, wd = warp >> 2;

  float dk[2][4][4], dv[2][4][4];  // 32 keys × 32 dims per warp
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[mi][i][e] = dv[mi][i][e] = 0.f;

  if (n0 < sr.len_k) {
    load_tile<BN, D, kThreads>(sK, kg, rs, sr.len_k - n0, p.k, tid);
    load_tile<BN, D, kThreads>(sV, vg, rs, sr.len_k - n0, p.v, tid);
    cp_async_commit();
    const int m_begin = p.causal ? (n0 / BM) * BM : 0;
    QBlockStream<T, BM, D, kThreads> qs{sQ2, sdO2, sLse2, sDsum2, &p, sr, h, tid, rs};
    if (m_begin < sr.len_q) {
      qs.load(m_begin, 0);
      qs.read_stats(m_begin);
      qs.store_stats(0);
    }
    // Two barriers per step. The next query block's copies start after the first: this step's
    // buffers were last read (dK's Q, dV's dO) after the previous step's second barrier.
    for (int m0 = m_begin, it = 0; m0 < sr.len_q; m0 += BM, ++it) {
      const int cur = it & 1;
      const bool more = m0 + BM < sr.len_q;
      cp_async_wait_all();
      block_sync();
      if (more) {
        qs.load(m0 + BM, cur ^ 1);
        qs.read_stats(m0 + BM);
      }
      const T* sQ = sQ2 + cur * BM * D;
      const T* sdO = sdO2 + cur * BM * D;
      const float* sLse = sLse2 + cur * BM;
      const float* sDsum = sDsum2 + cur * BM;
      const int q_here = imin(BM, sr.len_q - m0);

      // acc = A Bᵀ over D for this warp's 64 queries (A rows) × 32 keys (B rows).
      auto queries_x_keys = [&](float(&acc)[4][4][4], const T* sa, const T* sb) {
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
            acc[mi][nt][0] = acc[mi][nt][1] = acc[mi][nt][2] = acc[mi][nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t a[4][4];
#pragma unroll
          for (int mi = 0; mi < 4; ++mi)
            ldsm_x4(a[mi], sa + swz<D>(wm * 64 + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                       kk * 16 + (lane >> 4) * 8));
#pragma unroll
          for (int nj = 0; nj < 2; ++nj) {
            uint32_t bk[4];  // b0, b1 of key tiles 2·nj and 2·nj + 1
            ldsm_x4(bk, sb + swz<D>(wn * 32 + nj * 16 + (lane & 7) + (lane >> 4) * 8,
                                    kk * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
              mma16816<T>(acc[mi][2 * nj], a[mi], bk[0], bk[1]);
              mma16816<T>(acc[mi][2 * nj + 1], a[mi], bk[2], bk[3]);
            }
          }
        }
      };
      // Element (mi, nt, e) of this warp's tiles: query wm·64 + 16mi + g + 8(e / 2), key
      // wn·32 + 8nt + 2t4 + e % 2 (block-local).
      const bool all_visible =
          n0 + BN <= sr.len_k && m0 + BM <= sr.len_q && (!p.causal || n0 + BN - 1 <= m0);
      float s[4][4][4], dp[4][4][4];
      queries_x_keys(s, sQ, sK);
      // P = exp2(S·scale·log2e − lse): the probabilities, 0 where masked.
      auto probs = [&](auto masked) {
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            const int ql = wm * 64 + mi * 16 + g + 8 * e2;
            const float lse = sLse[ql];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
              for (int e1 = 0; e1 < 2; ++e1) {
                const int e = 2 * e2 + e1, key = n0 + wn * 32 + nt * 8 + 2 * t4 + e1, q = m0 + ql;
                const bool visible = !decltype(masked)::value ||
                                     (key < sr.len_k && q < sr.len_q && (!p.causal || key <= q));
                s[mi][nt][e] = visible ? exp2_fast(s[mi][nt][e] * p.scale_log2 - lse) : 0.f;
              }
          }
      };
      if (all_visible)
        probs(std::false_type{});
      else
        probs(std::true_type{});
      queries_x_keys(dp, sdO, sV);
      // dS = P ∘ (dP∘Z − D) · scale and P∘Z, rounded into shared memory (queries × keys).
      auto grads = [&](auto dropout) {
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            const int ql = wm * 64 + mi * 16 + g + 8 * e2;
            const float dsum = sDsum[ql];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
              float pz[2], ds[2];
#pragma unroll
              for (int e1 = 0; e1 < 2; ++e1) {
                const int e = 2 * e2 + e1, kl = wn * 32 + nt * 8 + 2 * t4 + e1;
                const float pr = s[mi][nt][e];
                float g_val = dp[mi][nt][e], p_used = pr;
                if constexpr (decltype(dropout)::value) {
                  if (pr != 0.f) {
                    const uint64_t idx =
                        ((static_cast<uint64_t>(b) * p.heads + h) * p.max_len_q + m0 + ql) *
                            p.max_len_k +
                        n0 + kl;
                    const bool keep =
                        (dropout_bits(p.seed, p.offset, idx) >> 8) >= p.drop_threshold;
                    g_val = keep ? g_val * p.drop_scale : 0.f;
                    p_used = keep ? pr * p.drop_scale : 0.f;
                  }
                }
                ds[e1] = pr * (g_val - dsum) * p.scale;
                pz[e1] = p_used;
              }
              const int at = swz<BN>(ql, wn * 32 + nt * 8 + 2 * t4);
              *reinterpret_cast<uint32_t*>(sP + at) = pack2<T>(pz[0], pz[1]);
              *reinterpret_cast<uint32_t*>(sdS + at) = pack2<T>(ds[0], ds[1]);
            }
          }
      };
      if (p.dropout)
        grads(std::true_type{});
      else
        grads(std::false_type{});
      block_sync();  // P and dS of the whole tile, for every warp

      // dV += (P∘Z)ᵀ dO and dK += dSᵀ Q: this warp's 32 keys × 32 dims, over the 128 queries;
      // A = Pᵀ, dSᵀ read transposed out of the queries × keys tiles.
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        uint32_t ap[2][4], ads[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int at = swz<BN>(kk * 16 + (lane & 7) + (lane >> 4) * 8,
                                 w4 * 32 + mi * 16 + ((lane >> 3) & 1) * 8);
          ldsm_x4_trans(ap[mi], sP + at);
          ldsm_x4_trans(ads[mi], sdS + at);
        }
#pragma unroll
        for (int dt2 = 0; dt2 < 2; ++dt2) {
          const int at = swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                wd * 32 + dt2 * 16 + (lane >> 4) * 8);
          uint32_t bo[4], bq[4];
          ldsm_x4_trans(bo, sdO + at);
          ldsm_x4_trans(bq, sQ + at);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma16816<T>(dv[mi][2 * dt2], ap[mi], bo[0], bo[1]);
            mma16816<T>(dv[mi][2 * dt2 + 1], ap[mi], bo[2], bo[3]);
            mma16816<T>(dk[mi][2 * dt2], ads[mi], bq[0], bq[1]);
            mma16816<T>(dk[mi][2 * dt2 + 1], ads[mi], bq[2], bq[3]);
          }
        }
      }

      // dQ[m0 .. m0 + BM) += dS K: this warp's 32 queries × 32 dims, over the 128 keys.
      float dq[2][4][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int i = 0; i < 4; ++i) dq[mi][i][0] = dq[mi][i][1] = dq[mi][i][2] = dq[mi][i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t ads[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
          ldsm_x4(ads[mi], sdS + swz<BN>(w4 * 32 + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                         kk * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int dt2 = 0; dt2 < 2; ++dt2) {
          uint32_t bk[4];
          ldsm_x4_trans(bk, sK + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                        wd * 32 + dt2 * 16 + (lane >> 4) * 8));
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma16816<T>(dq[mi][2 * dt2], ads[mi], bk[0], bk[1]);
            mma16816<T>(dq[mi][2 * dt2 + 1], ads[mi], bk[2], bk[3]);
          }
        }
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int ql = w4 * 32 + mi * 16 + g + 8 * r;
          if (ql >= q_here) continue;
          put_dq_row<T>(p, (sr.q0 + m0 + ql) * rs + h * D + wd * 32 + 2 * t4, dq[mi], r);
        }
      // Read by the next step, after its first barrier; read last before this step's second.
      if (more) qs.store_stats(cur ^ 1);
    }
    cp_async_wait_all();  // causal keys no query sees ran no step: their copies are in flight
  }

  // dK, dV of this warp's 32 keys × 32 dims (0 for keys no query saw, and for padding keys).
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int kl = w4 * 32 + mi * 16 + g + 8 * r;
      if (kl >= keys_here) continue;
#pragma unroll
      for (int dt = 0; dt < 4; ++dt) {
        const int64_t at = kl * rs + wd * 32 + dt * 8 + 2 * t4;
        *reinterpret_cast<uint32_t*>(dkg + at) = pack2<T>(dk[mi][dt][2 * r], dk[mi][dt][2 * r + 1]);
        *reinterpret_cast<uint32_t*>(dvg + at) = pack2<T>(dv[mi][dt][2 * r], dv[mi][dt][2 * r + 1]);
      }
    }
}

}  // namespace mh::cuda::flash
