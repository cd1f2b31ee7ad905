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
// bias_grad is a column reduction. For an F32 dbias and rows of up to 2048 (F % 4 == 0, aligned),
// bias_grad_rows_kernel reads dy by rows in vectors, each lane summing its columns in registers,
// and adds one atomicAdd per column per block. Otherwise blocks of 32 columns × a chunk of rows
// sum in fp32, reduce in shared memory and atomicAdd into an F32 dbias; a BF16/F16 dbias gets one
// chunk (no atomics). Since linear_bwd_params composes GEMM + bias_grad by default, this runs on
// every Linear of every step. bias_grad_rows_kernel (nvcc 13.0 -Xptxas -v): 78-90 registers, no
// spills, 32 KiB of shared memory; not yet timed on a GPU.
//
// The kernels live in elementwise_kernels.cuh (shared with the CPU emulation test).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/elementwise_kernels.cuh"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

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

template <typename Op>
void ew_launch(const Op& op, int64_t n, bool vec, cudaStream_t s) {
  if (n == 0) return;
  ew_map_kernel<Op><<<ew_grid(n, vec), kEwThreads, 0, s>>>(op, n, vec);
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
  const int sms = ew_sm_count();
  const BiasGradRows rows =
      bias_grad_rows_plan(n, f, dbias.dtype() == DType::f32,
                          ew_aligned(dy.raw(), kEwVec * dtype_size(dy.dtype())), sms);
  if (rows.use) {
    ew_dispatch(dy.dtype(), "bias_grad", [&](auto tag) {
      using T = typename decltype(tag)::type;
      bias_grad_rows_kernel<T><<<rows.blocks, 32 * kBgRowWarps, 0, s>>>(
          static_cast<const T*>(dy.raw()), static_cast<float*>(dbias.raw()), n, f);
      MH_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  const BiasGradGrid bg = bias_grad_grid(n, f, dbias.dtype() == DType::f32, sms);
  const int64_t rows_per_chunk = bg.rows_per_chunk;
  MH_CHECK(bg.col_blocks < (int64_t{1} << 31), "bias_grad: ", f, " columns");
  const dim3 grid(static_cast<unsigned>(bg.col_blocks), static_cast<unsigned>(bg.chunks));
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
