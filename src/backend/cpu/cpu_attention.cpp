// Exact multi-head attention on the CPU: per (batch, head), S = Q Kᵀ·scale on the valid keys,
// masked softmax into `probs` (saved for backward), O = P V. Heads are strided column blocks of
// the [B, L, H*dk] projections, so the GEMMs read them in place (leading dimension H*dk).
// Attention dropout is Backend::dropout_fwd over the whole [B, H, Lq, Lk] probability tensor
// (AttnArgs): the same bits the GPU kernels draw per element.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_common.h"
#include "backend/cpu/cpu_math.h"

namespace mh {

namespace {
void check_args(const AttnArgs& a, const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t d = a.heads * a.head_dim;
  MH_CHECK(q.numel() == a.batch * a.len_q * d && k.numel() == a.batch * a.len_k * d &&
               v.numel() == k.numel(),
           "attention shapes: q ", shape_str(q.shape()), " k ", shape_str(k.shape()));
  MH_CHECK(a.key_len, "attention needs key lengths");
  MH_CHECK(a.dropout >= 0 && a.dropout < 1, "attention dropout ", a.dropout);
}
// Valid keys of sequence b: key_len[b] clamped to [0, Lk], as the GPU kernels clamp it.
inline int64_t valid_keys(const AttnArgs& a, int64_t b) {
  return std::clamp<int64_t>(a.key_len[b], 0, a.len_k);
}
// Keys query i of sequence b may see: [0, visible).
inline int64_t visible_keys(const AttnArgs& a, int64_t b, int64_t i) {
  const int64_t n = valid_keys(a, b);
  return a.causal ? std::min(n, i + 1) : n;
}
}  // namespace

void CpuBackend::attention_fwd(const AttnArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                               Tensor& out, AttnSaved& saved) {
  check_args(a, q, k, v);
  saved = AttnSaved{};
  saved.probs = empty({a.batch, a.heads, a.len_q, a.len_k}, q.dtype());
  saved.out = out;
  Tensor& probs = saved.probs;
  // With dropout, O = dropout(P) V: the dropped copy is only needed here (backward redraws it).
  Tensor dropped;
  if (a.dropout > 0) {
    dropped = empty(probs.shape(), probs.dtype());
  }
  const int64_t d = a.heads * a.head_dim, lq = a.len_q, lk = a.len_k, dk = a.head_dim;
  cpu::dispatch_float(q.dtype(), [&]<typename T>() {
    for (int64_t b = 0; b < a.batch; ++b) {
      const int64_t nk = valid_keys(a, b);  // keys past nk are padding
      for (int64_t h = 0; h < a.heads; ++h) {
        const T* qb = q.data<T>() + b * lq * d + h * dk;
        const T* kb = k.data<T>() + b * lk * d + h * dk;
        T* p = probs.data<T>() + (b * a.heads + h) * lq * lk;
        // S[:, :nk] = scale · Q Kᵀ   (Lq × nk)
        if (nk > 0) cpu::gemm_rm(false, true, lq, nk, dk, a.scale, qb, d, kb, d, 0.0, p, lk);
        for (int64_t i = 0; i < lq; ++i) {
          T* row = p + i * lk;
          const int64_t n = visible_keys(a, b, i);
          if (n == 0) {  // nothing visible: the output row is zero
            std::fill(row, row + lk, T(0));
            continue;
          }
          T mx = *std::max_element(row, row + n);
          T sum = 0;
          for (int64_t j = 0; j < n; ++j) row[j] = cpu::exp_fast<T>(row[j] - mx);
          for (int64_t j = 0; j < n; ++j) sum += row[j];
          const T inv = T(1) / sum;
          for (int64_t j = 0; j < n; ++j) row[j] *= inv;
          std::fill(row + n, row + lk, T(0));
        }
      }
    }
    if (a.dropout > 0) dropout_fwd(probs, a.dropout, a.seed, a.offset, dropped);
    const Tensor& used = a.dropout > 0 ? dropped : probs;
    for (int64_t b = 0; b < a.batch; ++b) {
      const int64_t nk = valid_keys(a, b);
      for (int64_t h = 0; h < a.heads; ++h) {
        const T* vb = v.data<T>() + b * lk * d + h * dk;
        const T* p = used.data<T>() + (b * a.heads + h) * lq * lk;
        T* ob = out.data<T>() + b * lq * d + h * dk;
        // O = P V   (Lq × dk), written into this head's columns
        if (nk > 0)
          cpu::gemm_rm(false, false, lq, dk, nk, 1.0, p, lk, vb, d, 0.0, ob, d);
        else
          for (int64_t i = 0; i < lq; ++i) std::fill(ob + i * d, ob + i * d + dk, T(0));
      }
    }
  });
}

void CpuBackend::attention_bwd(const AttnArgs& a, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const AttnSaved& saved, Tensor& dq,
                               Tensor& dk_out, Tensor& dv) {
  check_args(a, q, k, v);
  const Tensor& probs = saved.probs;
  MH_CHECK(probs.numel() == a.batch * a.heads * a.len_q * a.len_k,
           "attention_bwd: saved probabilities missing or of the wrong shape");
  const int64_t d = a.heads * a.head_dim, lq = a.len_q, lk = a.len_k, dk = a.head_dim;
  // G = dO Vᵀ for every (b, h) first, so that dropout's backward can run over the whole
  // [B, H, Lq, Lk] tensor with the forward's element indices; then dS = P ∘ (G − rowsum(G ∘ P)).
  Tensor g = zeros(probs.shape(), probs.dtype());
  Tensor dropped;
  if (a.dropout > 0) {
    dropped = empty(probs.shape(), probs.dtype());
    dropout_fwd(probs, a.dropout, a.seed, a.offset, dropped);
  }
  const Tensor& used = a.dropout > 0 ? dropped : probs;  // what multiplied V in forward
  cpu::dispatch_float(q.dtype(), [&]<typename T>() {
    for (int64_t b = 0; b < a.batch; ++b) {
      const int64_t nk = valid_keys(a, b);
      if (nk == 0) continue;
      for (int64_t h = 0; h < a.heads; ++h) {
        const T* vb = v.data<T>() + b * lk * d + h * dk;
        const T* gob = dout.data<T>() + b * lq * d + h * dk;
        T* gp = g.data<T>() + (b * a.heads + h) * lq * lk;
        cpu::gemm_rm(false, true, lq, nk, dk, 1.0, gob, d, vb, d, 0.0, gp, lk);  // Lq × nk
      }
    }
    if (a.dropout > 0) dropout_bwd(g, a.dropout, a.seed, a.offset, g);
    for (int64_t b = 0; b < a.batch; ++b) {
      const int64_t nk = valid_keys(a, b);
      // Keys past nk get no gradient; zero them once since the GEMMs below skip them.
      T* dkb_all = dk_out.data<T>() + b * lk * d;
      T* dvb_all = dv.data<T>() + b * lk * d;
      std::fill(dkb_all + nk * d, dkb_all + lk * d, T(0));
      std::fill(dvb_all + nk * d, dvb_all + lk * d, T(0));
      for (int64_t h = 0; h < a.heads; ++h) {
        const T* qb = q.data<T>() + b * lq * d + h * dk;
        const T* kb = k.data<T>() + b * lk * d + h * dk;
        const T* gob = dout.data<T>() + b * lq * d + h * dk;
        const T* p = probs.data<T>() + (b * a.heads + h) * lq * lk;
        const T* pu = used.data<T>() + (b * a.heads + h) * lq * lk;
        T* ds = g.data<T>() + (b * a.heads + h) * lq * lk;
        T* dqb = dq.data<T>() + b * lq * d + h * dk;
        T* dkb = dkb_all + h * dk;
        T* dvb = dvb_all + h * dk;
        if (nk == 0) {
          for (int64_t i = 0; i < lq; ++i) std::fill(dqb + i * d, dqb + i * d + dk, T(0));
          continue;
        }
        // dV = P_usedᵀ dO                  (nk × dk)
        cpu::gemm_rm(true, false, nk, dk, lq, 1.0, pu, lk, gob, d, 0.0, dvb, d);
        // dS = P ∘ (G - rowsum(G ∘ P)) · scale   (softmax backward, then the score scale)
        for (int64_t i = 0; i < lq; ++i) {
          T* r = ds + i * lk;
          const T* pr = p + i * lk;
          T dot = 0;
          for (int64_t j = 0; j < nk; ++j) dot += r[j] * pr[j];
          for (int64_t j = 0; j < nk; ++j) r[j] = pr[j] * (r[j] - dot) * T(a.scale);
        }
        // dQ = dS K                        (Lq × dk)
        cpu::gemm_rm(false, false, lq, dk, nk, 1.0, ds, lk, kb, d, 0.0, dqb, d);
        // dK = dSᵀ Q                       (nk × dk)
        cpu::gemm_rm(true, false, nk, dk, lq, 1.0, ds, lk, qb, d, 0.0, dkb, d);
      }
    }
  });
}

}  // namespace mh
