// The F64 reference for a fused attention backward, given the output O it was handed.
//
// FlashAttention-2's backward (custom, hopper, cuDNN) computes D = rowsum(dO ∘ O) from the O the
// forward stored: rounded to bf16/fp16, not the exact one. Then dS = P ∘ (dP − D) carries an extra
// −P·δ per row, δ = dO · (O_stored − O_exact), that CpuBackend (D = rowsum(dP ∘ P), from P) does
// not. Usually that is noise far below the tolerance; but where the exact dS is 0, it is all that
// is left. A query row that sees a single key has P = 1 and dS = 0, and with dropout its
// O = v/(1 − p) is not representable, so δ ≠ 0: a one-key sequence with a causal mask sums 129
// such rows into one key's dK, which reached 2.6% of max|dK| in bf16 on an H200 (2026-11-28).
// PyTorch's flash backend and cuDNN compute D the same way.
//
// So the backward is checked as the function of what it is handed: the exact gradients with that
// D. The forward's O is still checked against the exact one, and dV (which has no D) unchanged.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"

namespace mh::attention_test {

// dq, dk (CpuBackend's F64 gradients for q, k, v, dout under `a`, whose forward gave
// exact_o) corrected to D = rowsum(dO ∘ o_used). Tensors are F64, rows of H·d: q, dout, o like
// [B·Lq, H·d], k like [B·Lk, H·d], as in CpuBackend.
inline void correct_for_stored_output(const AttnArgs& a, const Tensor& q, const Tensor& k,
                                      const Tensor& v, const Tensor& dout, const Tensor& exact_o,
                                      const Tensor& o_used, Tensor& dq, Tensor& dk) {
  CpuBackend cpu;
  Tensor o = Tensor::empty(q.shape(), DType::f64);
  AttnSaved saved;
  AttnArgs no_dropout = a;  // P before dropout: the same function either way
  no_dropout.dropout = 0;
  cpu.attention_fwd(no_dropout, q, k, v, o, saved);
  const int64_t d = a.head_dim, row = a.heads * d, lq = a.len_q, lk = a.len_k;
  const double* p_all = saved.probs.data<double>();
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t h = 0; h < a.heads; ++h)
      for (int64_t i = 0; i < lq; ++i) {
        const int64_t qi = (b * lq + i) * row + h * d;
        double delta = 0;
        for (int64_t c = 0; c < d; ++c)
          delta += dout.data<double>()[qi + c] *
                   (o_used.data<double>()[qi + c] - exact_o.data<double>()[qi + c]);
        if (delta == 0) continue;
        const double* p = p_all + ((b * a.heads + h) * lq + i) * lk;
        for (int64_t j = 0; j < lk; ++j) {
          if (p[j] == 0) continue;
          const double w = a.scale * p[j] * delta;  // the change of scale · dS[i, j]
          const int64_t kj = (b * lk + j) * row + h * d;
          for (int64_t c = 0; c < d; ++c) {
            dq.data<double>()[qi + c] -= w * k.data<double>()[kj + c];
            dk.data<double>()[kj + c] -= w * q.data<double>()[qi + c];
          }
        }
      }
}

}  // namespace mh::attention_test
