// The CUDA backend (cuda_backend.h): thin wrappers over the kernels.h launchers and cuBLASLt.
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/attention/cudnn_sdpa.h"
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels/kernels.h"

namespace mh {

namespace {
void check_on_gpu(const Tensor& t, const char* what) {
  MH_CHECK(t.device() == Device::cuda, what, ": tensor is not on the GPU");
}
}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear it: no driver or no device is not an error here
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<CudaBackend>(device);
}

CudaBackend::CudaBackend(int device) : device_(device) {
  const int count = cuda_device_count();
  MH_CHECK(device >= 0 && device < count, "CUDA device ", device, " of ", count);
  MH_CUDA_CHECK(cudaSetDevice(device));
  MH_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
  MH_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_, cudaStreamNonBlocking));
  MH_CUDA_CHECK(cudaEventCreateWithFlags(&compute_event_, cudaEventDisableTiming));
  MH_CUDA_CHECK(cudaEventCreateWithFlags(&comm_event_, cudaEventDisableTiming));
  alloc_ = std::make_shared<cuda::CachingAllocator>(device);
  workspace_ = alloc_->allocate(cuda::GemmLt::kWorkspaceBytes);
  gemm_ = std::make_unique<cuda::GemmLt>(workspace_.get(), cuda::GemmLt::kWorkspaceBytes);
  sums_ = empty({3}, DType::f64);
  if (const char* env = std::getenv("MH_GEMM_BGRAD_EPILOGUE")) {
    const std::string v = env;
    if (v != "0" && v != "1")
      user_error("MH_GEMM_BGRAD_EPILOGUE=", v,
                 ": expected 0 (GEMM + bias_grad kernel, the default) or 1 (cuBLASLt's BGRADB "
                 "epilogue) for linear_bwd_params");
    bgrad_epilogue_ = v == "1";
  }
}

CudaBackend::~CudaBackend() {
  // No checks in a destructor: finish the work, then release in reverse order.
  cudaStreamSynchronize(compute_);
  cudaStreamSynchronize(comm_);
  cudnn_sdpa_.reset();
  gemm_.reset();
  workspace_.reset();
  sums_ = Tensor();
  key_len_dev_ = Tensor();
  cudaEventDestroy(comm_event_);
  cudaEventDestroy(compute_event_);
  cudaStreamDestroy(comm_);
  cudaStreamDestroy(compute_);
  // alloc_ goes last; tensors still alive keep it alive until they are released.
}

Tensor CudaBackend::empty(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  return Tensor::wrap(alloc_->allocate(bytes), shape, dtype, Device::cuda);
}

Tensor CudaBackend::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  if (t.nbytes() > 0) MH_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), compute_));
  return t;
}

void CudaBackend::comm_wait_compute() {
  MH_CUDA_CHECK(cudaEventRecord(compute_event_, compute_));
  MH_CUDA_CHECK(cudaStreamWaitEvent(comm_, compute_event_, 0));
}

void CudaBackend::compute_wait_comm() {
  MH_CUDA_CHECK(cudaEventRecord(comm_event_, comm_));
  MH_CUDA_CHECK(cudaStreamWaitEvent(compute_, comm_event_, 0));
}

void CudaBackend::synchronize() {
  MH_CUDA_CHECK(cudaStreamSynchronize(compute_));
  MH_CUDA_CHECK(cudaStreamSynchronize(comm_));
}

void CudaBackend::gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
                       double alpha, double beta) {
  gemm_->gemm(a, trans_a, b, trans_b, c, alpha, beta, compute_);
}

void CudaBackend::add_bias(Tensor& y, const Tensor& bias) {
  cuda::add_bias(y, bias, compute_);
}
void CudaBackend::bias_grad(const Tensor& dy, Tensor& dbias) {
  cuda::bias_grad(dy, dbias, compute_);
}
void CudaBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
  cuda::add(a, b, out, compute_);
}
void CudaBackend::zero(Tensor& x) {
  cuda::fill_zero(x, compute_);
}

void CudaBackend::scale(Tensor& x, double s) {
  cuda::scale(x, s, compute_);
}
void CudaBackend::cast(const Tensor& src, Tensor& dst) {
  cuda::cast(src, dst, compute_);
}

void CudaBackend::copy(const Tensor& src, Tensor& dst) {
  MH_CHECK(src.numel() == dst.numel() && src.dtype() == dst.dtype(), "copy ",
           shape_str(src.shape()), " ", dtype_name(src.dtype()), " -> ", shape_str(dst.shape()),
           " ", dtype_name(dst.dtype()));
  const size_t bytes = src.nbytes();
  if (bytes == 0) return;
  const bool from_gpu = src.device() == Device::cuda, to_gpu = dst.device() == Device::cuda;
  if (!from_gpu && !to_gpu) {
    std::memmove(dst.raw(), src.raw(), bytes);
    return;
  }
  const cudaMemcpyKind kind = from_gpu
                                  ? (to_gpu ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                                  : cudaMemcpyHostToDevice;
  MH_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), bytes, kind, compute_));
  // The host may read dst as soon as copy() returns.
  if (!to_gpu) MH_CUDA_CHECK(cudaStreamSynchronize(compute_));
}

void CudaBackend::layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                double eps, Tensor& y, Tensor& mean, Tensor& rstd) {
  cuda::layernorm_fwd(x, weight, bias, eps, y, mean, rstd, compute_);
}

void CudaBackend::layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                const Tensor& mean, const Tensor& rstd, Tensor& dx, Tensor& dweight,
                                Tensor& dbias) {
  cuda::layernorm_bwd(dy, x, weight, mean, rstd, dx, dweight, dbias, compute_);
}

void CudaBackend::residual_layernorm_fwd(const Tensor& x, const Tensor& body, double p,
                                         uint64_t seed, uint64_t offset, const Tensor& weight,
                                         const Tensor& bias, double eps, Tensor& sum, Tensor& y,
                                         Tensor& mean, Tensor& rstd) {
  if (!cuda::residual_layernorm_fwd(x, body, p, seed, offset, weight, bias, eps, sum, y, mean, rstd,
                                    compute_))
    Backend::residual_layernorm_fwd(x, body, p, seed, offset, weight, bias, eps, sum, y, mean,
                                    rstd);
}

void CudaBackend::activation_fwd(ActKind kind, const Tensor& x, Tensor& y) {
  cuda::activation_fwd(kind, x, y, compute_);
}
void CudaBackend::activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx) {
  cuda::activation_bwd(kind, dy, x, dx, compute_);
}
void CudaBackend::dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset,
                              Tensor& y) {
  cuda::dropout_fwd(x, p, seed, offset, y, compute_);
}
void CudaBackend::dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset,
                              Tensor& dx) {
  cuda::dropout_bwd(dy, p, seed, offset, dx, compute_);
}
void CudaBackend::embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe, double scale,
                            Tensor& y) {
  cuda::embed_fwd(ids, table, pe, scale, y, compute_);
}
void CudaBackend::embed_bwd(const Tensor& ids, const Tensor& dy, double scale, Tensor& dtable) {
  cuda::embed_bwd(ids, dy, scale, dtable, compute_);
}

// --- host-returning reductions --------------------------------------------------------------

XentResult CudaBackend::softmax_xent(const Tensor& logits, const Tensor& labels, int64_t pad_id,
                                     double smoothing, double grad_scale, Tensor* dlogits) {
  MH_CUDA_CHECK(cudaMemsetAsync(sums_.raw(), 0, 3 * sizeof(double), compute_));
  cuda::softmax_xent(logits, labels, pad_id, smoothing, grad_scale, dlogits, sums_, compute_);
  double host[3] = {0, 0, 0};
  MH_CUDA_CHECK(cudaMemcpyAsync(host, sums_.raw(), sizeof(host), cudaMemcpyDeviceToHost, compute_));
  MH_CUDA_CHECK(cudaStreamSynchronize(compute_));
  XentResult r;
  r.loss_sum = host[0];
  r.nll_sum = host[1];
  r.tokens = static_cast<int64_t>(host[2] + 0.5);
  return r;
}

double CudaBackend::sum_squares(const Tensor& x) {
  return sum_squares_all({&x});
}

int64_t* CudaBackend::upload_list(DeviceList& l, std::vector<int64_t> list) {
  if (list != l.host) {
    l.host = std::move(list);
    l.dev = empty({static_cast<int64_t>(l.host.size() * sizeof(int64_t))}, DType::u8);
    // From the member: the stream may still be reading the copy when this returns.
    MH_CUDA_CHECK(cudaMemcpyAsync(l.dev.raw(), l.host.data(), l.host.size() * sizeof(int64_t),
                                  cudaMemcpyHostToDevice, compute_));
  }
  return static_cast<int64_t*>(l.dev.raw());
}

double CudaBackend::sum_squares_all(const std::vector<const Tensor*>& xs) {
  Tensor out = sums_.view({3}).rows(0, 1);
  MH_CUDA_CHECK(cudaMemsetAsync(out.raw(), 0, sizeof(double), compute_));
  // F32 tensors (gradients) in one launch; any other dtype by itself. Each adds into `out`.
  // Layout of the device list: xs*[n], sizes[n], first_block[n + 1] (8 bytes each).
  std::vector<int64_t> list, sizes;
  for (const Tensor* x : xs) {
    if (x->numel() == 0) continue;
    if (x->dtype() != DType::f32 || x->device() != Device::cuda) {
      cuda::sum_squares(*x, out, compute_);
      continue;
    }
    list.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(x->raw())));
    sizes.push_back(x->numel());
  }
  if (!sizes.empty()) {
    const size_t n = sizes.size();
    const std::vector<int64_t> first = cuda::sum_squares_first_blocks(sizes);
    list.insert(list.end(), sizes.begin(), sizes.end());
    list.insert(list.end(), first.begin(), first.end());
    const int64_t* dev = upload_list(sum_list_, std::move(list));
    cuda::sum_squares_multi({reinterpret_cast<const float* const*>(dev), dev + n, dev + 2 * n,
                             static_cast<int>(n), first.back()},
                            out, compute_);
  }
  double host = 0;
  MH_CUDA_CHECK(cudaMemcpyAsync(&host, out.raw(), sizeof(host), cudaMemcpyDeviceToHost, compute_));
  MH_CUDA_CHECK(cudaStreamSynchronize(compute_));
  return host;
}

void CudaBackend::adam_step_all(const std::vector<AdamSlot>& slots, double lr, double beta1,
                                double beta2, double eps, double weight_decay, int64_t step,
                                double grad_scale) {
  // Layout of the device list: params*[n], grads*[n], m*[n], v*[n], sizes[n], copies*[n] (8
  // bytes each). Copies ride along in the kernel when they share one dtype (bf16 or fp16, as a
  // model's compute weights do); any other is cast after it.
  const size_t n = slots.size();
  std::vector<int64_t> list(6 * n, 0);
  int64_t max_size = 0, count = 0;
  DType copy_dtype = DType::f32;  // f32: none yet
  std::vector<const AdamSlot*> cast_after;
  for (const AdamSlot& s : slots) {
    MH_CHECK(s.param->dtype() == DType::f32 && s.grad->dtype() == DType::f32 &&
                 s.m->dtype() == DType::f32 && s.v->dtype() == DType::f32,
             "adam_step_all: F32 params, grads and moments");
    MH_CHECK(s.grad->numel() == s.param->numel() && s.m->numel() == s.param->numel() &&
                 s.v->numel() == s.param->numel(),
             "adam_step_all shapes");
    if (s.param->numel() == 0) continue;
    const void* ptrs[4] = {s.param->raw(), s.grad->raw(), s.m->raw(), s.v->raw()};
    for (int j = 0; j < 4; ++j)
      list[j * n + count] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(ptrs[j]));
    list[4 * n + count] = s.param->numel();
    if (s.copy) {
      MH_CHECK(s.copy->numel() == s.param->numel(), "adam_step_all: copy of ", s.copy->numel(),
               " elements for a param of ", s.param->numel());
      const DType t = s.copy->dtype();
      if (copy_dtype == DType::f32 && (t == DType::bf16 || t == DType::f16)) copy_dtype = t;
      if (t == copy_dtype)
        list[5 * n + count] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(s.copy->raw()));
      else
        cast_after.push_back(&s);
    }
    max_size = std::max(max_size, s.param->numel());
    ++count;
  }
  if (count == 0) return;
  int64_t* dev = upload_list(adam_list_, std::move(list));
  cuda::AdamTensorList l{reinterpret_cast<float**>(dev),
                         reinterpret_cast<float**>(dev + n),
                         reinterpret_cast<float**>(dev + 2 * n),
                         reinterpret_cast<float**>(dev + 3 * n),
                         dev + 4 * n,
                         static_cast<int>(count),
                         max_size};
  if (copy_dtype != DType::f32) {
    l.copies = reinterpret_cast<void**>(dev + 5 * n);
    l.copies_bf16 = copy_dtype == DType::bf16;
  }
  cuda::adam_multi(l, lr, beta1, beta2, eps, weight_decay, step, grad_scale, compute_);
  for (const AdamSlot* s : cast_after) cast(*s->param, *s->copy);
}

void CudaBackend::adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr,
                            double beta1, double beta2, double eps, double weight_decay,
                            int64_t step, double grad_scale) {
  adam_step_all({{&param, &grad, &m, &v}}, lr, beta1, beta2, eps, weight_decay, step, grad_scale);
}

}  // namespace mh
