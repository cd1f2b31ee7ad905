// Fused softmax + label-smoothed cross-entropy (PyTorch's F.cross_entropy semantics with
// ignore_index and label_smoothing), forward and, optionally, its gradient in the same pass.
#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_common.h"

namespace mh {

XentResult CpuBackend::softmax_xent(const Tensor& logits, const Tensor& labels, int64_t pad_id,
                                    double smoothing, double grad_scale, Tensor* dlogits) {
  int64_t n = logits.rows2d(), v = logits.cols2d();
  MH_CHECK(labels.numel() == n, "softmax_xent: ", labels.numel(), " labels for ", n, " rows");
  if (dlogits) cpu::same_shape(logits, *dlogits, "softmax_xent dlogits");
  const int32_t* lab = labels.data<int32_t>();
  return cpu::dispatch_float(logits.dtype(), [&]<typename T>() {
    XentResult r;
    const T* x = logits.data<T>();
    T* dx = dlogits ? dlogits->data<T>() : nullptr;
    const double eps = smoothing, on = 1 - eps, off = eps / static_cast<double>(v);
    for (int64_t i = 0; i < n; ++i) {
      const T* row = x + i * v;
      int32_t y = lab[i];
      if (y == pad_id) {
        if (dx)
          for (int64_t j = 0; j < v; ++j) dx[i * v + j] = T(0);
        continue;
      }
      MH_CHECK(y >= 0 && y < v, "label ", y, " outside the vocabulary of ", v);
      T mx = row[0];
      for (int64_t j = 1; j < v; ++j) mx = row[j] > mx ? row[j] : mx;
      // One pass for exp and the sums; the gradient reuses the exps stored in dx.
      double sum = 0, sum_x = 0;
      T* e = dx ? dx + i * v : nullptr;
      for (int64_t j = 0; j < v; ++j) {
        T ej = std::exp(row[j] - mx);
        if (e) e[j] = ej;
        sum += ej;
        sum_x += row[j];
      }
      const double lse = mx + std::log(sum);
      const double nll = lse - row[y];
      // Smoothed target: (1-ε) one-hot + ε/V uniform; loss = (1-ε) nll + ε (lse - mean(x)).
      r.nll_sum += nll;
      r.loss_sum += on * nll + eps * (lse - sum_x / static_cast<double>(v));
      r.tokens += 1;
      if (e) {
        // d loss / d x_j = softmax_j - target_j
        const T a = static_cast<T>(grad_scale / sum), b = static_cast<T>(grad_scale * off);
        for (int64_t j = 0; j < v; ++j) e[j] = e[j] * a - b;
        e[y] -= static_cast<T>(grad_scale * on);
      }
    }
    return r;
  });
}

}  // namespace mh
