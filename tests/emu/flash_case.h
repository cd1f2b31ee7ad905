// What the emulation tests of the custom attention kernels (test_flash_emu.cpp: the sm_80 forward
// and backward; test_flash_sm90_emu.cpp: the sm_90a forward) share: one attention problem's
// random inputs in the kernels' layout, its AttnArgs for the CPU reference and AttnProblem for the
// kernels, the padded float64 copies the reference reads, the comparison of the rows a kernel
// owns, the reference row log-sum-exp, and the sm_80 backward run as flash_bwd.cu runs it.
// Include after the kernel headers (the emulation's primitives come with them).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/attention/flash_bwd_kernel.cuh"

namespace mh::cuda::flash {

// One attention problem: sequences b = 0..B-1 with (len_q[b], len_k[b]); in the padded form all
// sequences have max_len_q query rows and max_len_k key rows, of which len_k[b] are valid keys.
struct Spec {
  const char* name;
  int heads;
  std::vector<int> len_q, len_k;
  bool causal = false;
  float dropout = 0;
  bool packed = false;
  bool backward = false;  // test_flash_sm90_emu: also run the sm_80 backward on its lse
};

template <typename T>
T round_to(float x) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half(x);
  else
    return __float2bfloat16(x);
}

// ‖got − want‖ / ‖want‖ (‖got − want‖ when want is 0; infinite on NaN).
inline double rel_err(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (!std::isfinite(num)) return std::numeric_limits<double>::infinity();
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <typename T, int D>
struct FlashCase {
  // Sizes and row offsets of each sequence in the kernels' buffers (packed: back to back;
  // padded: fixed), and the inputs q, k, v, dO drawn in that order from `seed` and rounded to T.
  FlashCase(const Spec& spec, uint64_t seed) : s(spec), B(static_cast<int>(spec.len_q.size())) {
    H = s.heads;
    for (int b = 0; b < B; ++b)
      max_q = std::max(max_q, s.len_q[b]), max_k = std::max(max_k, s.len_k[b]);
    row = int64_t{H} * D;
    cu_q.assign(B + 1, 0);
    cu_k.assign(B + 1, 0);
    for (int b = 0; b < B; ++b) {
      cu_q[b + 1] = cu_q[b] + (s.packed ? s.len_q[b] : max_q);
      cu_k[b + 1] = cu_k[b] + (s.packed ? s.len_k[b] : max_k);
    }
    total_q = cu_q[B];
    total_k = cu_k[B];
    q_rows = s.packed ? s.len_q : std::vector<int>(B, max_q);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto make = [&](int64_t rows, std::vector<T>& dev) {
      dev.resize(static_cast<size_t>(rows * row));
      for (T& x : dev) x = round_to<T>(nd(rng));
    };
    make(total_q, q);
    make(total_k, k);
    make(total_k, v);
    make(total_q, dout);

    key_len.assign(s.len_k.begin(), s.len_k.end());
    args.batch = B;
    args.heads = H;
    args.len_q = max_q;
    args.len_k = max_k;
    args.head_dim = D;
    args.key_len = key_len.data();
    args.causal = s.causal;
    args.scale = 1.0 / std::sqrt(static_cast<double>(D));
    args.dropout = s.dropout;
    args.seed = 1234567;
    args.offset = 89;

    pr.dtype = std::is_same_v<T, __half> ? DType::f16 : DType::bf16;
    pr.batch = B;
    pr.heads = H;
    pr.head_dim = D;
    pr.max_len_q = max_q;
    pr.max_len_k = max_k;
    pr.total_q = total_q;
    pr.total_k = total_k;
    if (s.packed) {
      pr.cu_seqlens_q = cu_q.data();
      pr.cu_seqlens_k = cu_k.data();
    } else {
      pr.key_len = key_len.data();
    }
    pr.causal = s.causal;
    pr.scale = static_cast<float>(args.scale);
    pr.dropout = s.dropout;
    pr.seed = args.seed;
    pr.offset = args.offset;
  }
  FlashCase(const FlashCase&) = delete;  // args and pr point into the vectors
  FlashCase& operator=(const FlashCase&) = delete;

  // [B, max_len, H·D] float64: the first len[b] rows of sequence b from `dev`, zeros elsewhere.
  Tensor padded(const std::vector<T>& dev, const std::vector<int32_t>& cu,
                const std::vector<int>& len, int max_len) const {
    Tensor t = Tensor::zeros({B, max_len, row}, DType::f64);
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < len[b]; ++i)
        for (int64_t e = 0; e < row; ++e)
          t.data<double>()[(int64_t{b} * max_len + i) * row + e] =
              to_f(dev[static_cast<size_t>((cu[b] + i) * row + e)]);
    return t;
  }

  // rel_err of the first rows[b] rows of each sequence of `dev` against the padded reference.
  double err(const std::vector<T>& dev, const Tensor& ref, const std::vector<int32_t>& cu,
             const std::vector<int>& rows, int max_len) const {
    std::vector<double> got, want;
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < rows[b]; ++i)
        for (int64_t e = 0; e < row; ++e) {
          got.push_back(to_f(dev[static_cast<size_t>((cu[b] + i) * row + e)]));
          want.push_back(ref.data<double>()[(int64_t{b} * max_len + i) * row + e]);
        }
    return rel_err(got, want);
  }

  // ln Σ_j<n exp(scale · q_i · k_j) for query row i of (b, h), from the padded float64 inputs;
  // +inf when n = 0.
  double ref_lse(const Tensor& q64, const Tensor& k64, int b, int h, int i, int n) const {
    double m = -INFINITY, sum = 0;
    std::vector<double> sc(static_cast<size_t>(std::max(n, 0)));
    for (int j = 0; j < n; ++j) {
      double dot = 0;
      for (int e = 0; e < D; ++e)
        dot += q64.data<double>()[(int64_t{b} * max_q + i) * row + h * D + e] *
               k64.data<double>()[(int64_t{b} * max_k + j) * row + h * D + e];
      sc[j] = dot * args.scale;
      m = std::max(m, sc[j]);
    }
    for (int j = 0; j < n; ++j) sum += std::exp(sc[j] - m);
    return n > 0 ? m + std::log(sum) : INFINITY;
  }

  // The sm_80 backward on the forward's O and lse: D = rowsum(dO ∘ O) and the dQ conversion as
  // flash_bwd.cu's small kernels do, flash_bwd_kernel in between. dk, dv start poisoned; dq too,
  // unless the kernel stores dQ itself (bwd_dq_direct, as the launcher chooses; `accumulate`
  // forces the fp32 accumulator), where the launcher zeroes it first.
  // TILES: flash_bwd_tiles_kernel (FlashAttention-2's layout, 128 × 128, head_dim 64) instead.
  template <int BBN = kBwdBN, int BBM = kBwdBMOf<D>, bool TILES = false>
  void run_backward(std::vector<T>& o, std::vector<float>& lse, std::vector<T>& dq,
                    std::vector<T>& dk, std::vector<T>& dv, bool accumulate = false) {
    static_assert(!TILES || (D == 64 && BBN == kTilesBN),
                  "the tiles kernel: head_dim 64, 128 keys");
    std::vector<float> dsum = row_dsum(o), dq_acc(q.size(), 0.f);
    const T nan_t = round_to<T>(std::numeric_limits<float>::quiet_NaN());
    const bool direct = !accumulate && bwd_dq_direct(pr, BBN);
    dq.assign(q.size(), direct ? round_to<T>(0.f) : nan_t);
    dk.assign(k.size(), nan_t);
    dv.assign(k.size(), nan_t);
    const BwdParams<T> bp =
        bwd_params<T>(pr,
                      AttnBwdIO{q.data(), k.data(), v.data(), o.data(), dout.data(), lse.data(),
                                dq.data(), dk.data(), dv.data()},
                      dq_acc.data(), dsum.data(), direct);
    if constexpr (TILES)
      emu_launch((max_k + BBN - 1) / BBN, H, B, kTilesThreads, bwd_tiles_smem_bytes<T>(),
                 [&] { flash_bwd_tiles_kernel<T>(bp); });
    else
      emu_launch((max_k + BBN - 1) / BBN, H, B, bwd_threads(BBN), bwd_smem_bytes<T, D, BBN, BBM>(),
                 [&] { flash_bwd_kernel<T, D, BBN, BBM>(bp); });
    if (!direct)
      for (size_t i = 0; i < dq.size(); ++i) dq[i] = round_to<T>(dq_acc[i]);
  }

  // D = rowsum(dO ∘ O) [H, total_q], as flash_bwd.cu's dot_do_o computes it.
  std::vector<float> row_dsum(const std::vector<T>& o) const {
    std::vector<float> dsum(static_cast<size_t>(H * total_q));
    for (int64_t r = 0; r < total_q; ++r)
      for (int h = 0; h < H; ++h) {
        float acc = 0;
        for (int e = 0; e < D; ++e)
          acc += to_f(dout[r * row + h * D + e]) * to_f(o[r * row + h * D + e]);
        dsum[h * total_q + r] = acc;
      }
    return dsum;
  }

  const Spec& s;
  int B, H = 0, max_q = 0, max_k = 0;
  int64_t row = 0, total_q = 0, total_k = 0;
  std::vector<int32_t> cu_q, cu_k, key_len;
  std::vector<int> q_rows;  // query rows each sequence owns in the kernels' buffers
  std::vector<T> q, k, v, dout;
  AttnArgs args;   // for CpuBackend on the padded float64 copies
  AttnProblem pr;  // for the kernels
};

}  // namespace mh::cuda::flash
