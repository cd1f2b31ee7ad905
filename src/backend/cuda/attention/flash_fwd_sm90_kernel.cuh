// The Hopper forward kernel (see flash_fwd_sm90.cu for the scheme and its resources), in a header
// of its own so that tests/emu/test_flash_sm90_emu.cpp runs this same source on the CPU.
#pragma once

#include <cmath>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_common.cuh"
#include "backend/cuda/attention/flash_sm90_common.cuh"

namespace mh::cuda::flash {

// Tiles: BM = 64 · NWG query rows per block (one consumer warpgroup per 64), BN keys per K/V
// tile, a ring of kStages K/V tiles. Threads: the consumer warpgroups, then the producer (the
// warpgroups start at warp indices divisible by 4, as wgmma requires).
// OVL = false: one producer warp; each warpgroup runs S = Q Kᵀ, the softmax and O += P V one
// after the other (the form that ran on an H200, docs/perf/attention.md).
// OVL = true (FlashAttention-3's intra-warpgroup overlap): the softmax of key tile n runs while
// the tensor cores compute O += P V of tile n − 1; a producer warpgroup gives its registers to
// the consumers (setmaxnreg), which hold S of tile n in fp32 and P of tile n − 1 in 16 bits.
// Two consumer warpgroups (128-row blocks), or at head_dim 64 three (192-row blocks, as
// FlashAttention-3 there, where the exponentials cost as much as the MMAs and more warps per SM
// hide more of them; head_dim 128's O accumulator does not fit the 160 registers).
template <typename T, int D, int BN, int NWG, bool OVL = false>
struct Sm90Fwd {
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128 (wgmma N)");
  static_assert(NWG >= 1 && NWG <= 3, "one to three consumer warpgroups");
  static_assert(OVL ? NWG >= 2 : NWG <= 2, "plain: 1 or 2 consumer warpgroups; overlap: 2 or 3");
  static_assert(NWG < 3 || D == 64, "three consumer warpgroups at head_dim 64 only");
  static_assert(sizeof(T) == 2, "16-bit elements");
  static constexpr int kBM = 64 * NWG;
  // The overlapped form releases a stage only after the next tile's S is computed: a third stage
  // (head_dim 64; 128 has no room) keeps the copies a tile ahead of that.
  static constexpr int kStages = OVL && D == 64 ? 3 : 2;
  static constexpr int kConsumers = 128 * NWG;
  static constexpr int kThreads = 128 * NWG + (OVL ? 128 : 32);  // sm90_fwd_threads
  // Registers (setmaxnreg, OVL only): the producer warpgroup gives up what the consumers take,
  // 128 · kProducerRegs + 128 · NWG · kConsumerRegs <= 64 Ki, from the launch's 168 (NWG 2) or
  // 128 (NWG 3) per thread.
  static constexpr int kProducerRegs = NWG == 3 ? 32 : 40, kConsumerRegs = NWG == 3 ? 160 : 232;
  static constexpr int kCols = D / 64;  // 64-column blocks of a tile (one TMA box each)
  // Byte offsets from the 1024-byte aligned base of dynamic shared memory.
  static constexpr int kQBytes = kBM * D * 2, kTileBytes = BN * D * 2;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kQBytes;                                 // kStages × [BN][D]
  static constexpr int kV = kK + kStages * kTileBytes;                    // kStages × [BN][D]
  static constexpr int kBar = kV + kStages * kTileBytes;                  // q_full, full[], empty[]
  static constexpr int kSmemBytes = 1024 + kBar + 8 * (1 + 2 * kStages);  // + alignment slack
};

constexpr int sm90_fwd_threads(int nwg, bool ovl = false) {
  return 128 * nwg + (ovl ? 128 : 32);
}

template <typename T>
struct Sm90FwdParams : FlashShape {
  TmaMap tq, tk, tv;  // Q, K, V as token_tma_spec describes them
  T* o;
  float* lse;
};

// The kernel's arguments (host code; the launcher encodes each TmaSpec into a CUtensorMap, the
// emulation uses the spec itself).
template <typename T, int D, int BN, int NWG, bool OVL = false, typename Encode>
inline Sm90FwdParams<T> sm90_fwd_params(const AttnProblem& pr, const AttnFwdIO& io,
                                        Encode&& encode) {
  using C = Sm90Fwd<T, D, BN, NWG, OVL>;
  Sm90FwdParams<T> p;
  static_cast<FlashShape&>(p) = flash_shape(pr);
  p.tq = encode(token_tma_spec(io.q, pr.total_q, pr.heads, D, C::kBM));
  p.tk = encode(token_tma_spec(io.k, pr.total_k, pr.heads, D, BN));
  p.tv = encode(token_tma_spec(io.v, pr.total_k, pr.heads, D, BN));
  p.o = static_cast<T*>(io.o);
  p.lse = io.lse;
  return p;
}

// __launch_bounds__ with a minimum of 1 block where setmaxnreg is used (else ptxas may ignore it).
template <typename T, int D, int BN, int NWG, bool OVL = false>
MH_FLASH_KERNEL(sm90_fwd_threads(NWG, OVL), 1)
flash_fwd_sm90_kernel(const MH_GRID_CONSTANT Sm90FwdParams<T> p) {
#if defined(MH_SM90A_DEVICE) || defined(MH_FLASH_EMU)
  using C = Sm90Fwd<T, D, BN, NWG, OVL>;
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
  const int tid = thread_x(), warp = warp_index(), lane = tid & 31;
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

  if (warp >= 4 * NWG) {  // the producer: one lane of its first warp issues every copy
    if constexpr (OVL) setmaxnreg_dec<C::kProducerRegs>();
    if (warp != 4 * NWG) return;
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
  if constexpr (OVL) setmaxnreg_inc<C::kConsumerRegs>();

  // Consumer warpgroup wg: query rows [64·wg, 64·wg + 64) of the block; this lane's two rows.
  const int wg = warp >> 2, g = lane >> 2, t4 = lane & 3;
  const int r_lo = 64 * wg + 16 * (warp & 3) + g, r_hi = r_lo + 8;
  const uint32_t q_addr = smem_addr(sQ) + 64 * wg * 128;  // this warpgroup's 64 rows

  float acc[D / 2];  // O: 64 × D per warpgroup (the D layout of m64nDk16)
#pragma unroll
  for (int i = 0; i < D / 2; ++i) acc[i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  float sc[BN / 2];  // S of one key tile, then its P (fp32)

  // Waits for key tile nb; V rows past the sequence hold other tokens (or junk, even NaN, in a
  // padded batch): their P is 0, but 0 · NaN is not, so they become zeros before the tensor cores
  // read them.
  auto wait_tile = [&](int nb) {
    const int n0 = nb * BN, s = nb % C::kStages;
    mbar_wait(&full[s], (nb / C::kStages) & 1);
    if (n0 + BN > sr.len_k) {
      const int first = sr.len_k > n0 ? sr.len_k - n0 : 0;
      const int chunks = (BN - first) * 8 * C::kCols;  // 16-byte chunks
      for (int i = tid; i < chunks; i += C::kConsumers) {
        const int c = i / ((BN - first) * 8), r = first + (i / 8) % (BN - first), x = i % 8;
        smem_zero16(reinterpret_cast<unsigned char*>(sV(s)) + c * BN * 128 + r * 128 + x * 16);
      }
      fence_proxy_async();
      named_bar_sync(1, C::kConsumers);
    }
  };
  // S = Q K[nb]ᵀ into sc: 64 × BN per warpgroup, D / 16 k-steps, both operands K-major (one
  // commit group, not waited for).
  auto issue_s = [&](int nb) {
    const int s = nb % C::kStages;
    const uint64_t da = smem_desc_sw128(q_addr, 16, 1024),
                   db = smem_desc_sw128(smem_addr(sK(s)), 16, 1024);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t col_block = (kk / 4), k_off = (kk % 4) * 32;
      wgmma_ss<T, BN, 0>(sc, desc_advance(da, col_block * kBM * 128 + k_off),
                         desc_advance(db, col_block * BN * 128 + k_off), kk > 0);
    }
    wgmma_commit();
  };
  // O += P V[nb], P as wgmma's A from registers (k-step kk: pa[kk], the D layout of column tiles
  // 2kk, 2kk+1), V [keys][D] row-major = MN-major B (transpose bit), column blocks LBO = BN · 128
  // apart (one commit group, not waited for).
  auto issue_pv = [&](int nb, const uint32_t(&pa)[BN / 16][4]) {
    const int s = nb % C::kStages;
    const uint64_t db = smem_desc_sw128(smem_addr(sV(s)), BN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      wgmma_rs<T, D, 1>(acc, pa[kk], desc_advance(db, kk * 16 * 128), 1);
    wgmma_commit();
  };
  // The online softmax of tile nb in sc: mask, the running max and sum of this lane's two rows
  // in base 2, P (kept elements only under dropout) in place; returns each row's factor alpha
  // for O, which the caller applies when no MMA is writing O. As FlashAttention-3, both forms
  // fold the scale into the exponent's FMA (the max of the raw scores, scaled once per row:
  // scale > 0, so the order holds) and take exp2 as one MUFU (exp2_fast): the exponentials, not
  // the MMAs, bound a head_dim-64 tile (128 × 128 of them per block take as long on the SFUs as
  // its two GEMMs on the tensor cores). The plain form took exp2f and a multiply per score until
  // 2026-11-29, when exp2_fast cost it registers; since its helpers were shared with the
  // overlapped form, the fold takes 1-2 registers off instead and its loop over key tiles went
  // from 1087 to 828 SASS instructions (sm_90a, bf16, head_dim 64; 1184 to 927 at 128).
  auto softmax = [&](int nb, float(&alpha)[2]) {
    const int n0 = nb * BN;
    const float scale = p.scale_log2;
    // A tile whose every key is valid and (causal) at or before the block's first query needs no
    // mask: the per-element compares are spent only at the edges and the diagonal.
    // Row r sees the columns n0 + 2·t4 + c with c < lim[r] (c = (i / 4)·8 + i % 2, a constant of
    // the unrolled loop): one compare with an immediate per element.
    if (n0 + BN > sr.len_k || (p.causal && n0 + BN - 1 > m0)) {
      int lim[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = m0 + (r ? r_hi : r_lo);
        lim[r] = (p.causal ? imin(sr.len_k, row + 1) : sr.len_k) - n0 - 2 * t4;
      }
#pragma unroll
      for (int i = 0; i < BN / 2; ++i)
        if ((i / 4) * 8 + (i & 1) >= lim[(i >> 1) & 1]) sc[i] = -INFINITY;
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], sc[i]);
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));
      mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
      mx[r] = fmaxf(mx[r] * scale, m_run[r]);      // -inf stays -inf
      base[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a row with nothing visible yet stays 0
      alpha[r] = exp2_fast(m_run[r] - base[r]);
      m_run[r] = mx[r];
      l_run[r] *= alpha[r];
    }
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      const float b2 = base[(i >> 1) & 1];
      sc[i] = exp2_fast(fmaf(sc[i], scale, -b2));
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
  };
  auto rescale_o = [&](const float(&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc[i] *= alpha[(i >> 1) & 1];
  };
  auto pack_p = [&](uint32_t(&pa)[BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
      for (int j = 0; j < 4; ++j) pa[kk][j] = pack2<T>(sc[8 * kk + 2 * j], sc[8 * kk + 2 * j + 1]);
  };

  mbar_wait(q_full, 0);
  if constexpr (!OVL) {
    for (int nb = 0; nb < n_blocks; ++nb) {
      wait_tile(nb);
      wgmma_fence();
      issue_s(nb);
      wgmma_wait<0>();
      fence_regs(sc);
      float alpha[2];
      softmax(nb, alpha);
      rescale_o(alpha);
      uint32_t pa[BN / 16][4];
      pack_p(pa);
      wgmma_fence();
      issue_pv(nb, pa);
      wgmma_wait<0>();
      fence_regs(acc);
      mbar_arrive(&empty[nb % C::kStages]);  // this thread is done with K[nb] and V[nb]
    }
  } else {
    // Tile 0's S and softmax alone; then each step issues S of tile nb and O += P V of tile
    // nb − 1, computes tile nb's softmax while that MMA runs, and rescales O once it is done.
    // wgmma groups complete in order, so waiting for all but one is waiting for S.
    uint32_t pa[BN / 16][4];  // P of the tile whose O += P V is in flight
    float alpha[2];
    wait_tile(0);
    wgmma_fence();
    issue_s(0);
    wgmma_wait<0>();
    fence_regs(sc);
    softmax(0, alpha);  // O is still 0: no rescale
    pack_p(pa);
    for (int nb = 1; nb < n_blocks; ++nb) {
      wait_tile(nb);
      wgmma_fence();  // sc, pa and O were written since the last MMAs
      issue_s(nb);
      issue_pv(nb - 1, pa);
      wgmma_wait<1>();
      fence_regs(sc);
      softmax(nb, alpha);
      wgmma_wait<0>();
      fence_regs(acc);
      mbar_arrive(&empty[(nb - 1) % C::kStages]);  // done with K[nb − 1] and V[nb − 1]
      rescale_o(alpha);
      pack_p(pa);
    }
    wgmma_fence();
    issue_pv(n_blocks - 1, pa);
    wgmma_wait<0>();
    fence_regs(acc);
    mbar_arrive(&empty[(n_blocks - 1) % C::kStages]);
  }

  // O = acc / l and the row log-sum-exp, as flash_bwd reads them.
  write_o_lse<T, D>([&](int dt, int i) { return acc[4 * dt + i]; }, l_run, m_run, og, rs, lse, r_lo,
                    r_hi, rows_here, t4);
#else
  __trap();  // the sm_80 pass: this kernel exists only for sm_90a (the launcher checks)
#endif
}

}  // namespace mh::cuda::flash
