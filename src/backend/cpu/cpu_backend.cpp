// Dense and elementwise ops of the CPU backend: GEMM, bias, add/scale/copy, activations,
// dropout, embeddings, Adam.
#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <malloc.h>

#include "backend/cpu/cpu_common.h"
#include "core/philox.h"

extern "C" void openblas_set_num_threads(int);

namespace mh {

using cpu::dispatch_float;
using cpu::same_shape;

CpuBackend::CpuBackend() {
  // Activations are allocated and freed every step. By default glibc serves blocks over 128 KiB
  // with fresh mmap()s, so each step pays page faults and zeroing for every activation; keeping
  // them on the heap lets the next step reuse the same pages.
  static const bool once = [] {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    return true;
  }();
  (void)once;
}

void cpu_set_threads(int threads) {
  if (threads > 0) openblas_set_num_threads(threads);
}

void CpuBackend::gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& c, double alpha,
                      double beta) {
  int64_t m = ta ? a.cols2d() : a.rows2d(), k = ta ? a.rows2d() : a.cols2d();
  int64_t kb = tb ? b.cols2d() : b.rows2d(), n = tb ? b.rows2d() : b.cols2d();
  MH_CHECK(k == kb && c.rows2d() == m && c.cols2d() == n, "gemm ", shape_str(a.shape()),
           ta ? "ᵀ" : "", " @ ", shape_str(b.shape()), tb ? "ᵀ" : "", " -> ", shape_str(c.shape()));
  MH_CHECK(a.dtype() == b.dtype() && b.dtype() == c.dtype(), "gemm dtypes differ");
  if (m == 0 || n == 0) return;
  dispatch_float(c.dtype(), [&]<typename T>() {
    if (k == 0) {  // BLAS leaves C untouched for k = 0; the math says C = beta * C.
      T* cp = c.data<T>();
      for (int64_t i = 0; i < m * n; ++i) cp[i] = beta == 0 ? T(0) : T(beta) * cp[i];
      return;
    }
    cpu::gemm_rm(ta, tb, m, n, k, alpha, a.data<T>(), a.cols2d(), b.data<T>(), b.cols2d(), beta,
                 c.data<T>(), n);
  });
}

void CpuBackend::add_bias(Tensor& y, const Tensor& bias) {
  int64_t n = y.rows2d(), f = y.cols2d();
  MH_CHECK(bias.numel() == f, "add_bias ", shape_str(y.shape()), " + ", shape_str(bias.shape()));
  dispatch_float(y.dtype(), [&]<typename T>() {
    T* yp = y.data<T>();
    const T* bp = bias.data<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < f; ++j) yp[i * f + j] += bp[j];
  });
}

void CpuBackend::bias_grad(const Tensor& dy, Tensor& dbias) {
  int64_t n = dy.rows2d(), f = dy.cols2d();
  MH_CHECK(dbias.numel() == f, "bias_grad");
  dispatch_float(dy.dtype(), [&]<typename T>() {
    const T* g = dy.data<T>();
    T* db = dbias.data<T>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < f; ++j) db[j] += g[i * f + j];
  });
}

void CpuBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
  same_shape(a, b, "add");
  same_shape(a, out, "add");
  dispatch_float(a.dtype(), [&]<typename T>() {
    const T *ap = a.data<T>(), *bp = b.data<T>();
    T* op = out.data<T>();
    for (int64_t i = 0; i < a.numel(); ++i) op[i] = ap[i] + bp[i];
  });
}

void CpuBackend::scale(Tensor& x, double s) {
  dispatch_float(x.dtype(), [&]<typename T>() {
    T* p = x.data<T>();
    const T st = static_cast<T>(s);
    for (int64_t i = 0; i < x.numel(); ++i) p[i] *= st;
  });
}

void CpuBackend::copy(const Tensor& src, Tensor& dst) {
  MH_CHECK(src.numel() == dst.numel() && src.dtype() == dst.dtype(), "copy");
  MH_CHECK(src.device() == Device::cpu && dst.device() == Device::cpu, "copy off the CPU");
  std::memmove(dst.raw(), src.raw(), src.nbytes());
}

void CpuBackend::cast(const Tensor& src, Tensor& dst) {
  MH_CHECK(src.numel() == dst.numel(), "cast ", shape_str(src.shape()), " to ",
           shape_str(dst.shape()));
  if (src.dtype() == dst.dtype()) return copy(src, dst);
  dispatch_float(src.dtype(), [&]<typename S>() {
    dispatch_float(dst.dtype(), [&]<typename D>() {
      const S* s = src.data<S>();
      D* d = dst.data<D>();
      for (int64_t i = 0; i < src.numel(); ++i) d[i] = static_cast<D>(s[i]);
    });
  });
}

namespace {
template <typename T>
T gelu(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(M_SQRT1_2)));
}
// d/dx [x Φ(x)] = Φ(x) + x φ(x)
template <typename T>
T gelu_grad(T x) {
  T cdf = T(0.5) * (T(1) + std::erf(x * T(M_SQRT1_2)));
  T pdf = std::exp(T(-0.5) * x * x) * T(0.3989422804014327);  // 1/√(2π)
  return cdf + x * pdf;
}
}  // namespace

void CpuBackend::activation_fwd(ActKind kind, const Tensor& x, Tensor& y) {
  same_shape(x, y, "activation_fwd");
  dispatch_float(x.dtype(), [&]<typename T>() {
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    if (kind == ActKind::relu)
      for (int64_t i = 0; i < x.numel(); ++i) yp[i] = xp[i] > T(0) ? xp[i] : T(0);
    else
      for (int64_t i = 0; i < x.numel(); ++i) yp[i] = gelu(xp[i]);
  });
}

void CpuBackend::activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx) {
  same_shape(dy, x, "activation_bwd");
  same_shape(dy, dx, "activation_bwd");
  dispatch_float(x.dtype(), [&]<typename T>() {
    const T *g = dy.data<T>(), *xp = x.data<T>();
    T* d = dx.data<T>();
    if (kind == ActKind::relu)
      for (int64_t i = 0; i < x.numel(); ++i) d[i] = xp[i] > T(0) ? g[i] : T(0);
    else
      for (int64_t i = 0; i < x.numel(); ++i) d[i] = g[i] * gelu_grad(xp[i]);
  });
}

namespace {
// y = x * keep / (1 - p), keep = uniform(seed, offset, i) >= p: element i takes lane i % 4 of
// Philox block i / 4 (core/philox.h), the same bits a GPU kernel draws. Blocks are generated 16
// at a time in structure-of-arrays form so the ten rounds vectorize.
template <typename T>
void dropout_apply(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset) {
  constexpr int kBlocks = 16;
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  const uint32_t threshold = static_cast<uint32_t>(std::ceil(static_cast<float>(p) * 16777216.0f));
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b0 = 0; b0 < blocks; b0 += kBlocks) {
    // Philox4x32-10 rounds (core/philox.h), written lane-wise over kBlocks counters.
    uint32_t c0[kBlocks], c1[kBlocks], c2v[kBlocks], c3v[kBlocks];
    for (int j = 0; j < kBlocks; ++j) {
      const uint64_t block = static_cast<uint64_t>(b0 + j);
      c0[j] = static_cast<uint32_t>(block);
      c1[j] = static_cast<uint32_t>(block >> 32);
      c2v[j] = c2;
      c3v[j] = c3;
    }
    uint32_t key0 = k0, key1 = k1;
    for (int round = 0; round < 10; ++round) {
      for (int j = 0; j < kBlocks; ++j) {
        const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0[j];
        const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2v[j];
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[j] ^ key0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3v[j] ^ key1;
        c1[j] = static_cast<uint32_t>(p1);
        c3v[j] = static_cast<uint32_t>(p0);
        c0[j] = n0;
        c2v[j] = n2;
      }
      key0 += 0x9E3779B9u;
      key1 += 0xBB67AE85u;
    }
    // Element 4j + l takes lane l of block j.
    uint32_t bits[4 * kBlocks];
    for (int j = 0; j < kBlocks; ++j) {
      bits[4 * j] = c0[j];
      bits[4 * j + 1] = c1[j];
      bits[4 * j + 2] = c2v[j];
      bits[4 * j + 3] = c3v[j];
    }
    const int64_t base = b0 * 4, count = std::min<int64_t>(n - base, 4 * kBlocks);
    // uniform = (bits >> 8) / 2^24 >= p  <=>  (bits >> 8) >= ceil(p · 2^24) (philox_uniform)
    for (int64_t k = 0; k < count; ++k)
      y[base + k] = (bits[k] >> 8) >= threshold ? x[base + k] * scale : T(0);
  }
}
}  // namespace

void CpuBackend::dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y) {
  same_shape(x, y, "dropout_fwd");
  MH_CHECK(p >= 0 && p < 1, "dropout p = ", p);
  dispatch_float(x.dtype(), [&]<typename T>() {
    dropout_apply(x.data<T>(), y.data<T>(), x.numel(), p, seed, offset);
  });
}

void CpuBackend::dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset,
                             Tensor& dx) {
  dropout_fwd(dy, p, seed, offset, dx);  // the same mask and scale, applied to the gradient
}

void CpuBackend::embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe, double scale,
                           Tensor& y) {
  int64_t b = ids.dim(0), l = ids.dim(1), v = table.dim(0), d = table.dim(1);
  MH_CHECK(y.numel() == b * l * d && pe.dim(1) == d && pe.dim(0) >= l, "embed_fwd shapes");
  const int32_t* id = ids.data<int32_t>();
  dispatch_float(table.dtype(), [&]<typename T>() {
    const T *tp = table.data<T>(), *pp = pe.data<T>();
    T* yp = y.data<T>();
    const T s = static_cast<T>(scale);
    for (int64_t i = 0; i < b * l; ++i) {
      int32_t tok = id[i];
      MH_CHECK(tok >= 0 && tok < v, "token id ", tok, " outside the vocabulary of ", v);
      const T* row = tp + tok * d;
      const T* pos = pp + (i % l) * d;
      for (int64_t j = 0; j < d; ++j) yp[i * d + j] = row[j] * s + pos[j];
    }
  });
}

void CpuBackend::embed_bwd(const Tensor& ids, const Tensor& dy, double scale, Tensor& dtable) {
  int64_t n = ids.numel(), d = dtable.dim(1);
  MH_CHECK(dy.numel() == n * d, "embed_bwd shapes");
  const int32_t* id = ids.data<int32_t>();
  dispatch_float(dy.dtype(), [&]<typename T>() {
    const T* g = dy.data<T>();
    T* dt = dtable.data<T>();
    const T s = static_cast<T>(scale);
    for (int64_t i = 0; i < n; ++i) {
      T* row = dt + static_cast<int64_t>(id[i]) * d;
      for (int64_t j = 0; j < d; ++j) row[j] += s * g[i * d + j];
    }
  });
}

double CpuBackend::sum_squares(const Tensor& x) {
  return dispatch_float(x.dtype(), [&]<typename T>() {
    const T* p = x.data<T>();
    double s = 0;
    for (int64_t i = 0; i < x.numel(); ++i) s += static_cast<double>(p[i]) * p[i];
    return s;
  });
}

void CpuBackend::adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr,
                           double beta1, double beta2, double eps, double weight_decay,
                           int64_t step, double grad_scale) {
  same_shape(param, grad, "adam_step");
  same_shape(param, m, "adam_step");
  same_shape(param, v, "adam_step");
  MH_CHECK(step >= 1, "adam step ", step);
  const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
  dispatch_float(param.dtype(), [&]<typename T>() {
    T *p = param.data<T>(), *mp = m.data<T>(), *vp = v.data<T>();
    const T* g = grad.data<T>();
    const T b1 = T(beta1), b2 = T(beta2), gs = T(grad_scale), e = T(eps), wd = T(weight_decay);
    const T step_size = T(lr / bc1), inv_sqrt_bc2 = T(1 / std::sqrt(bc2)), lrt = T(lr);
    for (int64_t i = 0; i < param.numel(); ++i) {
      T gi = g[i] * gs;
      mp[i] = b1 * mp[i] + (T(1) - b1) * gi;
      vp[i] = b2 * vp[i] + (T(1) - b2) * gi * gi;
      // p -= lr * (m / bc1) / (sqrt(v / bc2) + eps) + lr * wd * p
      p[i] -= step_size * mp[i] / (std::sqrt(vp[i]) * inv_sqrt_bc2 + e) + lrt * wd * p[i];
    }
  });
}

}  // namespace mh
