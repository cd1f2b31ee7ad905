// Fused softmax + label-smoothed cross-entropy (PyTorch's F.cross_entropy semantics with
// ignore_index and label_smoothing), forward and, optionally, its gradient in the same pass.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_common.h"
#include "backend/cpu/cpu_math.h"

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
    std::vector<T> scratch(dx ? 0 : static_cast<size_t>(v));
    const double eps = smoothing, on = 1 - eps, off = eps / static_cast<double>(v);
    for (int64_t i = 0; i < n; ++i) {
      const T* row = x + i * v;
      int32_t y = lab[i];
      if (y == pad_id) {
        if (dx) std::fill(dx + i * v, dx + (i + 1) * v, T(0));
        continue;
      }
      MH_CHECK(y >= 0 && y < v, "label ", y, " outside the vocabulary of ", v);
      // exp(x - max) goes into dx (or scratch); the gradient is then one scaling of it.
      T* e = dx ? dx + i * v : scratch.data();
      const T mx = cpu::max_lanes(row, v);
      for (int64_t j = 0; j < v; ++j) e[j] = cpu::exp_fast<T>(row[j] - mx);
      const double sum = cpu::sum_lanes(e, v), sum_x = cpu::sum_lanes(row, v);
      const double lse = mx + std::log(sum);
      const double nll = lse - row[y];
      // Smoothed target: (1-ε) one-hot + ε/V uniform; loss = (1-ε) nll + ε (lse - mean(x)).
      r.nll_sum += nll;
      r.loss_sum += on * nll + eps * (lse - sum_x / static_cast<double>(v));
      r.tokens += 1;
      if (dx) {
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
