// Token embedding × scale + positional encoding, and its backward scatter
// (CpuBackend::embed_fwd / embed_bwd).
//
//   embed_fwd  y [B, L, D] T  =  table [V, D] T [ids [B, L] I32] · scale + pe [max_len, D] T [t]
//              (t = position within the sequence, pe rows ≥ L)
//   embed_bwd  dtable [V, D] (F32 or T)  +=  scale · dy [B, L, D] T scattered by ids
// T is F32, BF16 or F16. One block per token row (rows grid-strided), threads across D, 4-element
// vector loads when D % 4 == 0 and the pointers allow. The backward adds with fp32 atomicAdd (a
// BF16/F16 dtable uses the native 16-bit atomicAdd, sm_80+), so repeated ids are summed in an
// unspecified order.
//
// Ids are not validated on the device: the CPU backend MH_CHECKs them, and the data pipeline
// checks ids against the vocabulary on the host. An id outside [0, V) never reads or writes out
// of bounds here: embed_fwd writes a NaN row (the loss turns non-finite, visibly), embed_bwd
// skips the row.
//
// The kernels live in embedding_kernels.cuh (shared with the CPU emulation test).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/embedding_kernels.cuh"
#include "backend/cuda/kernels/kernels.h"

namespace mh::cuda {

namespace {

template <typename T>
struct EmbTag {
  using type = T;
};

template <typename Fn>
void emb_dispatch(DType t, const char* what, Fn&& fn) {
  switch (t) {
    case DType::f32:
      return fn(EmbTag<float>{});
    case DType::bf16:
      return fn(EmbTag<__nv_bfloat16>{});
    case DType::f16:
      return fn(EmbTag<__half>{});
    default:
      MH_CHECK(false, what, ": dtype ", dtype_name(t), " is not F32, BF16 or F16");
  }
}

void emb_on_device(const Tensor& t, const char* what) {
  MH_CHECK(t.device() == Device::cuda, what, ": tensor ", shape_str(t.shape()),
           " is not on the GPU");
}

}  // namespace

void embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe, double scale, Tensor& y,
               cudaStream_t s) {
  MH_CHECK(ids.ndim() == 2 && ids.dtype() == DType::i32, "embed_fwd: ids ", shape_str(ids.shape()),
           dtype_name(ids.dtype()));
  MH_CHECK(table.ndim() == 2 && pe.ndim() == 2, "embed_fwd: table ", shape_str(table.shape()),
           " pe ", shape_str(pe.shape()));
  const int64_t b = ids.dim(0), l = ids.dim(1), v = table.dim(0), d = table.dim(1);
  MH_CHECK(y.numel() == b * l * d && pe.dim(1) == d && pe.dim(0) >= l, "embed_fwd shapes: ids ",
           shape_str(ids.shape()), " table ", shape_str(table.shape()), " pe ",
           shape_str(pe.shape()), " y ", shape_str(y.shape()));
  MH_CHECK(table.dtype() == pe.dtype() && table.dtype() == y.dtype(), "embed_fwd dtypes: table ",
           dtype_name(table.dtype()), " pe ", dtype_name(pe.dtype()), " y ", dtype_name(y.dtype()));
  for (const Tensor* t : {&ids, &table, &pe, static_cast<const Tensor*>(&y)})
    emb_on_device(*t, "embed_fwd");
  const int64_t rows = b * l;
  if (rows == 0 || d == 0) return;
  emb_dispatch(y.dtype(), "embed_fwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *tp = static_cast<const T*>(table.raw()), *pp = static_cast<const T*>(pe.raw());
    T* yp = static_cast<T*>(y.raw());
    const bool vec = emb_vec(d, tp, pp, yp);
    embed_fwd_kernel<T>
        <<<emb_grid(rows), kEmbThreads, 0, s>>>(static_cast<const int32_t*>(ids.raw()), tp, pp, yp,
                                                rows, l, v, d, static_cast<float>(scale), vec);
    MH_CUDA_CHECK_LAUNCH();
  });
}

void embed_bwd(const Tensor& ids, const Tensor& dy, double scale, Tensor& dtable, cudaStream_t s) {
  MH_CHECK(ids.dtype() == DType::i32, "embed_bwd: ids are ", dtype_name(ids.dtype()));
  MH_CHECK(dtable.ndim() == 2, "embed_bwd: dtable ", shape_str(dtable.shape()));
  const int64_t rows = ids.numel(), v = dtable.dim(0), d = dtable.dim(1);
  MH_CHECK(dy.numel() == rows * d, "embed_bwd shapes: ids ", shape_str(ids.shape()), " dy ",
           shape_str(dy.shape()), " dtable ", shape_str(dtable.shape()));
  MH_CHECK(dtable.dtype() == DType::f32 || dtable.dtype() == dy.dtype(), "embed_bwd: dtable is ",
           dtype_name(dtable.dtype()), ", dy is ", dtype_name(dy.dtype()));
  for (const Tensor* t : {&ids, &dy, static_cast<const Tensor*>(&dtable)})
    emb_on_device(*t, "embed_bwd");
  if (rows == 0 || d == 0) return;
  emb_dispatch(dy.dtype(), "embed_bwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int32_t* id = static_cast<const int32_t*>(ids.raw());
    const T* g = static_cast<const T*>(dy.raw());
    if (dtable.dtype() == DType::f32)
      embed_bwd_kernel<T, float><<<emb_grid(rows), kEmbThreads, 0, s>>>(
          id, g, static_cast<float*>(dtable.raw()), rows, v, d, static_cast<float>(scale));
    else if constexpr (!std::is_same_v<T, float>)
      embed_bwd_kernel<T, T><<<emb_grid(rows), kEmbThreads, 0, s>>>(
          id, g, static_cast<T*>(dtable.raw()), rows, v, d, static_cast<float>(scale));
    MH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mh::cuda
