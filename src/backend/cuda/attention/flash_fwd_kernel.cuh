// The forward kernel (see flash_fwd.cu for the scheme and its resources), in a header of its own
// so that tests/emu/test_flash_emu.cpp can run this same source on the CPU (flash_common.cuh).
#pragma once

#include <cmath>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_common.cuh"

namespace mh::cuda::flash {

template <typename T>
struct FwdParams : FlashShape {
  const T *q, *k, *v;
  T* o;
  float* lse;
};

// Tile sizes: BM query rows per block (one warp per 16), BN keys per K/V tile. The launcher
// instantiates the defaults; the emulation test also runs other sizes.
constexpr int kFwdBM = 64, kFwdBN = 64;
constexpr int fwd_threads(int bm) {
  return bm / 16 * 32;
}

// The kernel's arguments for a problem (host code; shared by the launcher and the emulation).
template <typename T>
inline FwdParams<T> fwd_params(const AttnProblem& pr, const AttnFwdIO& io) {
  FwdParams<T> p;
  static_cast<FlashShape&>(p) = flash_shape(pr);
  p.q = static_cast<const T*>(io.q);
  p.k = static_cast<const T*>(io.k);
  p.v = static_cast<const T*>(io.v);
  p.o = static_cast<T*>(io.o);
  p.lse = io.lse;
  return p;
}
template <typename T, int D, int BM = kFwdBM, int BN = kFwdBN>
constexpr int fwd_smem_bytes() {
  return (BM + 2 * BN) * D * static_cast<int>(sizeof(T));
}

template <typename T, int D, int BM = kFwdBM, int BN = kFwdBN>
MH_FLASH_KERNEL(fwd_threads(BM))
flash_fwd_kernel(const FwdParams<T> p) {
  static_assert(BM % 16 == 0 && BN % 16 == 0 && D % 16 == 0, "tiles of 16");
  constexpr int kThreads = fwd_threads(BM);
  MH_FLASH_SMEM(smem_raw);
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [BM][D]
  T* sK = sQ + BM * D;                     // [BN][D]
  T* sV = sK + BN * D;                     // [BN][D]

  const int b = block_z(), h = block_y(), m0 = block_x() * BM;
  const SeqRows sr = seq_rows(b, p.cu_q, p.cu_k, p.key_len, p.max_len_q, p.max_len_k);
  if (m0 >= sr.len_q) return;  // packed: this sequence is shorter than the longest
  const int tid = thread_x(), warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t rs = static_cast<int64_t>(p.heads) * D;  // elements between token rows
  const T* qg = p.q + (sr.q0 + m0) * rs + h * D;
  const T* kg = p.k + sr.k0 * rs + h * D;
  const T* vg = p.v + sr.k0 * rs + h * D;
  T* og = p.o + (sr.q0 + m0) * rs + h * D;
  float* lse = p.lse + h * p.total_q + sr.q0 + m0;
  const int rows_here = imin(BM, sr.len_q - m0);
  // Keys this block can see: all valid ones, and with the causal mask none past its last query.
  const int n_end = p.causal ? imin(sr.len_k, m0 + BM) : sr.len_k;
  const int n_blocks = n_end > 0 ? (n_end + BN - 1) / BN : 0;
  const int r_lo = warp * 16 + g, r_hi = r_lo + 8;  // this lane's two rows within the block

  if (n_blocks == 0) {  // no visible key: O = 0, lse = +inf (backward's P is then 0)
    for (int i = tid; i < rows_here * (D / 2); i += kThreads) {
      const int r = i / (D / 2), c = (i % (D / 2)) * 2;
      *reinterpret_cast<uint32_t*>(og + r * rs + c) = pack2<T>(0.f, 0.f);
    }
    for (int r = tid; r < rows_here; r += kThreads) lse[r] = INFINITY;
    return;
  }

  load_tile<BM, D, kThreads>(sQ, qg, rs, rows_here, p.q, tid);
  load_tile<BN, D, kThreads>(sK, kg, rs, sr.len_k, p.k, tid);
  cp_async_commit();

  float acc[D / 8][4];  // O tile: 16 rows × D per warp
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  uint32_t qf[D / 16][4];  // Q as A fragments, loaded once

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BN;
    cp_async_wait_all();
    block_sync();  // K[nb] (and Q) landed; everyone is done with V[nb-1]
    if (nb == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        ldsm_x4(qf[kk], sQ + swz<D>(warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                    kk * 16 + (lane >> 4) * 8));
    }
    load_tile<BN, D, kThreads>(sV, vg + n0 * rs, rs, sr.len_k - n0, p.v, tid);
    cp_async_commit();

    // S = Q K[nb]ᵀ: 16 × 64 per warp, eight 16×8 accumulator tiles.
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nt2 = 0; nt2 < BN / 16; ++nt2) {
        uint32_t bk[4];  // b0, b1 of key tiles 2·nt2 and 2·nt2 + 1
        ldsm_x4(bk, sK + swz<D>(nt2 * 16 + (lane & 7) + (lane >> 4) * 8,
                                kk * 16 + ((lane >> 3) & 1) * 8));
        mma16816<T>(s[2 * nt2], qf[kk], bk[0], bk[1]);
        mma16816<T>(s[2 * nt2 + 1], qf[kk], bk[2], bk[3]);
      }
    }

    // Scale into base 2, mask, and the online softmax update of this lane's two rows. A tile
    // whose every key is valid and (causal) at or before the block's first query needs no mask:
    // the per-element compares are spent only on the tiles at the edges and the diagonal.
    if (n0 + BN <= sr.len_k && (!p.causal || n0 + BN - 1 <= m0)) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] *= p.scale_log2;
    } else {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = m0 + (e < 2 ? r_lo : r_hi), col = n0 + nt * 8 + 2 * t4 + (e & 1);
          const bool visible = col < sr.len_k && (!p.causal || col <= row);
          s[nt][e] = visible ? s[nt][e] * p.scale_log2 : -INFINITY;
        }
      }
    }
    float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));
      mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
      base[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a row with nothing visible yet stays 0
      const float alpha = exp2_fast(m_run[r] - base[r]);
      m_run[r] = mx[r];
      l_run[r] *= alpha;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        acc[dt][2 * r] *= alpha;
        acc[dt][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2_fast(s[nt][e] - base[e >> 1]);
        l_run[e >> 1] += s[nt][e];  // lane-partial sums; the quad is summed at the end
      }
    }
    if (p.dropout) {  // the normalizer keeps every probability; O only the kept ones
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = m0 + (e < 2 ? r_lo : r_hi), col = n0 + nt * 8 + 2 * t4 + (e & 1);
          if (s[nt][e] == 0.f) continue;
          const uint64_t idx =
              ((static_cast<uint64_t>(b) * p.heads + h) * p.max_len_q + row) * p.max_len_k + col;
          const bool keep = (dropout_bits(p.seed, p.offset, idx) >> 8) >= p.drop_threshold;
          s[nt][e] = keep ? s[nt][e] * p.drop_scale : 0.f;
        }
      }
    }

    cp_async_wait_all();
    block_sync();  // V[nb] landed; everyone is done reading K[nb]
    if (nb + 1 < n_blocks) {
      load_tile<BN, D, kThreads>(sK, kg + (n0 + BN) * rs, rs, sr.len_k - n0 - BN, p.k, tid);
      cp_async_commit();
    }

    // O += P V[nb]: P straight from the accumulators (C layout of n-tiles 2k, 2k+1 = A of k).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(s, kk, a);
#pragma unroll
      for (int dt2 = 0; dt2 < D / 16; ++dt2) {
        uint32_t bv[4];  // b0, b1 of dim tiles 2·dt2 and 2·dt2 + 1
        ldsm_x4_trans(bv, sV + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                      dt2 * 16 + (lane >> 4) * 8));
        mma16816<T>(acc[2 * dt2], a, bv[0], bv[1]);
        mma16816<T>(acc[2 * dt2 + 1], a, bv[2], bv[3]);
      }
    }
  }

  // O = acc / l and the row log-sum-exp, as flash_bwd reads them.
  write_o_lse<T, D>([&](int dt, int i) { return acc[dt][i]; }, l_run, m_run, og, rs, lse, r_lo,
                    r_hi, rows_here, t4);
}

}  // namespace mh::cuda::flash
