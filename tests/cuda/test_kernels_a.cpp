// CUDA kernels (elementwise, dropout, embedding, layernorm) against the CPU backend.
//
// Every case draws fresh random inputs (never zeros) on the host, rounds them to the kernel's
// dtype, and feeds the same numbers to mh::CpuBackend in F32 and to the CUDA launcher. "="
// outputs are poisoned with NaN bytes (0xFF…) before each run; "+=" outputs start from random
// values. Error = max |gpu − cpu| / max |cpu| over the tensor; tolerances: F32 1e-5, BF16 1e-2,
// F16 2e-3 (≈ 2.5 and 4 units of the last place). Dropout masks must equal the CPU's exactly.
// Sizes are odd (not multiples of 32 or 128) and every elementwise case also runs on buffers
// misaligned by one element, so both the vector and the scalar paths are covered.
// Without a GPU every test skips with "no CUDA device: GPU test skipped".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh {
namespace {

using Vec = std::vector<float>;

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

bool gpu_present() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) cudaGetLastError();  // clear it
  return e == cudaSuccess && n > 0;
}

float round_to(DType t, float v) {
  switch (t) {
    case DType::bf16:
      return __bfloat162float(__float2bfloat16(v));
    case DType::f16:
      return __half2float(__float2half(v));
    default:
      return v;
  }
}

double tolerance(DType t) {
  switch (t) {
    case DType::bf16:
      return 1e-2;
    case DType::f16:
      return 2e-3;
    default:
      return 1e-5;
  }
}

// n values uniform in ±[lo, hi] (never zero), rounded to t, plus `shift`.
Vec random_values(std::mt19937& rng, int64_t n, DType t, float shift = 0.f, float lo = 0.05f,
                  float hi = 2.f) {
  std::uniform_real_distribution<float> mag(lo, hi);
  std::bernoulli_distribution sign(0.5);
  Vec v(static_cast<size_t>(n));
  for (float& x : v) x = round_to(t, (sign(rng) ? -1.f : 1.f) * mag(rng) + shift);
  return v;
}

// A device tensor; `misalign` shifts its start by one element (unaligned vector paths).
Tensor dev_empty(const Shape& shape, DType t, bool misalign = false) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape) + 1) * dtype_size(t);
  void* p = nullptr;
  ck(cudaMalloc(&p, bytes), "cudaMalloc");
  std::shared_ptr<void> base(p, [](void* q) { cudaFree(q); });
  std::shared_ptr<void> start(base, static_cast<char*>(p) + (misalign ? dtype_size(t) : 0));
  return Tensor::wrap(start, shape, t, Device::cuda);
}

// 0xFF bytes: NaN in F32, BF16 and F16.
void poison(Tensor& t) {
  ck(cudaMemset(t.raw(), 0xFF, t.nbytes()), "cudaMemset");
}

Tensor upload(const Vec& v, const Shape& shape, DType t, bool misalign = false) {
  Tensor d = dev_empty(shape, t, misalign);
  std::vector<unsigned char> bytes(d.nbytes());
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::f32) {
      std::memcpy(&bytes[4 * i], &v[i], 4);
    } else if (t == DType::bf16) {
      const __nv_bfloat16 b = __float2bfloat16(v[i]);
      std::memcpy(&bytes[2 * i], &b, 2);
    } else if (t == DType::f16) {
      const __half h = __float2half(v[i]);
      std::memcpy(&bytes[2 * i], &h, 2);
    } else {
      throw std::logic_error("upload: unsupported dtype");
    }
  }
  ck(cudaMemcpy(d.raw(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice), "upload");
  return d;
}

Tensor upload_ids(const std::vector<int32_t>& ids, const Shape& shape) {
  Tensor d = dev_empty(shape, DType::i32);
  ck(cudaMemcpy(d.raw(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice), "upload ids");
  return d;
}

// Waits for the device, then copies t back as floats.
Vec download(const Tensor& t) {
  ck(cudaDeviceSynchronize(), "kernel");
  std::vector<unsigned char> bytes(t.nbytes());
  ck(cudaMemcpy(bytes.data(), t.raw(), bytes.size(), cudaMemcpyDeviceToHost), "download");
  Vec v(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t.dtype() == DType::f32) {
      std::memcpy(&v[i], &bytes[4 * i], 4);
    } else if (t.dtype() == DType::bf16) {
      __nv_bfloat16 b;
      std::memcpy(&b, &bytes[2 * i], 2);
      v[i] = __bfloat162float(b);
    } else {
      __half h;
      std::memcpy(&h, &bytes[2 * i], 2);
      v[i] = __half2float(h);
    }
  }
  return v;
}

Tensor host(const Vec& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::f32);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

Vec values(const Tensor& h) {
  return Vec(h.data<float>(), h.data<float>() + h.numel());
}

// max |got − ref| / max |ref|; a NaN anywhere in got counts as infinite error.
double rel_err(const Vec& got, const Vec& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double diff = 0, mag = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(d <= diff)) diff = std::isnan(d) ? INFINITY : d;
    mag = std::max(mag, std::fabs(static_cast<double>(ref[i])));
  }
  return mag > 0 ? diff / mag : diff;
}

#define EXPECT_CLOSE(got, ref, dtype) \
  EXPECT_LE(rel_err(got, ref), tolerance(dtype)) << "dtype " << dtype_name(dtype)

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16};

// Dtypes a bias / weight / parameter gradient may take next to compute dtype t: F32 or t.
std::vector<DType> param_dtypes(DType t) {
  if (t == DType::f32) return {DType::f32};
  return {DType::f32, t};
}

class CudaKernelsA : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_present()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  }
  CpuBackend cpu;
  std::mt19937 rng{20240611};
  cudaStream_t s = nullptr;  // the legacy default stream: cudaMemcpy orders after it
};

// ---- elementwise ---------------------------------------------------------------------------

TEST_F(CudaKernelsA, AddBias) {
  for (DType t : kDtypes)
    for (DType bt : param_dtypes(t))
      for (int64_t f : {203, 132})
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message() << dtype_name(t) << " bias " << dtype_name(bt)
                                            << " F=" << f << " misaligned=" << mis);
          const int64_t n = 37;
          const Vec y0 = random_values(rng, n * f, t), b = random_values(rng, f, bt);
          Tensor ref = host(y0, {n, f});
          cpu.add_bias(ref, host(b, {f}));
          Tensor y = upload(y0, {n, f}, t, mis);
          cuda::add_bias(y, upload(b, {f}, bt), s);
          EXPECT_CLOSE(download(y), values(ref), t);
        }
}

TEST_F(CudaKernelsA, BiasGrad) {
  for (DType t : kDtypes)
    for (DType gt : param_dtypes(t))
      // By columns: odd F, or a BF16/F16 dbias. By rows (F32 dbias, F % 4 == 0, F ≤ 2048): one
      // block (1 x 1000), many blocks with atomics (4096 x 512 and x 2048: d_model and d_ff), and a
      // misaligned dy (by columns again).
      for (auto [n, f] : {std::pair<int64_t, int64_t>{37, 203},
                          {4099, 67},
                          {1, 1000},
                          {4096, 512},
                          {4096, 2048},
                          {4, 4}})
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message() << dtype_name(t) << " dbias " << dtype_name(gt)
                                            << " N=" << n << " F=" << f << " misaligned=" << mis);
          const Vec dy = random_values(rng, n * f, t), db0 = random_values(rng, f, gt);
          Tensor ref = host(db0, {f});
          cpu.bias_grad(host(dy, {n, f}), ref);
          Tensor db = upload(db0, {f}, gt);
          cuda::bias_grad(upload(dy, {n, f}, t, mis), db, s);
          EXPECT_CLOSE(download(db), values(ref), gt == DType::f32 ? DType::f32 : t);
        }
}

TEST_F(CudaKernelsA, AddAndAliasedAdd) {
  for (DType t : kDtypes)
    for (bool mis : {false, true}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(t) << " misaligned=" << mis);
      const int64_t n = 1001;
      const Vec a = random_values(rng, n, t), b = random_values(rng, n, t);
      Tensor ref = host(Vec(n, 0.f), {n});
      cpu.add(host(a, {n}), host(b, {n}), ref);
      Tensor ga = upload(a, {n}, t, mis), gb = upload(b, {n}, t, mis);
      Tensor out = dev_empty({n}, t, mis);
      poison(out);
      cuda::add(ga, gb, out, s);
      EXPECT_CLOSE(download(out), values(ref), t);
      cuda::add(ga, gb, ga, s);  // out aliases a
      EXPECT_CLOSE(download(ga), values(ref), t);
    }
}

TEST_F(CudaKernelsA, Scale) {
  for (DType t : kDtypes)
    for (bool mis : {false, true}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(t) << " misaligned=" << mis);
      const int64_t n = 1003;
      const Vec x = random_values(rng, n, t);
      Tensor ref = host(x, {n});
      cpu.scale(ref, -0.37);
      Tensor gx = upload(x, {n}, t, mis);
      cuda::scale(gx, -0.37, s);
      EXPECT_CLOSE(download(gx), values(ref), t);
    }
}

TEST_F(CudaKernelsA, FillZero) {
  for (DType t : kDtypes) {
    Tensor x = dev_empty({5, 41}, t, true);
    poison(x);
    cuda::fill_zero(x, s);
    for (float v : download(x)) ASSERT_EQ(v, 0.f) << dtype_name(t);
  }
}

TEST_F(CudaKernelsA, CastEveryPair) {
  for (DType from : kDtypes)
    for (DType to : kDtypes)
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_name(from) << " -> " << dtype_name(to) << " misaligned=" << mis);
        const int64_t n = 1027;
        const Vec x = random_values(rng, n, from);
        Vec ref(x.size());
        for (size_t i = 0; i < x.size(); ++i) ref[i] = round_to(to, x[i]);  // RN, like the GPU
        Tensor dst = dev_empty({n}, to, mis);
        poison(dst);
        cuda::cast(upload(x, {n}, from, mis), dst, s);
        EXPECT_EQ(rel_err(download(dst), ref), 0.0);
      }
}

TEST_F(CudaKernelsA, Activations) {
  for (DType t : kDtypes)
    for (ActKind kind : {ActKind::relu, ActKind::gelu})
      for (bool mis : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << dtype_name(t) << (kind == ActKind::relu ? " relu" : " gelu")
                     << " misaligned=" << mis);
        const int64_t n = 2053;
        const Vec x = random_values(rng, n, t, 0.f, 0.01f, 4.f);
        const Vec dy = random_values(rng, n, t);
        Tensor ref_y = host(Vec(n, 0.f), {n}), ref_dx = host(Vec(n, 0.f), {n});
        cpu.activation_fwd(kind, host(x, {n}), ref_y);
        cpu.activation_bwd(kind, host(dy, {n}), host(x, {n}), ref_dx);
        Tensor gx = upload(x, {n}, t, mis), gdy = upload(dy, {n}, t, mis);
        Tensor y = dev_empty({n}, t, mis), dx = dev_empty({n}, t, mis);
        poison(y);
        poison(dx);
        cuda::activation_fwd(kind, gx, y, s);
        cuda::activation_bwd(kind, gdy, gx, dx, s);
        EXPECT_CLOSE(download(y), values(ref_y), t);
        EXPECT_CLOSE(download(dx), values(ref_dx), t);
      }
}

// ---- dropout -------------------------------------------------------------------------------

TEST_F(CudaKernelsA, DropoutMatchesCpuBits) {
  const uint64_t seed = 0x0123456789abcdefULL, offset = (7ULL << 32) | 5;
  for (DType t : kDtypes)
    for (double p : {0.1, 0.5, 0.0})
      for (int64_t n : {10007, 3})
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << dtype_name(t) << " p=" << p << " n=" << n << " misaligned=" << mis);
          const Vec x = random_values(rng, n, t);
          Tensor ref_y = host(Vec(n, 0.f), {n}), ref_dx = host(Vec(n, 0.f), {n});
          cpu.dropout_fwd(host(x, {n}), p, seed, offset, ref_y);
          cpu.dropout_bwd(host(x, {n}), p, seed, offset, ref_dx);
          Tensor gx = upload(x, {n}, t, mis);
          Tensor y = dev_empty({n}, t, mis), dx = dev_empty({n}, t, mis);
          poison(y);
          poison(dx);
          cuda::dropout_fwd(gx, p, seed, offset, y, s);
          cuda::dropout_bwd(gx, p, seed, offset, dx, s);
          const Vec gy = download(y), gdx = download(dx), ry = values(ref_y);
          int64_t mismatched = 0, dropped = 0;
          for (int64_t i = 0; i < n; ++i) {
            mismatched += (gy[i] == 0.f) != (ry[i] == 0.f);
            mismatched += (gdx[i] == 0.f) != (ry[i] == 0.f);
            dropped += ry[i] == 0.f;
          }
          EXPECT_EQ(mismatched, 0);
          EXPECT_CLOSE(gy, ry, t);
          EXPECT_CLOSE(gdx, values(ref_dx), t);
          if (p == 0.0) {
            EXPECT_EQ(dropped, 0);
          }
          if (p == 0.5 && n > 1000) {
            EXPECT_NEAR(static_cast<double>(dropped) / n, 0.5, 0.03);
          }
        }
}

// ---- embedding -----------------------------------------------------------------------------

TEST_F(CudaKernelsA, EmbeddingForwardBackward) {
  const int64_t b = 3, l = 7, v = 50, max_len = 10;
  for (DType t : kDtypes)
    for (int64_t d : {37, 64}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(t) << " D=" << d);
      std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(v - 1));
      std::vector<int32_t> ids(static_cast<size_t>(b * l));
      for (int32_t& id : ids) id = tok(rng);
      ids[1] = ids[0];  // a repeated id: the backward sums two rows into one
      const double sc = std::sqrt(static_cast<double>(d));
      const Vec table = random_values(rng, v * d, t), pe = random_values(rng, max_len * d, t);
      const Vec dy = random_values(rng, b * l * d, t), dt0 = random_values(rng, v * d, DType::f32);

      Tensor hids = Tensor::empty({b, l}, DType::i32);
      std::copy(ids.begin(), ids.end(), hids.data<int32_t>());
      Tensor ref_y = host(Vec(b * l * d, 0.f), {b, l, d}), ref_dt = host(dt0, {v, d});
      cpu.embed_fwd(hids, host(table, {v, d}), host(pe, {max_len, d}), sc, ref_y);
      cpu.embed_bwd(hids, host(dy, {b, l, d}), sc, ref_dt);

      Tensor gids = upload_ids(ids, {b, l});
      Tensor y = dev_empty({b, l, d}, t);
      poison(y);
      cuda::embed_fwd(gids, upload(table, {v, d}, t), upload(pe, {max_len, d}, t), sc, y, s);
      EXPECT_CLOSE(download(y), values(ref_y), t);
      Tensor dt = upload(dt0, {v, d}, DType::f32);
      cuda::embed_bwd(gids, upload(dy, {b, l, d}, t), sc, dt, s);
      EXPECT_CLOSE(download(dt), values(ref_dt), DType::f32);
    }
}

// A BF16/F16 dtable (native 16-bit atomics) with distinct ids: one rounding per element.
TEST_F(CudaKernelsA, EmbeddingBackwardLowPrecisionTable) {
  const int64_t v = 40, d = 29;
  std::vector<int32_t> ids(static_cast<size_t>(v));
  for (int32_t i = 0; i < v; ++i) ids[static_cast<size_t>(i)] = (i * 7) % static_cast<int32_t>(v);
  for (DType t : {DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(t));
    const Vec dy = random_values(rng, v * d, t), dt0 = random_values(rng, v * d, t);
    Tensor hids = Tensor::empty({1, v}, DType::i32);
    std::copy(ids.begin(), ids.end(), hids.data<int32_t>());
    Tensor ref = host(dt0, {v, d});
    cpu.embed_bwd(hids, host(dy, {1, v, d}), 0.5, ref);
    Tensor dt = upload(dt0, {v, d}, t);
    cuda::embed_bwd(upload_ids(ids, {1, v}), upload(dy, {1, v, d}, t), 0.5, dt, s);
    EXPECT_CLOSE(download(dt), values(ref), t);
  }
}

// ---- layernorm -----------------------------------------------------------------------------

TEST_F(CudaKernelsA, LayerNorm) {
  const double eps = 1e-5;
  for (DType t : kDtypes)
    for (DType wt : param_dtypes(t))
      // The backward's paths: fused (D % 4 == 0 and D ≤ 1024, aligned) over many blocks
      // (atomicAdd: 1000 x 132, 4096 x 512) or one (3 x 512); two kernels (odd D, misaligned,
      // 9 x 1028).
      for (auto [n, d] : {std::pair<int64_t, int64_t>{37, 203},
                          {37, 132},
                          {1000, 132},
                          {5, 1024},
                          {4096, 512},
                          {3, 512},
                          {9, 1028}})
        for (bool mis : {false, true}) {
          SCOPED_TRACE(::testing::Message() << dtype_name(t) << " weight " << dtype_name(wt)
                                            << " N=" << n << " D=" << d << " misaligned=" << mis);
          const Vec x = random_values(rng, n * d, t, 3.f);  // an offset mean: centred variance
          const Vec w = random_values(rng, d, wt), bias = random_values(rng, d, wt);
          const Vec dy = random_values(rng, n * d, t);
          const Vec dw0 = random_values(rng, d, DType::f32),
                    db0 = random_values(rng, d, DType::f32);

          Tensor ref_y = host(Vec(n * d, 0.f), {n, d});
          Tensor ref_mean = host(Vec(n, 0.f), {n}), ref_rstd = host(Vec(n, 0.f), {n});
          cpu.layernorm_fwd(host(x, {n, d}), host(w, {d}), host(bias, {d}), eps, ref_y, ref_mean,
                            ref_rstd);
          Tensor ref_dx = host(Vec(n * d, 0.f), {n, d});
          Tensor ref_dw = host(dw0, {d}), ref_db = host(db0, {d});
          cpu.layernorm_bwd(host(dy, {n, d}), host(x, {n, d}), host(w, {d}), ref_mean, ref_rstd,
                            ref_dx, ref_dw, ref_db);

          Tensor gx = upload(x, {n, d}, t, mis), gw = upload(w, {d}, wt),
                 gb = upload(bias, {d}, wt);
          Tensor y = dev_empty({n, d}, t, mis);
          Tensor mean = dev_empty({n}, DType::f32), rstd = dev_empty({n}, DType::f32);
          poison(y);
          poison(mean);
          poison(rstd);
          cuda::layernorm_fwd(gx, gw, gb, eps, y, mean, rstd, s);
          EXPECT_CLOSE(download(y), values(ref_y), t);
          EXPECT_CLOSE(download(mean), values(ref_mean), DType::f32);  // F32 statistics
          EXPECT_CLOSE(download(rstd), values(ref_rstd), DType::f32);

          // The backward from the CPU's statistics, so only the backward is under test here.
          Tensor dx = dev_empty({n, d}, t, mis);
          poison(dx);
          Tensor dw = upload(dw0, {d}, DType::f32), db = upload(db0, {d}, DType::f32);
          cuda::layernorm_bwd(upload(dy, {n, d}, t, mis), gx, gw,
                              upload(values(ref_mean), {n}, DType::f32),
                              upload(values(ref_rstd), {n}, DType::f32), dx, dw, db, s);
          EXPECT_CLOSE(download(dx), values(ref_dx), t);
          EXPECT_CLOSE(download(dw), values(ref_dw), DType::f32);  // F32 sums of the same inputs
          EXPECT_CLOSE(download(db), values(ref_db), DType::f32);
        }
}

// sum = x + dropout(body), y = LN(sum) in one kernel: against the GPU's own composition
// (dropout_fwd, add, layernorm_fwd: the sum bit for bit) and the CPU's in F32. The launcher
// declines (returns false) rows it cannot fuse, which CudaBackend then composes.
TEST_F(CudaKernelsA, ResidualLayerNorm) {
  const double eps = 1e-5;
  const uint64_t seed = 77, offset = (uint64_t{5} << 24) | 2;
  for (DType t : kDtypes)
    for (DType wt : param_dtypes(t))
      for (auto [n, d] : {std::pair<int64_t, int64_t>{37, 132}, {4096, 512}, {9, 1028}, {37, 203}})
        for (bool mis : {false, true})
          for (double p : {0.0, 0.1}) {
            SCOPED_TRACE(::testing::Message()
                         << dtype_name(t) << " weight " << dtype_name(wt) << " N=" << n
                         << " D=" << d << " misaligned=" << mis << " p=" << p);
            const Vec x = random_values(rng, n * d, t, 3.f), body = random_values(rng, n * d, t);
            const Vec w = random_values(rng, d, wt), bias = random_values(rng, d, wt);
            Tensor ref_sum = host(Vec(n * d, 0.f), {n, d}), ref_y = host(Vec(n * d, 0.f), {n, d});
            Tensor ref_mean = host(Vec(n, 0.f), {n}), ref_rstd = host(Vec(n, 0.f), {n});
            cpu.residual_layernorm_fwd(host(x, {n, d}), host(body, {n, d}), p, seed, offset,
                                       host(w, {d}), host(bias, {d}), eps, ref_sum, ref_y, ref_mean,
                                       ref_rstd);

            const Tensor gx = upload(x, {n, d}, t, mis), gbody = upload(body, {n, d}, t, mis);
            const Tensor gw = upload(w, {d}, wt), gb = upload(bias, {d}, wt);
            Tensor sum = dev_empty({n, d}, t, mis), y = dev_empty({n, d}, t, mis);
            Tensor mean = dev_empty({n}, DType::f32), rstd = dev_empty({n}, DType::f32);
            for (Tensor* o : {&sum, &y, &mean, &rstd}) poison(*o);
            const bool fused = cuda::residual_layernorm_fwd(gx, gbody, p, seed, offset, gw, gb, eps,
                                                            sum, y, mean, rstd, s);
            EXPECT_EQ(fused, !mis && d % 4 == 0 && d <= 1024);
            if (!fused) continue;
            EXPECT_CLOSE(download(sum), values(ref_sum), t);
            EXPECT_CLOSE(download(y), values(ref_y), t);
            EXPECT_CLOSE(download(mean), values(ref_mean), DType::f32);
            EXPECT_CLOSE(download(rstd), values(ref_rstd), DType::f32);

            // The GPU's composition: the same sum, bit for bit.
            Tensor dropped = dev_empty({n, d}, t, mis), sum2 = dev_empty({n, d}, t, mis);
            if (p > 0)
              cuda::dropout_fwd(gbody, p, seed, offset, dropped, s);
            else
              dropped = gbody;
            cuda::add(gx, dropped, sum2, s);
            const Vec a = download(sum), b = download(sum2);
            for (size_t i = 0; i < a.size(); ++i)
              ASSERT_TRUE(a[i] == b[i])
                  << "sum[" << i << "]: fused " << a[i] << ", composed " << b[i];
          }
}

}  // namespace
}  // namespace mh
