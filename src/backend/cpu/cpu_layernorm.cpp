// LayerNorm forward and backward over the last dimension.
#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_common.h"

namespace mh {

void CpuBackend::layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               double eps, Tensor& y, Tensor& mean, Tensor& rstd) {
  int64_t n = x.rows2d(), d = x.cols2d();
  cpu::same_shape(x, y, "layernorm_fwd");
  MH_CHECK(weight.numel() == d && bias.numel() == d && mean.numel() == n && rstd.numel() == n,
           "layernorm_fwd shapes");
  cpu::dispatch_float(x.dtype(), [&]<typename T>() {
    const T *xp = x.data<T>(), *w = weight.data<T>(), *b = bias.data<T>();
    T *yp = y.data<T>(), *mu = mean.data<T>(), *rs = rstd.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* row = xp + i * d;
      // Two passes (mean, then centered variance): as accurate as PyTorch's Welford here.
      T m = 0;
      for (int64_t j = 0; j < d; ++j) m += row[j];
      m /= T(d);
      T var = 0;
      for (int64_t j = 0; j < d; ++j) var += (row[j] - m) * (row[j] - m);
      var /= T(d);  // biased variance, as LayerNorm defines it
      T r = T(1) / std::sqrt(var + T(eps));
      mu[i] = m;
      rs[i] = r;
      for (int64_t j = 0; j < d; ++j) yp[i * d + j] = (row[j] - m) * r * w[j] + b[j];
    }
  });
}

void CpuBackend::layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight,
                               const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                               Tensor& dbias) {
  int64_t n = x.rows2d(), d = x.cols2d();
  cpu::same_shape(dy, x, "layernorm_bwd");
  cpu::same_shape(dx, x, "layernorm_bwd");
  cpu::dispatch_float(x.dtype(), [&]<typename T>() {
    const T *g = dy.data<T>(), *xp = x.data<T>(), *w = weight.data<T>();
    const T *mu = mean.data<T>(), *rs = rstd.data<T>();
    T *dxp = dx.data<T>(), *dw = dweight.data<T>(), *db = dbias.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T *gr = g + i * d, *xr = xp + i * d;
      // With x̂ = (x - μ) r and ĝ = dy ∘ w:  dx = r (ĝ - mean(ĝ) - x̂ mean(ĝ ∘ x̂))
      T sum_g = 0, sum_gx = 0;
      for (int64_t j = 0; j < d; ++j) {
        T xh = (xr[j] - mu[i]) * rs[i];
        T gh = gr[j] * w[j];
        sum_g += gh;
        sum_gx += gh * xh;
        dw[j] += gr[j] * xh;  // dw += dy ∘ x̂
        db[j] += gr[j];       // db += dy
      }
      sum_g /= T(d);
      sum_gx /= T(d);
      for (int64_t j = 0; j < d; ++j) {
        T xh = (xr[j] - mu[i]) * rs[i];
        dxp[i * d + j] = rs[i] * (gr[j] * w[j] - sum_g - xh * sum_gx);
      }
    }
  });
}

}  // namespace mh
