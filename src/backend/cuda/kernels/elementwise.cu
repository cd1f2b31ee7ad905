// Elementwise ops of the CUDA backend (CpuBackend's add_bias, bias_grad, add, scale, activations;
// plus fill_zero and cast, which the CPU backend does not need). All math in fp32.
//
//   add_bias       y [N, F] T  +=  bias [F] (F32 or T), broadcast over rows
//   bias_grad      dbias [F] (F32 or T)  +=  Σ_n dy [N, F] T
//   add            out = a + b            (same shape and dtype; out may alias a or b)
//   scale          x *= s
//   fill_zero      x = 0                  (cudaMemsetAsync: all-zero bytes are +0 in every dtype)
//   cast           dst = src converted    (F32 | BF16 | F16, any pair; same numel; RN rounding)
//   activation_fwd y = act(x)             relu, or gelu in the exact erf form
//   activation_bwd dx = dy ∘ act'(x)
// T is F32, BF16 or F16.
//
// The maps run one grid-strided kernel per op. When every pointer is aligned to 4 elements (and,
// for add_bias, F % 4 == 0) threads move packs of 4 elements (16 bytes in F32, 8 in BF16/F16);
// the tail n % 4 and the unaligned case go element by element, in the same kernel.
// bias_grad is a column reduction: blocks of 32 columns × a chunk of rows sum in fp32, reduce in
// shared memory and atomicAdd into an F32 dbias; a BF16/F16 dbias gets one chunk (no atomics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

constexpr int kEwThreads = 256;
constexpr int kEwVec = 4;
constexpr int64_t kEwMaxBlocks = 1 << 16;

__device__ __forceinline__ float ew_to_f(float x) {
  return x;
}
__device__ __forceinline__ float ew_to_f(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float ew_to_f(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T ew_from_f(float x);
template <>
__device__ __forceinline__ float ew_from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 ew_from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half ew_from_f<__half>(float x) {
  return __float2half(x);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) EwPack {
  T v[V];
};

// f[0..V) = p[0..V) in fp32; V > 1 is one aligned vector load.
template <int V, typename T>
__device__ __forceinline__ void ew_load(const T* p, float (&f)[V]) {
  if constexpr (V == 1) {
    f[0] = ew_to_f(*p);
  } else {
    const EwPack<T, V> pk = *reinterpret_cast<const EwPack<T, V>*>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = ew_to_f(pk.v[k]);
  }
}

template <int V, typename T>
__device__ __forceinline__ void ew_store(T* p, const float (&f)[V]) {
  if constexpr (V == 1) {
    *p = ew_from_f<T>(f[0]);
  } else {
    EwPack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = ew_from_f<T>(f[k]);
    *reinterpret_cast<EwPack<T, V>*>(p) = pk;
  }
}

// y = x Φ(x), Φ the standard normal CDF.
__device__ __forceinline__ float ew_gelu(float x) {
  return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
}
// d/dx [x Φ(x)] = Φ(x) + x φ(x)
__device__ __forceinline__ float ew_gelu_grad(float x) {
  const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
  const float pdf = expf(-0.5f * x * x) * 0.3989422804014327f;  // 1/√(2π)
  return cdf + x * pdf;
}

// Runs op.apply<V>(i) over elements [0, n): packs of kEwVec when `vec`, then the tail one by one.
template <typename Op>
__global__ void __launch_bounds__(kEwThreads) ew_map_kernel(Op op, int64_t n, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if (vec) {
    const int64_t packs = n / kEwVec;
    for (int64_t p = t; p < packs; p += stride) op.template apply<kEwVec>(p * kEwVec);
    scalar_begin = packs * kEwVec;
  }
  for (int64_t i = scalar_begin + t; i < n; i += stride) op.template apply<1>(i);
}

template <typename T, typename B>
struct AddBiasOp {
  T* y;           // [N, F] +=
  const B* bias;  // [F]
  int64_t f;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(y + i, v);
    const int64_t col = i % f;  // a pack never straddles rows (F % V == 0)
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] += ew_to_f(bias[col + k]);
    ew_store<V>(y + i, v);
  }
};

template <typename T>
struct AddOp {
  const T* a;  // may alias out: each element is read before it is written, by the same thread
  const T* b;
  T* out;
  template <int V>
  __device__ void apply(int64_t i) const {
    float va[V], vb[V];
    ew_load<V>(a + i, va);
    ew_load<V>(b + i, vb);
#pragma unroll
    for (int k = 0; k < V; ++k) va[k] += vb[k];
    ew_store<V>(out + i, va);
  }
};

template <typename T>
struct ScaleOp {
  T* x;
  float s;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(x + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] *= s;
    ew_store<V>(x + i, v);
  }
};

template <typename S, typename D>
struct CastOp {
  const S* src;
  D* dst;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(src + i, v);
    ew_store<V>(dst + i, v);
  }
};

template <typename T>
struct ActFwdOp {
  const T* x;
  T* y;
  bool gelu;
  template <int V>
  __device__ void apply(int64_t i) const {
    float v[V];
    ew_load<V>(x + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = gelu ? ew_gelu(v[k]) : (v[k] > 0.f ? v[k] : 0.f);
    ew_store<V>(y + i, v);
  }
};

template <typename T>
struct ActBwdOp {
  const T* dy;
  const T* x;
  T* dx;  // may alias dy
  bool gelu;
  template <int V>
  __device__ void apply(int64_t i) const {
    float g[V], v[V];
    ew_load<V>(dy + i, g);
    ew_load<V>(x + i, v);
#pragma unroll
    for (int k = 0; k < V; ++k) g[k] = gelu ? g[k] * ew_gelu_grad(v[k]) : (v[k] > 0.f ? g[k] : 0.f);
    ew_store<V>(dx + i, g);
  }
};

constexpr int kBgCols = 32;  // columns per block (one warp wide)
constexpr int kBgRows = 8;   // row lanes per block

// dbias[c] += Σ_{r in this block's chunk} dy[r, c]. Block (32, 8); grid (⌈F/32⌉, chunks).
template <typename T, typename G>
__global__ void __launch_bounds__(kBgCols* kBgRows)
    bias_grad_kernel(const T* __restrict__ dy,  // [N, F]
                     G* __restrict__ dbias,     // [F] +=
                     int64_t n, int64_t f, int64_t rows_per_chunk) {
  __shared__ float part[kBgRows][kBgCols + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBgCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(n, r0 + rows_per_chunk);
  float acc = 0.f;
  if (c < f)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kBgRows) acc += ew_to_f(dy[r * f + c]);
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || c >= f) return;
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < kBgRows; ++k) s += part[k][threadIdx.x];
  if constexpr (std::is_same_v<G, float>) {
    if (gridDim.y == 1)
      dbias[c] += s;
    else
      atomicAdd(dbias + c, s);
  } else {
    dbias[c] = ew_from_f<G>(ew_to_f(dbias[c]) + s);  // the launcher guarantees one chunk
  }
}

// ---- host side ----------------------------------------------------------------------------------

template <typename T>
struct EwTag {
  using type = T;
};

// Calls fn(EwTag<T>{}) with T the C++ type of a compute dtype.
template <typename Fn>
void ew_dispatch(DType t, const char* what, Fn&& fn) {
  switch (t) {
    case DType::f32:
      return fn(EwTag<float>{});
    case DType::bf16:
      return fn(EwTag<__nv_bfloat16>{});
    case DType::f16:
      return fn(EwTag<__half>{});
    default:
      MH_CHECK(false, what, ": dtype ", dtype_name(t), " is not F32, BF16 or F16");
  }
}

void ew_on_device(const Tensor& t, const char* what) {
  MH_CHECK(t.device() == Device::cuda, what, ": tensor ", shape_str(t.shape()),
           " is not on the GPU");
}

bool ew_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename Op>
void ew_launch(const Op& op, int64_t n, bool vec, cudaStream_t s) {
  if (n == 0) return;
  const int64_t work = vec ? (n + kEwVec - 1) / kEwVec : n;
  const int64_t blocks = std::min<int64_t>((work + kEwThreads - 1) / kEwThreads, kEwMaxBlocks);
  ew_map_kernel<Op><<<static_cast<unsigned>(blocks), kEwThreads, 0, s>>>(op, n, vec);
  MH_CUDA_CHECK_LAUNCH();
}

void ew_same(const Tensor& a, const Tensor& b, const char* what) {
  MH_CHECK(a.shape() == b.shape() && a.dtype() == b.dtype(), what, ": ", shape_str(a.shape()),
           dtype_name(a.dtype()), " vs ", shape_str(b.shape()), dtype_name(b.dtype()));
  ew_on_device(a, what);
  ew_on_device(b, what);
}

int ew_sm_count() {
  int dev = 0, sms = 0;
  MH_CUDA_CHECK(cudaGetDevice(&dev));
  MH_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

}  // namespace

void add_bias(Tensor& y, const Tensor& bias, cudaStream_t s) {
  const int64_t f = y.cols2d();
  MH_CHECK(bias.numel() == f, "add_bias ", shape_str(y.shape()), " + ", shape_str(bias.shape()));
  MH_CHECK(bias.dtype() == DType::f32 || bias.dtype() == y.dtype(), "add_bias: bias is ",
           dtype_name(bias.dtype()), ", y is ", dtype_name(y.dtype()));
  ew_on_device(y, "add_bias");
  ew_on_device(bias, "add_bias");
  ew_dispatch(y.dtype(), "add_bias", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* yp = static_cast<T*>(y.raw());
    const bool vec = f % kEwVec == 0 && ew_aligned(yp, kEwVec * sizeof(T));
    if (bias.dtype() == DType::f32)
      ew_launch(AddBiasOp<T, float>{yp, static_cast<const float*>(bias.raw()), f}, y.numel(), vec,
                s);
    else if constexpr (!std::is_same_v<T, float>)
      ew_launch(AddBiasOp<T, T>{yp, static_cast<const T*>(bias.raw()), f}, y.numel(), vec, s);
  });
}

void bias_grad(const Tensor& dy, Tensor& dbias, cudaStream_t s) {
  const int64_t n = dy.rows2d(), f = dy.cols2d();
  MH_CHECK(dbias.numel() == f, "bias_grad ", shape_str(dy.shape()), " -> ",
           shape_str(dbias.shape()));
  MH_CHECK(dbias.dtype() == DType::f32 || dbias.dtype() == dy.dtype(), "bias_grad: dbias is ",
           dtype_name(dbias.dtype()), ", dy is ", dtype_name(dy.dtype()));
  ew_on_device(dy, "bias_grad");
  ew_on_device(dbias, "bias_grad");
  if (n == 0 || f == 0) return;
  const int64_t col_blocks = (f + kBgCols - 1) / kBgCols;
  int64_t chunks = 1;
  if (dbias.dtype() == DType::f32) {
    // Enough blocks to fill the GPU a few times over, each summing at least 64 rows.
    const int64_t want = std::max<int64_t>(1, 4 * ew_sm_count() / col_blocks);
    chunks = std::clamp<int64_t>(want, 1, std::min<int64_t>((n + 63) / 64, 65535));
  }
  const int64_t rows_per_chunk = (n + chunks - 1) / chunks;
  chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
  MH_CHECK(col_blocks < (int64_t{1} << 31), "bias_grad: ", f, " columns");
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(chunks));
  const dim3 block(kBgCols, kBgRows);
  ew_dispatch(dy.dtype(), "bias_grad", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = static_cast<const T*>(dy.raw());
    if (dbias.dtype() == DType::f32)
      bias_grad_kernel<T, float>
          <<<grid, block, 0, s>>>(g, static_cast<float*>(dbias.raw()), n, f, rows_per_chunk);
    else if constexpr (!std::is_same_v<T, float>)
      bias_grad_kernel<T, T>
          <<<grid, block, 0, s>>>(g, static_cast<T*>(dbias.raw()), n, f, rows_per_chunk);
    MH_CUDA_CHECK_LAUNCH();
  });
}

void add(const Tensor& a, const Tensor& b, Tensor& out, cudaStream_t s) {
  ew_same(a, b, "add");
  ew_same(a, out, "add");
  ew_dispatch(a.dtype(), "add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const AddOp<T> op{static_cast<const T*>(a.raw()), static_cast<const T*>(b.raw()),
                      static_cast<T*>(out.raw())};
    const size_t al = kEwVec * sizeof(T);
    ew_launch(op, a.numel(), ew_aligned(op.a, al) && ew_aligned(op.b, al) && ew_aligned(op.out, al),
              s);
  });
}

void scale(Tensor& x, double s_, cudaStream_t s) {
  ew_on_device(x, "scale");
  ew_dispatch(x.dtype(), "scale", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ScaleOp<T> op{static_cast<T*>(x.raw()), static_cast<float>(s_)};
    ew_launch(op, x.numel(), ew_aligned(op.x, kEwVec * sizeof(T)), s);
  });
}

void fill_zero(Tensor& x, cudaStream_t s) {
  ew_on_device(x, "fill_zero");
  if (x.nbytes() == 0) return;
  MH_CUDA_CHECK(cudaMemsetAsync(x.raw(), 0, x.nbytes(), s));
}

void cast(const Tensor& src, Tensor& dst, cudaStream_t s) {
  MH_CHECK(src.numel() == dst.numel(), "cast ", shape_str(src.shape()), " -> ",
           shape_str(dst.shape()));
  ew_on_device(src, "cast");
  ew_on_device(dst, "cast");
  if (src.dtype() == dst.dtype()) {
    if (src.nbytes() != 0 && src.raw() != dst.raw())
      MH_CUDA_CHECK(
          cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice, s));
    return;
  }
  ew_dispatch(src.dtype(), "cast", [&](auto stag) {
    using S = typename decltype(stag)::type;
    ew_dispatch(dst.dtype(), "cast", [&](auto dtag) {
      using D = typename decltype(dtag)::type;
      if constexpr (!std::is_same_v<S, D>) {
        const CastOp<S, D> op{static_cast<const S*>(src.raw()), static_cast<D*>(dst.raw())};
        ew_launch(op, src.numel(),
                  ew_aligned(op.src, kEwVec * sizeof(S)) && ew_aligned(op.dst, kEwVec * sizeof(D)),
                  s);
      }
    });
  });
}

void activation_fwd(ActKind kind, const Tensor& x, Tensor& y, cudaStream_t s) {
  ew_same(x, y, "activation_fwd");
  ew_dispatch(x.dtype(), "activation_fwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ActFwdOp<T> op{static_cast<const T*>(x.raw()), static_cast<T*>(y.raw()),
                         kind == ActKind::gelu};
    const size_t al = kEwVec * sizeof(T);
    ew_launch(op, x.numel(), ew_aligned(op.x, al) && ew_aligned(op.y, al), s);
  });
}

void activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx, cudaStream_t s) {
  ew_same(dy, x, "activation_bwd");
  ew_same(dy, dx, "activation_bwd");
  ew_dispatch(x.dtype(), "activation_bwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ActBwdOp<T> op{static_cast<const T*>(dy.raw()), static_cast<const T*>(x.raw()),
                         static_cast<T*>(dx.raw()), kind == ActKind::gelu};
    const size_t al = kEwVec * sizeof(T);
    ew_launch(op, x.numel(), ew_aligned(op.dy, al) && ew_aligned(op.x, al) && ew_aligned(op.dx, al),
              s);
  });
}

}  // namespace mh::cuda
