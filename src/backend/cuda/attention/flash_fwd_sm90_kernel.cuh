// The Hopper forward kernel (see flash_fwd_sm90.cu for the scheme and its resources), in a header
// of its own so that tests/emu/test_flash_sm90_emu.cpp runs this same source on the CPU.
#pragma once

#include <cmath>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_common.cuh"
#include "backend/cuda/attention/flash_sm90_common.cuh"

namespace mh::cuda::flash {

// Tiles: BM = 64 · NWG query rows per block (one consumer warpgroup per 64), BN keys per K/V
// tile, a ring of kSm90Stages K/V tiles. Threads: the consumer warpgroups, then one producer warp
// (the warpgroups start at warp indices divisible by 4, as wgmma requires).
template <typename T, int D, int BN, int NWG>
struct Sm90Fwd {
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128 (wgmma N)");
  static_assert(NWG >= 1 && NWG <= 2, "one or two consumer warpgroups");
  static_assert(sizeof(T) == 2, "16-bit elements");
  static constexpr int kBM = 64 * NWG;
  static constexpr int kStages = 2;
  static constexpr int kConsumers = 128 * NWG;
  static constexpr int kThreads = 128 * NWG + 32;  // sm90_fwd_threads
  static constexpr int kCols = D / 64;             // 64-column blocks of a tile (one TMA box each)
  // Byte offsets from the 1024-byte aligned base of dynamic shared memory.
  static constexpr int kQBytes = kBM * D * 2, kTileBytes = BN * D * 2;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kQBytes;                                 // kStages × [BN][D]
  static constexpr int kV = kK + kStages * kTileBytes;                    // kStages × [BN][D]
  static constexpr int kBar = kV + kStages * kTileBytes;                  // q_full, full[], empty[]
  static constexpr int kSmemBytes = 1024 + kBar + 8 * (1 + 2 * kStages);  // + alignment slack
};

constexpr int sm90_fwd_threads(int nwg) {
  return 128 * nwg + 32;
}

template <typename T>
struct Sm90FwdParams : FlashShape {
  TmaMap tq, tk, tv;  // Q, K, V as token_tma_spec describes them
  T* o;
  float* lse;
};

// The kernel's arguments (host code; the launcher encodes each TmaSpec into a CUtensorMap, the
// emulation uses the spec itself).
template <typename T, int D, int BN, int NWG, typename Encode>
inline Sm90FwdParams<T> sm90_fwd_params(const AttnProblem& pr, const AttnFwdIO& io,
                                        Encode&& encode) {
  using C = Sm90Fwd<T, D, BN, NWG>;
  Sm90FwdParams<T> p;
  static_cast<FlashShape&>(p) = flash_shape(pr);
  p.tq = encode(token_tma_spec(io.q, pr.total_q, pr.heads, D, C::kBM));
  p.tk = encode(token_tma_spec(io.k, pr.total_k, pr.heads, D, BN));
  p.tv = encode(token_tma_spec(io.v, pr.total_k, pr.heads, D, BN));
  p.o = static_cast<T*>(io.o);
  p.lse = io.lse;
  return p;
}

template <typename T, int D, int BN, int NWG>
MH_FLASH_KERNEL(sm90_fwd_threads(NWG))
flash_fwd_sm90_kernel(const MH_GRID_CONSTANT Sm90FwdParams<T> p) {
#if defined(MH_SM90A_DEVICE) || defined(MH_FLASH_EMU)
  using C = Sm90Fwd<T, D, BN, NWG>;
  constexpr int kBM = C::kBM;
  MH_FLASH_SMEM(smem_raw);
  // 128-byte swizzled tiles must sit on 1024-byte boundaries of the shared address space.
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  T* sQ = reinterpret_cast<T*>(smem + C::kQ);  // kCols × [kBM][64], swizzled
  auto sK = [&](int s) { return reinterpret_cast<T*>(smem + C::kK + s * C::kTileBytes); };
  auto sV = [&](int s) { return reinterpret_cast<T*>(smem + C::kV + s * C::kTileBytes); };
  uint64_t* q_full = reinterpret_cast<uint64_t*>(smem + C::kBar);
  uint64_t* full = q_full + 1;          // [kStages]: K and V of the stage landed
  uint64_t* empty = full + C::kStages;  // [kStages]: every consumer is done with the stage

  const int b = block_z(), h = block_y(), m0 = block_x() * kBM;
  const SeqRows sr = seq_rows(b, p.cu_q, p.cu_k, p.key_len, p.max_len_q, p.max_len_k);
  if (m0 >= sr.len_q) return;  // packed: this sequence is shorter than the longest
  const int tid = thread_x(), warp = tid >> 5, lane = tid & 31;
  const int64_t rs = static_cast<int64_t>(p.heads) * D;  // elements between token rows
  T* og = p.o + (sr.q0 + m0) * rs + h * D;
  float* lse = p.lse + h * p.total_q + sr.q0 + m0;
  const int rows_here = imin(kBM, sr.len_q - m0);
  // Keys this block can see: all valid ones, and with the causal mask none past its last query.
  const int n_end = p.causal ? imin(sr.len_k, m0 + kBM) : sr.len_k;
  const int n_blocks = n_end > 0 ? (n_end + BN - 1) / BN : 0;

  if (n_blocks == 0) {  // no visible key: O = 0, lse = +inf (backward's P is then 0)
    for (int i = tid; i < rows_here * (D / 2); i += C::kThreads) {
      const int r = i / (D / 2), c = (i % (D / 2)) * 2;
      *reinterpret_cast<uint32_t*>(og + r * rs + c) = pack2<T>(0.f, 0.f);
    }
    for (int r = tid; r < rows_here; r += C::kThreads) lse[r] = INFINITY;
    return;
  }

  if (tid == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < C::kStages; ++s) {
      mbar_init(&full[s], 1);               // the producer's arrive (+ the copies' bytes)
      mbar_init(&empty[s], C::kConsumers);  // every consumer thread
    }
    mbar_fence_init();
  }
  block_sync();

  if (warp == 4 * NWG) {  // the producer warp: one lane issues every copy
    if (lane == 0) {
      mbar_arrive_expect_tx(q_full, C::kQBytes);
      for (int c = 0; c < C::kCols; ++c)
        tma_load_4d(sQ + c * kBM * 64, &p.tq, 0, c, h, sr.q0 + m0, q_full);
      for (int nb = 0; nb < n_blocks; ++nb) {
        const int s = nb % C::kStages, round = nb / C::kStages;
        mbar_wait(&empty[s], (round & 1) ^ 1);  // round 0: passes on the fresh barrier
        mbar_arrive_expect_tx(&full[s], 2 * C::kTileBytes);
        const int row = sr.k0 + nb * BN;  // rows past the sequence: masked (K) or zeroed (V)
        for (int c = 0; c < C::kCols; ++c) {
          tma_load_4d(sK(s) + c * BN * 64, &p.tk, 0, c, h, row, &full[s]);
          tma_load_4d(sV(s) + c * BN * 64, &p.tv, 0, c, h, row, &full[s]);
        }
      }
    }
    return;
  }

  // Consumer warpgroup wg: query rows [64·wg, 64·wg + 64) of the block; this lane's two rows.
  const int wg = warp >> 2, g = lane >> 2, t4 = lane & 3;
  const int r_lo = 64 * wg + 16 * (warp & 3) + g, r_hi = r_lo + 8;
  const uint32_t q_addr = smem_addr(sQ) + 64 * wg * 128;  // this warpgroup's 64 rows

  float acc[D / 2];  // O: 64 × D per warpgroup (the D layout of m64nDk16)
#pragma unroll
  for (int i = 0; i < D / 2; ++i) acc[i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  mbar_wait(q_full, 0);

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BN, s = nb % C::kStages;
    mbar_wait(&full[s], (nb / C::kStages) & 1);
    if (n0 + BN > sr.len_k) {
      // V rows past the sequence hold other tokens (or junk, even NaN, in a padded batch): their
      // P is 0, but 0 · NaN is not, so they become zeros, before the tensor cores read them.
      const int first = sr.len_k > n0 ? sr.len_k - n0 : 0;
      const int chunks = (BN - first) * 8 * C::kCols;  // 16-byte chunks
      for (int i = tid; i < chunks; i += C::kConsumers) {
        const int c = i / ((BN - first) * 8), r = first + (i / 8) % (BN - first), x = i % 8;
        smem_zero16(reinterpret_cast<unsigned char*>(sV(s)) + c * BN * 128 + r * 128 + x * 16);
      }
      fence_proxy_async();
      named_bar_sync(1, C::kConsumers);
    }

    // S = Q K[nb]ᵀ: 64 × BN per warpgroup, D / 16 k-steps, both operands K-major.
    float sc[BN / 2];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t col_block = (kk / 4), k_off = (kk % 4) * 32;
      const uint64_t da = smem_desc_sw128(q_addr + col_block * kBM * 128 + k_off, 16, 1024);
      const uint64_t db =
          smem_desc_sw128(smem_addr(sK(s)) + col_block * BN * 128 + k_off, 16, 1024);
      wgmma_ss<T, BN, 0>(sc, da, db, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(sc);

    // Scale into base 2, mask, and the online softmax update of this lane's two rows.
    float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      const int row = m0 + ((i & 2) ? r_hi : r_lo), col = n0 + (i / 4) * 8 + 2 * t4 + (i & 1);
      const bool visible = col < sr.len_k && (!p.causal || col <= row);
      sc[i] = visible ? sc[i] * p.scale_log2 : -INFINITY;
      mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], sc[i]);
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));
      mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
      base[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a row with nothing visible yet stays 0
      // exp2f, not exp2_fast as in flash_fwd: here it cost 3-4 registers, and head_dim 128 spilled
      // at this kernel's 168-register cap.
      const float alpha = exp2f(m_run[r] - base[r]);
      m_run[r] = mx[r];
      l_run[r] *= alpha;
#pragma unroll
      for (int i = 0; i < D / 2; ++i)
        if (((i >> 1) & 1) == r) acc[i] *= alpha;
    }
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      sc[i] = exp2f(sc[i] - base[(i >> 1) & 1]);
      l_run[(i >> 1) & 1] += sc[i];  // lane-partial sums; the quad is summed at the end
    }
    if (p.dropout) {  // the normalizer keeps every probability; O only the kept ones
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) {
        const int row = m0 + ((i & 2) ? r_hi : r_lo), col = n0 + (i / 4) * 8 + 2 * t4 + (i & 1);
        if (sc[i] == 0.f) continue;
        const uint64_t idx =
            ((static_cast<uint64_t>(b) * p.heads + h) * p.max_len_q + row) * p.max_len_k + col;
        const bool keep = (dropout_bits(p.seed, p.offset, idx) >> 8) >= p.drop_threshold;
        sc[i] = keep ? sc[i] * p.drop_scale : 0.f;
      }
    }

    // O += P V[nb]: P from the registers (D layout of column tiles 2k, 2k+1 = A of k-step k),
    // V [keys][D] row-major = MN-major B (transpose bit), column blocks LBO = BN · 128 apart.
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
      a[1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
      a[2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
      a[3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
      const uint64_t db = smem_desc_sw128(smem_addr(sV(s)) + kk * 16 * 128, BN * 128, 1024);
      wgmma_rs<T, D, 1>(acc, a, db, 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(acc);
    mbar_arrive(&empty[s]);  // this thread is done with K[nb] and V[nb]
  }

  // O = acc / l and the row log-sum-exp, as flash_bwd reads them.
  write_o_lse<T, D>([&](int dt, int i) { return acc[4 * dt + i]; }, l_run, m_run, og, rs, lse, r_lo,
                    r_hi, rows_here, t4);
#else
  __trap();  // the sm_80 pass: this kernel exists only for sm_90a (the launcher checks)
#endif
}

}  // namespace mh::cuda::flash
