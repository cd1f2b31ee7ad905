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

// Tile sizes: BM query rows per block, BN keys per K/V tile, WM query rows per warp (16 or 32:
// one or two 16-row mma tiles). The launcher instantiates the defaults and the MH_FLASH_FWD_TILE
// tilings; the emulation test also runs other sizes.
constexpr int kFwdBM = 64, kFwdBN = 64, kFwdWM = 16;
constexpr int fwd_threads(int bm, int wm = kFwdWM) {
  return bm / wm * 32;
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

// A warp of WM = 32 rows (MT = 2 row tiles) reads each K and V fragment from shared memory once
// for two mma tiles, half the shared-memory traffic per FLOP of 16 rows: FlashAttention-2's
// head_dim-64 forward (128 x 128 tiles, 4 warps). Such a warp reads its Q fragments per k-step,
// as FlashAttention-2 does (held in registers, they spilled 128x64 on sm_90a: 112 bytes); a warp
// of 16 rows loads them once.
// The default head_dim-64 tile keeps 3 blocks per SM (at most 168 registers): unbounded, ptxas
// took 249 for it once load_tile unrolled (flash_fwd.cu's header).
template <typename T, int D, int BM = kFwdBM, int BN = kFwdBN, int WM = kFwdWM>
MH_FLASH_KERNEL(fwd_threads(BM, WM), D == 64 && BM == 64 && BN == 64 ? 3 : 1)
flash_fwd_kernel(const FwdParams<T> p) {
  static_assert(BM % WM == 0 && (WM == 16 || WM == 32) && BN % 16 == 0 && D % 16 == 0,
                "tiles of 16; 16 or 32 rows per warp");
  constexpr int kThreads = fwd_threads(BM, WM), MT = WM / 16;
  constexpr bool kQInRegs = MT == 1;
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
  // This lane's rows within the block: r_lo(mt) and r_lo(mt) + 8 of row tile mt.
  auto r_lo = [&](int mt) { return warp * WM + mt * 16 + g; };

  if (n_blocks == 0) {  // no visible key: O = 0, lse = +inf (backward's P is then 0)
    for (int i = tid; i < rows_here * (D / 2); i += kThreads) {
      const int r = i / (D / 2), c = (i % (D / 2)) * 2;
      *reinterpret_cast<uint32_t*>(og + r * rs + c) = pack2<T>(0.f, 0.f);
    }
    for (int r = tid; r < rows_here; r += kThreads) lse[r] = INFINITY;
    return;
  }

  load_tile<BM, D, kThreads, true>(sQ, qg, rs, rows_here, p.q, tid);
  load_tile<BN, D, kThreads, true>(sK, kg, rs, sr.len_k, p.k, tid);
  cp_async_commit();

  float acc[MT][D / 8][4];  // O tile: WM rows × D per warp
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
      acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
  }
  // Q as A fragments: loaded once (kQInRegs), else per k-step from sQ.
  uint32_t qf[kQInRegs ? MT : 1][kQInRegs ? D / 16 : 1][4];
  auto load_q_frag = [&](uint32_t(&a)[4], int mt, int kk) {
    ldsm_x4(a, sQ + swz<D>(r_lo(mt) - g + (lane & 7) + ((lane >> 3) & 1) * 8,
                           kk * 16 + (lane >> 4) * 8));
  };

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BN;
    cp_async_wait_all();
    block_sync();  // K[nb] (and Q) landed; everyone is done with V[nb-1]
    if constexpr (kQInRegs) {
      if (nb == 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk) load_q_frag(qf[mt][kk], mt, kk);
      }
    }
    load_tile<BN, D, kThreads, true>(sV, vg + n0 * rs, rs, sr.len_k - n0, p.v, tid);
    cp_async_commit();

    // S = Q K[nb]ᵀ: WM × BN per warp, 16×8 accumulator tiles.
    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qk[kQInRegs ? 1 : MT][4];
      if constexpr (!kQInRegs) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) load_q_frag(qk[mt], mt, kk);
      }
#pragma unroll
      for (int nt2 = 0; nt2 < BN / 16; ++nt2) {
        uint32_t bk[4];  // b0, b1 of key tiles 2·nt2 and 2·nt2 + 1
        ldsm_x4(bk, sK + swz<D>(nt2 * 16 + (lane & 7) + (lane >> 4) * 8,
                                kk * 16 + ((lane >> 3) & 1) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (kQInRegs) {
            mma16816<T>(s[mt][2 * nt2], qf[mt][kk], bk[0], bk[1]);
            mma16816<T>(s[mt][2 * nt2 + 1], qf[mt][kk], bk[2], bk[3]);
          } else {
            mma16816<T>(s[mt][2 * nt2], qk[mt], bk[0], bk[1]);
            mma16816<T>(s[mt][2 * nt2 + 1], qk[mt], bk[2], bk[3]);
          }
        }
      }
    }

    // Mask, and the online softmax update of this lane's rows, in base 2. The scale is folded
    // into the exponent's FMA, exp2(s · scale − max · scale), as FlashAttention-2 does: the max
    // is taken over the raw scores and scaled once per row (scale > 0, so the order holds), which
    // saves a multiply per score. A tile whose every key is valid and (causal) at or before the
    // block's first query needs no mask: the per-element compares are spent only on the tiles at
    // the edges and the diagonal.
    const bool unmasked = n0 + BN <= sr.len_k && (!p.causal || n0 + BN - 1 <= m0);
    const float scale = p.scale_log2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (!unmasked) {
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = m0 + r_lo(mt) + (e < 2 ? 0 : 8), col = n0 + nt * 8 + 2 * t4 + (e & 1);
            const bool visible = col < sr.len_k && (!p.causal || col <= row);
            if (!visible) s[mt][nt][e] = -INFINITY;
          }
        }
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(s[mt][nt][0], s[mt][nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[mt][nt][2], s[mt][nt][3]));
      }
      float base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));
        mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
        mx[r] = fmaxf(mx[r] * scale, m_run[mt][r]);  // -inf stays -inf
        base[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a row with nothing visible yet stays 0
        const float alpha = exp2_fast(m_run[mt][r] - base[r]);
        m_run[mt][r] = mx[r];
        l_run[mt][r] *= alpha;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          acc[mt][dt][2 * r] *= alpha;
          acc[mt][dt][2 * r + 1] *= alpha;
        }
      }
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][nt][e] = exp2_fast(fmaf(s[mt][nt][e], scale, -base[e >> 1]));
          l_run[mt][e >> 1] += s[mt][nt][e];  // lane-partial sums; the quad is summed at the end
        }
      }
      if (p.dropout) {  // the normalizer keeps every probability; O only the kept ones
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = m0 + r_lo(mt) + (e < 2 ? 0 : 8), col = n0 + nt * 8 + 2 * t4 + (e & 1);
            if (s[mt][nt][e] == 0.f) continue;
            const uint64_t idx =
                ((static_cast<uint64_t>(b) * p.heads + h) * p.max_len_q + row) * p.max_len_k + col;
            const bool keep = (dropout_bits(p.seed, p.offset, idx) >> 8) >= p.drop_threshold;
            s[mt][nt][e] = keep ? s[mt][nt][e] * p.drop_scale : 0.f;
          }
        }
      }
    }

    cp_async_wait_all();
    block_sync();  // V[nb] landed; everyone is done reading K[nb]
    if (nb + 1 < n_blocks) {
      load_tile<BN, D, kThreads, true>(sK, kg + (n0 + BN) * rs, rs, sr.len_k - n0 - BN, p.k, tid);
      cp_async_commit();
    }

    // O += P V[nb]: P straight from the accumulators (C layout of n-tiles 2k, 2k+1 = A of k).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) acc_to_a<T>(s[mt], kk, a[mt]);
#pragma unroll
      for (int dt2 = 0; dt2 < D / 16; ++dt2) {
        uint32_t bv[4];  // b0, b1 of dim tiles 2·dt2 and 2·dt2 + 1
        ldsm_x4_trans(bv, sV + swz<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                      dt2 * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(acc[mt][2 * dt2], a[mt], bv[0], bv[1]);
          mma16816<T>(acc[mt][2 * dt2 + 1], a[mt], bv[2], bv[3]);
        }
      }
    }
  }

  // O = acc / l and the row log-sum-exp, as flash_bwd reads them.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    write_o_lse<T, D>([&](int dt, int i) { return acc[mt][dt][i]; }, l_run[mt], m_run[mt], og, rs,
                      lse, r_lo(mt), r_lo(mt) + 8, rows_here, t4);
}

}  // namespace mh::cuda::flash
