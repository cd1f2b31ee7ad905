// The Hopper backward kernel (see flash_bwd_sm90.cu for the scheme and its resources), in a header
// of its own so that tests/emu/test_flash_sm90_emu.cpp runs this same source on the CPU.
#pragma once

#include <cmath>
#include <type_traits>

#include "backend/cuda/attention/attention_problem.h"
#include "backend/cuda/attention/flash_common.cuh"
#include "backend/cuda/attention/flash_sm90_common.cuh"

namespace mh::cuda::flash {

// Tiles: kBN = 128 keys per block, 64 per consumer warpgroup; kBM query rows per step, streamed
// through a kStages ring. Head_dim 64 takes 128 queries per step (the S and dP accumulators,
// 64 keys × 128 queries, are 64 floats each), head_dim 128 takes 64 (its dK and dV accumulators
// are twice as large). dQ of a step (kBM × D) is split over the two warpgroups by rows (kBM 128)
// or by 64-column halves (kBM 64): either way each warpgroup's wgmma is 64 × 64 × 128 keys.
constexpr int kSm90BwdBN = 128;  // keys per block, for every head_dim and element type
// Whether every query row's dQ comes from one block (no sequence has more keys than a block), so
// that the block stores it rounded (bwd_dq_direct in flash_bwd_kernel.cuh, for this kernel).
inline bool sm90_bwd_dq_direct(const AttnProblem& pr) {
  return pr.max_len_k <= kSm90BwdBN;
}
template <typename T, int D>
struct Sm90Bwd {
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  static_assert(sizeof(T) == 2, "16-bit elements");
  static constexpr int kBN = kSm90BwdBN, kBM = D == 64 ? 128 : 64, kStages = 2;
  static constexpr int kConsumers = 256;
  static constexpr int kThreads = 384;  // sm90_bwd_threads: 2 consumer warpgroups, 1 producer
  static constexpr int kCols = D / 64;  // 64-column blocks of a Q/K/V/dO tile (one TMA box each)
  static constexpr int kDqRows = kBM == 128 ? 64 : 0;  // row offset of warpgroup 1's dQ share
  static constexpr int kDqCol = kBM == 128 ? 0 : 64;   // column offset of it
  // Registers (setmaxnreg): the producer warpgroup gives up what the consumers take,
  // 128 · kProducerRegs + 256 · kConsumerRegs <= 64 Ki.
  static constexpr int kProducerRegs = 40, kConsumerRegs = 232;
  // Byte offsets from the 1024-byte aligned base of dynamic shared memory; every tile is 128B
  // swizzled, in 64-column blocks of [rows][64].
  static constexpr int kKVBytes = kBN * D * 2, kQBytes = kBM * D * 2, kDsBytes = kBM * kBN * 2;
  // dQ of a step in fp32 for the bulk reduction (dq_bulk), [kBM][D] with rows kDqStride bytes
  // apart: 8 floats of padding put the rows that a warp's float2 stores reach in one pass (its
  // four g values) on different banks; each row stays contiguous, one bulk copy.
  static constexpr int kDqStride = (D + 8) * 4;
  static constexpr int kK = 0;                            // [kBN][D]
  static constexpr int kV = kK + kKVBytes;                // [kBN][D]
  static constexpr int kQ = kV + kKVBytes;                // kStages × [kBM][D]
  static constexpr int kDo = kQ + kStages * kQBytes;      // kStages × [kBM][D]
  static constexpr int kDs = kDo + kStages * kQBytes;     // 2 × dS [kBM queries][kBN keys]
  static constexpr int kLse = kDs + 2 * kDsBytes;         // kStages × [kBM] fp32, base 2
  static constexpr int kDsum = kLse + kStages * kBM * 4;  // kStages × [kBM] fp32
  static constexpr int kBar = kDsum + kStages * kBM * 4;  // kv_full, full[], empty[]
  // [kBM][D + 8] fp32 (dq_bulk), last, so that the atomic form launches without it; its rows
  // 16-byte aligned for the bulk copies.
  static constexpr int kDq = (kBar + 8 * (1 + 2 * kStages) + 15) / 16 * 16;
  static constexpr int kDqBytes = kBM * kDqStride;
  static constexpr int kSmemBytes = 1024 + kDq + kDqBytes;  // + alignment slack
  // Named barriers (0 is the block's): the consumers' dS exchange, and the dQ buffer's
  // handshake with the warp that reduces it into global memory (dq_bulk): full when the
  // consumers have stored a step's dQ, empty when the bulk copies have read it.
  static constexpr int kBarDs = 1, kBarDqFull = 2, kBarDqEmpty = 3;
  static constexpr int kDqHandshake = kConsumers + 32;  // the consumers and the writer warp
};

constexpr int sm90_bwd_threads() {
  return 384;
}

template <typename T>
struct Sm90BwdParams : FlashShape {
  TmaMap tq, tk, tv, tdo;  // Q, K, V, dO as token_tma_spec describes them
  const float* lse;        // [H, total_q], natural log
  const float* dsum;       // [H, total_q]: rowsum(dO ∘ O)
  float* dq_acc;           // [total_q, H·D] fp32, zeroed (unless dq_direct)
  T *dq, *dk, *dv;
  bool dq_direct;  // dQ's rows are stored to dq (each from one block), not added to dq_acc
  bool dq_bulk;    // (not with dq_direct) dQ reaches dq_acc through shared memory and a bulk
                   // reduction by the producer warpgroup's second warp, not by fp32 atomics
};

// The kernel's arguments (host code; the launcher encodes each TmaSpec into a CUtensorMap, the
// emulation uses the spec itself).
template <typename T, int D, typename Encode>
inline Sm90BwdParams<T> sm90_bwd_params(const AttnProblem& pr, const AttnBwdIO& io, float* dq_acc,
                                        const float* dsum, bool dq_direct, bool dq_bulk,
                                        Encode&& encode) {
  using C = Sm90Bwd<T, D>;
  Sm90BwdParams<T> p;
  static_cast<FlashShape&>(p) = flash_shape(pr);
  p.tq = encode(token_tma_spec(io.q, pr.total_q, pr.heads, D, C::kBM));
  p.tdo = encode(token_tma_spec(io.dout, pr.total_q, pr.heads, D, C::kBM));
  p.tk = encode(token_tma_spec(io.k, pr.total_k, pr.heads, D, C::kBN));
  p.tv = encode(token_tma_spec(io.v, pr.total_k, pr.heads, D, C::kBN));
  p.lse = io.lse;
  p.dsum = dsum;
  p.dq_acc = dq_acc;
  p.dq = static_cast<T*>(io.dq);
  p.dq_direct = dq_direct;
  p.dq_bulk = dq_bulk && !dq_direct;
  p.dk = static_cast<T*>(io.dk);
  p.dv = static_cast<T*>(io.dv);
  return p;
}

// Zeroes rows [first, rows) of a swizzled [rows][D] tile (kCols column blocks of rows × 128 bytes)
// with the consumers' threads. The caller fences and synchronizes before wgmma reads the tile.
template <int D>
MH_FLASH_FN void zero_tile_rows(unsigned char* tile, int rows, int first, int tid, int nthreads) {
  const int n = rows - first, chunks = n * 8 * (D / 64);  // 16-byte chunks
  for (int i = tid; i < chunks; i += nthreads) {
    const int c = i / (n * 8), r = first + (i / 8) % n, x = i % 8;
    smem_zero16(tile + c * rows * 128 + r * 128 + x * 16);
  }
}

// kDropout: p.dropout, as a template parameter: Philox's registers spilled the head_dim-64 kernel
// (232 bytes) when it was a branch; now only the kernel with dropout pays for them.
template <typename T, int D, bool kDropout>
MH_FLASH_KERNEL(sm90_bwd_threads(), 1)
flash_bwd_sm90_kernel(const MH_GRID_CONSTANT Sm90BwdParams<T> p) {
#if defined(MH_SM90A_DEVICE) || defined(MH_FLASH_EMU)
  using C = Sm90Bwd<T, D>;
  constexpr int kBM = C::kBM, kBN = C::kBN, kStages = C::kStages;
  MH_FLASH_SMEM(smem_raw);
  // 128-byte swizzled tiles must sit on 1024-byte boundaries of the shared address space.
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  T* sK = reinterpret_cast<T*>(smem + C::kK);
  T* sV = reinterpret_cast<T*>(smem + C::kV);
  auto sQ = [&](int s) { return reinterpret_cast<T*>(smem + C::kQ + s * C::kQBytes); };
  auto sDo = [&](int s) { return reinterpret_cast<T*>(smem + C::kDo + s * C::kQBytes); };
  auto sDs = [&](int buf) { return smem + C::kDs + buf * C::kDsBytes; };
  float* sDq = reinterpret_cast<float*>(smem + C::kDq);
  float* sLse = reinterpret_cast<float*>(smem + C::kLse);
  float* sDsum = reinterpret_cast<float*>(smem + C::kDsum);
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(smem + C::kBar);
  uint64_t* full = kv_full + 1;      // [kStages]: Q, dO (TMA) and lse, D (producer lanes) landed
  uint64_t* empty = full + kStages;  // [kStages]: every consumer thread is done with the stage

  const int b = block_z(), h = block_y(), n0 = block_x() * kBN;
  const SeqRows sr = seq_rows(b, p.cu_q, p.cu_k, p.key_len, p.max_len_q, p.max_len_k);
  // Key rows this block writes: padded batches also own the rows past key_len (their gradient is
  // 0); packed batches have no such rows.
  const int k_rows = p.cu_q ? sr.len_k : p.max_len_k;
  if (n0 >= k_rows) return;
  const int tid = thread_x(), warp = warp_index(), lane = tid & 31;
  const int64_t rs = static_cast<int64_t>(p.heads) * D;
  T* dkg = p.dk + (sr.k0 + n0) * rs + h * D;
  T* dvg = p.dv + (sr.k0 + n0) * rs + h * D;
  const int keys_here = imin(kBN, k_rows - n0);
  // Causal: query i sees key j only if j <= i, so query blocks before n0 see none of these keys.
  const int m_begin = p.causal ? (n0 / kBM) * kBM : 0;
  const int n_steps =
      n0 < sr.len_k && m_begin < sr.len_q ? (sr.len_q - m_begin + kBM - 1) / kBM : 0;

  if (n_steps == 0) {  // no valid key here, or no query sees one: dK = dV = 0
    for (int i = tid; i < keys_here * (D / 2); i += C::kThreads) {
      const int r = i / (D / 2), c = (i % (D / 2)) * 2;
      *reinterpret_cast<uint32_t*>(dkg + r * rs + c) = pack2<T>(0.f, 0.f);
      *reinterpret_cast<uint32_t*>(dvg + r * rs + c) = pack2<T>(0.f, 0.f);
    }
    return;
  }

  if (tid == 0) {
    mbar_init(kv_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1 + 32);          // the copies' arrive (+ bytes), then every lane's
      mbar_init(&empty[s], C::kConsumers);  // every consumer thread
    }
    mbar_fence_init();
  }
  block_sync();

  if (warp >= 8) {  // the producer warpgroup: its first warp loads, its second reduces dQ into
                    // global memory (dq_bulk), the others leave
    setmaxnreg_dec<C::kProducerRegs>();
    if (warp == 9 && p.dq_bulk) {
      // Per step: wait for the consumers' dQ in sDq, add each of its rows in the sequence to
      // dq_acc with one bulk reduction (D fp32, contiguous), and free the buffer once they have
      // been read. The buffer starts free; the last step's is never waited for, so the arrivals
      // match the consumers' waits (one per step).
      named_bar_arrive(C::kBarDqEmpty, C::kDqHandshake);
      for (int it = 0; it < n_steps; ++it) {
        const int m0 = m_begin + it * kBM;
        named_bar_sync(C::kBarDqFull, C::kDqHandshake);
        for (int r = lane; r < kBM && m0 + r < sr.len_q; r += 32)
          bulk_reduce_add_f32(p.dq_acc + (sr.q0 + m0 + r) * rs + h * D,
                              reinterpret_cast<unsigned char*>(sDq) + r * C::kDqStride, D * 4);
        bulk_commit();
        if (it + 1 < n_steps) {
          bulk_wait_read<0>();
          named_bar_arrive(C::kBarDqEmpty, C::kDqHandshake);
        }
      }
      bulk_wait<0>();  // the additions done before the block's shared memory goes
      return;
    }
    if (warp != 8) return;
    if (lane == 0) {
      mbar_arrive_expect_tx(kv_full, 2 * C::kKVBytes);
      for (int c = 0; c < C::kCols; ++c) {
        tma_load_4d(sK + c * kBN * 64, &p.tk, 0, c, h, sr.k0 + n0, kv_full);
        tma_load_4d(sV + c * kBN * 64, &p.tv, 0, c, h, sr.k0 + n0, kv_full);
      }
    }
    for (int it = 0; it < n_steps; ++it) {
      const int s = it % kStages, m0 = m_begin + it * kBM;
      mbar_wait(&empty[s], ((it / kStages) & 1) ^ 1);  // round 0: passes on the fresh barrier
      if (lane == 0) {
        mbar_arrive_expect_tx(&full[s], 2 * C::kQBytes);
        for (int c = 0; c < C::kCols; ++c) {
          tma_load_4d(sQ(s) + c * kBM * 64, &p.tq, 0, c, h, sr.q0 + m0, &full[s]);
          tma_load_4d(sDo(s) + c * kBM * 64, &p.tdo, 0, c, h, sr.q0 + m0, &full[s]);
        }
      }
      // The rows' log-sum-exp (base 2) and D; rows past the sequence get P = 0 (lse = +inf).
      for (int r = lane; r < kBM; r += 32) {
        const bool ok = m0 + r < sr.len_q;
        const int64_t at = h * p.total_q + sr.q0 + m0 + r;
        sLse[s * kBM + r] = ok ? p.lse[at] * kLog2e : INFINITY;
        sDsum[s * kBM + r] = ok ? p.dsum[at] * p.scale : 0.f;  // D · scale: see dSᵀ below
      }
      mbar_arrive(&full[s]);  // releases this lane's stores
    }
    return;
  }

  setmaxnreg_inc<C::kConsumerRegs>();
  // Consumer warpgroup wg owns keys [64·wg, 64·wg + 64) of the block; this lane's two keys per
  // 16-row group are 16·w + g and + 8 (the wgmma D layout, rows = keys).
  const int wg = warp >> 2, w = warp & 3, g = lane >> 2, t4 = lane & 3;
  const int key0 = n0 + 64 * wg;  // this warpgroup's first key
  const uint32_t k_addr = smem_addr(sK) + 64 * wg * 128, v_addr = smem_addr(sV) + 64 * wg * 128;

  float dk[D / 2], dv[D / 2];  // 64 keys × D per warpgroup (D layout)
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

  mbar_wait(kv_full, 0);
  if (n0 + kBN > sr.len_k) {
    // K and V rows past the sequence hold other tokens (or junk, even NaN, in a padded batch):
    // P and dS are 0 there, but 0 · NaN is not, in dPᵀ = V dOᵀ and dQ = dS K.
    zero_tile_rows<D>(reinterpret_cast<unsigned char*>(sK), kBN, sr.len_k - n0, tid, C::kConsumers);
    zero_tile_rows<D>(reinterpret_cast<unsigned char*>(sV), kBN, sr.len_k - n0, tid, C::kConsumers);
    fence_proxy_async();
    named_bar_sync(C::kBarDs, C::kConsumers);
  }

  for (int it = 0; it < n_steps; ++it) {
    const int s = it % kStages, m0 = m_begin + it * kBM, buf = it & 1;
    mbar_wait(&full[s], (it / kStages) & 1);
    if (m0 + kBM > sr.len_q) {  // the same for Q and dO rows past the sequence (dV, dK)
      zero_tile_rows<D>(reinterpret_cast<unsigned char*>(sQ(s)), kBM, sr.len_q - m0, tid,
                        C::kConsumers);
      zero_tile_rows<D>(reinterpret_cast<unsigned char*>(sDo(s)), kBM, sr.len_q - m0, tid,
                        C::kConsumers);
      fence_proxy_async();
      named_bar_sync(C::kBarDs, C::kConsumers);
    }
    const uint32_t q_addr = smem_addr(sQ(s)), do_addr = smem_addr(sDo(s));

    // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: 64 keys × kBM queries per warpgroup, every operand K-major; two
    // commit groups, so that the exps of P run while dPᵀ is still on the tensor cores.
    float st[kBM / 2], dpt[kBM / 2];
    // acc = A Bᵀ over D: A this warpgroup's 64 rows of a [kBN][D] tile, B a [kBM][D] tile.
    auto keys_x_queries = [&](float(&acc)[kBM / 2], uint32_t a_addr, uint32_t b_addr) {
      const uint64_t da = smem_desc_sw128(a_addr, 16, 1024), db = smem_desc_sw128(b_addr, 16, 1024);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t off = (kk % 4) * 32;
        wgmma_ss<T, kBM, 0>(acc, desc_advance(da, (kk / 4) * kBN * 128 + off),
                            desc_advance(db, (kk / 4) * kBM * 128 + off), kk > 0);
      }
      wgmma_commit();
    };
    wgmma_fence();
    keys_x_queries(st, k_addr, q_addr);
    keys_x_queries(dpt, v_addr, do_addr);

    // With dropout, which of this thread's kBM / 2 elements are kept (bit i for element i), drawn
    // while the tensor cores work: Philox's temporaries then do not compete with the P and dS
    // math for registers (they spilled there). A rolled loop: one Philox body, a register mask.
    static_assert(kBM / 2 <= 64, "one bit per element in a 64-bit mask");
    uint64_t keep = 0;
    if constexpr (kDropout) {
#pragma unroll 1
      for (int i = 0; i < kBM / 2; ++i) {
        const int key = key0 + 16 * w + g + 8 * ((i >> 1) & 1);
        const int q = m0 + 8 * (i >> 2) + 2 * t4 + (i & 1);
        const uint64_t idx =
            ((static_cast<uint64_t>(b) * p.heads + h) * p.max_len_q + q) * p.max_len_k + key;
        if ((dropout_bits(p.seed, p.offset, idx) >> 8) >= p.drop_threshold)
          keep |= uint64_t{1} << i;
      }
    }

    // Pᵀ, then st <- P∘Z (for dV) and dpt <- dSᵀ (for dK and dQ), as flash_bwd_kernel.cuh: no
    // mask per element where every key and query of this warpgroup's tile is visible, dropout
    // decided once per step.
    const float* lse_s = sLse + s * kBM;
    const float* dsum_s = sDsum + s * kBM;
    const bool all_visible =
        key0 + 64 <= sr.len_k && m0 + kBM <= sr.len_q && (!p.causal || key0 + 63 <= m0);
    // Each masked element's exponential is computed and then replaced by 0 (a select, so an
    // infinite exp of a masked score does no harm): no predicated MUFU per element, whose
    // bookkeeping cost more than the exps it skipped. The row pairs' lse and D are one 8-byte
    // load each, and D arrives multiplied by scale (the producer's lanes), so that
    // dSᵀ = Pᵀ ∘ (dP∘Z · scale − D · scale) is one FFMA and one FMUL per element.
    auto p_and_ds = [&](auto masked, auto dropout) {
      // Masked: this lane's key row r sees the queries m0 + 2·t4 + c with vis_lo[r] <= c <
      // vis_hi[r] (causal: at or after the key; a key past the sequence sees none), c = 8·nt +
      // e % 2 a constant of the unrolled loop: two compares with immediates per element.
      int vis_lo[2] = {-1, -1}, vis_hi[2] = {0, 0};
      if constexpr (decltype(masked)::value) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int key = key0 + 16 * w + g + 8 * r;
          vis_lo[r] = p.causal ? key - m0 - 2 * t4 : -1;
          vis_hi[r] = key < sr.len_k ? sr.len_q - m0 - 2 * t4 : 0;
        }
      }
      wgmma_wait<1>();
      fence_regs(st);
#pragma unroll
      for (int nt = 0; nt < kBM / 8; ++nt) {
        const int ql = nt * 8 + 2 * t4;
        float lse0, lse1;
        load_f32x2(lse_s + ql, lse0, lse1);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = exp2_fast(st[4 * nt + e] * p.scale_log2 - (e & 1 ? lse1 : lse0));
          if constexpr (decltype(masked)::value) {
            const int c = nt * 8 + (e & 1), r = e >> 1;
            st[4 * nt + e] = c >= vis_lo[r] && c < vis_hi[r] ? x : 0.f;
          } else {
            st[4 * nt + e] = x;
          }
        }
      }
      wgmma_wait<0>();
      fence_regs(dpt);
      // dP∘Z · scale: with dropout, Z's 1 / (1 - p) and the scale are one factor.
      const float g_scale = decltype(dropout)::value ? p.scale * p.drop_scale : p.scale;
#pragma unroll
      for (int nt = 0; nt < kBM / 8; ++nt) {
        const int ql = nt * 8 + 2 * t4;
        float d0, d1;
        load_f32x2(dsum_s + ql, d0, d1);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pr = st[4 * nt + e];
          float g_val = dpt[4 * nt + e], p_used = pr;
          if constexpr (decltype(dropout)::value) {
            const int i = 4 * nt + e;
            const bool kept = (keep >> i) & 1u;
            g_val = kept ? g_val : 0.f;
            p_used = kept ? pr * p.drop_scale : 0.f;
          }
          dpt[4 * nt + e] = pr * fmaf(g_val, g_scale, -(e & 1 ? d1 : d0));
          st[4 * nt + e] = p_used;
        }
      }
    };
    with_mask(all_visible, std::bool_constant<kDropout>{}, p_and_ds);

    // P∘Z and dSᵀ rounded to T, in pairs: frag[kk] is the A operand of k-step kk of dV += (P∘Z)ᵀ dO
    // and dK += dSᵀ Q (the accumulators' column tiles 2kk, 2kk + 1), and ds_frag[j] is also what
    // stmatrix stores below. Rounding here, once, lets the fp32 tiles die before the gradient
    // MMAs are issued (with them alive, ptxas serialized the wgmmas for lack of registers).
    uint32_t p_frag[kBM / 16][4], ds_frag[kBM / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        p_frag[kk][m] = pack2<T>(st[8 * kk + 2 * m], st[8 * kk + 2 * m + 1]);
        ds_frag[kk][m] = pack2<T>(dpt[8 * kk + 2 * m], dpt[8 * kk + 2 * m + 1]);
      }

    // dSᵀ into dS[buf] as queries × keys (the K-major A of dQ = dS K), transposed by stmatrix:
    // matrix m of x4 number j is query tile 2j + m / 2 × this lane's 8-key half m % 2 (register
    // m: (key row g, queries 2·t4, +1)); lane 8m + x addresses query row x of matrix m. Two
    // buffers: a warpgroup writes buffer buf again only two steps later, past a barrier that the
    // other one reaches after its dQ of this step completed.
    unsigned char* ds = sDs(buf) + wg * kBM * 128;  // keys 64·wg.. : column block wg
#pragma unroll
    for (int j = 0; j < kBM / 16; ++j) {
      const int mat = lane >> 3, q = 16 * j + 8 * (mat >> 1) + (lane & 7);
      const int chunk = 2 * w + (mat & 1);  // keys 16·w + 8·(mat & 1) .. + 7 of column block wg
      stmatrix_x4_trans(ds_frag[j], ds + q * 128 + ((chunk ^ (q & 7)) << 4));
    }
    fence_proxy_async();  // the stores, to wgmma's reads (async proxy), before the barrier

    // dQ[m0 .. m0 + kBM) += dS K over the block's 128 keys (both warpgroups' dS): this warpgroup's
    // 64 × 64 share, A = dS (K-major), B = K read MN-major ([keys][D], keys = k).
    named_bar_sync(C::kBarDs, C::kConsumers);
    const int dq_row = wg * C::kDqRows, dq_col = wg * C::kDqCol;
    float dq[32];
    const uint64_t ds_desc = smem_desc_sw128(smem_addr(sDs(buf)) + dq_row * 128, 16, 1024);
    const uint64_t k_desc =
        smem_desc_sw128(smem_addr(sK) + (dq_col / 64) * kBN * 128, kBN * 128, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk)
      wgmma_ss<T, 64, 1>(dq, desc_advance(ds_desc, (kk / 4) * kBM * 128 + (kk % 4) * 32),
                         desc_advance(k_desc, kk * 16 * 128), kk > 0);
    wgmma_commit();
    // dV += (P∘Z)ᵀ dO and dK += dSᵀ Q: A from registers (the accumulators' column tiles 2k, 2k+1
    // are the A operand of k-step k), B = dO, Q read MN-major ([queries][D], queries = k).
    const uint64_t do_desc = smem_desc_sw128(do_addr, kBM * 128, 1024),
                   q_desc = smem_desc_sw128(q_addr, kBM * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk)
      wgmma_rs<T, D, 1>(dv, p_frag[kk], desc_advance(do_desc, kk * 16 * 128), 1);
#pragma unroll
    for (int kk = 0; kk < kBM / 16; ++kk)
      wgmma_rs<T, D, 1>(dk, ds_frag[kk], desc_advance(q_desc, kk * 16 * 128), 1);
    wgmma_commit();

    // dQ leaves as soon as its group is done (it was issued first), while dV and dK still run:
    //  - dq_direct (this block holds every key of the sequence: sentences of up to 128 tokens):
    //    dQ is complete here and stored rounded, without the accumulator, its zeroing and its
    //    conversion;
    //  - dq_bulk: into sDq, for the writer warp's bulk reductions (FlashAttention-3's way: the
    //    consumers store to shared memory, the copy engine adds whole rows to global memory);
    //  - otherwise fp32 atomics into the accumulator (blocks of other keys add to the same rows),
    //    in pairs.
    wgmma_wait<1>();
    fence_regs(dq);
    if (p.dq_bulk) {
      named_bar_sync(C::kBarDqEmpty, C::kDqHandshake);  // the last step's rows have been read
      unsigned char* row0 =
          reinterpret_cast<unsigned char*>(sDq) + (dq_row + 16 * w + g) * C::kDqStride;
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int dt = 0; dt < 8; ++dt)
          smem_store_f32x2(row0 + 8 * r * C::kDqStride + (dq_col + dt * 8 + 2 * t4) * 4,
                           dq[4 * dt + 2 * r], dq[4 * dt + 2 * r + 1]);
      fence_proxy_async();  // the stores, to the bulk copies' reads (async proxy)
      named_bar_arrive(C::kBarDqFull, C::kDqHandshake);
    } else {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int ql = dq_row + 16 * w + g + 8 * r;
        if (m0 + ql >= sr.len_q) continue;
        const int64_t at = (sr.q0 + m0 + ql) * rs + h * D + dq_col + 2 * t4;
        if (p.dq_direct) {
#pragma unroll
          for (int dt = 0; dt < 8; ++dt)
            *reinterpret_cast<uint32_t*>(p.dq + at + dt * 8) =
                pack2<T>(dq[4 * dt + 2 * r], dq[4 * dt + 2 * r + 1]);
        } else {
#pragma unroll
          for (int dt = 0; dt < 8; ++dt)
            atomic_add2(p.dq_acc + at + dt * 8, dq[4 * dt + 2 * r], dq[4 * dt + 2 * r + 1]);
        }
      }
    }
    wgmma_wait<0>();
    fence_regs(dv);
    fence_regs(dk);
    mbar_arrive(&empty[s]);  // this thread is done with Q, dO, lse and D of the stage
  }

  // dK, dV of this warpgroup's 64 keys (0 for keys no query saw, and for padding keys).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kl = 64 * wg + 16 * w + g + 8 * r;
    if (kl >= keys_here) continue;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<uint32_t*>(dkg + kl * rs + dt * 8 + 2 * t4) =
          pack2<T>(dk[4 * dt + 2 * r], dk[4 * dt + 2 * r + 1]);
      *reinterpret_cast<uint32_t*>(dvg + kl * rs + dt * 8 + 2 * t4) =
          pack2<T>(dv[4 * dt + 2 * r], dv[4 * dt + 2 * r + 1]);
    }
  }
#else
  __trap();  // the sm_80 pass: this kernel exists only for sm_90a (the launcher checks)
#endif
}

}  // namespace mh::cuda::flash
