// The CUDA backend: device tensors from a caching allocator, every op on one compute stream
// (kernels/kernels.h launchers; GEMMs and the naive attention's GEMMs through cuBLASLt), and a
// communication stream for collectives, ordered against the compute stream with events.
// Linear layers fuse their bias, ReLU and bias gradient into the GEMM (cuBLASLt epilogues).
// Ops are asynchronous except those that return host values (softmax_xent, sum_squares) and
// copies to the host, which synchronize the compute stream.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/allocator.h"
#include "backend/cuda/gemm_cublaslt.h"

namespace mh {

namespace cuda {
class CudnnSdpa;
}

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const override { return "cuda"; }
  Device device() const override { return Device::cuda; }
  Tensor empty(const Shape& shape, DType dtype) override;
  Tensor zeros(const Shape& shape, DType dtype) override;

  void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, double alpha,
            double beta) override;
  void add_bias(Tensor& y, const Tensor& bias) override;
  void bias_grad(const Tensor& dy, Tensor& dbias) override;
  // linear_fwd fuses bias and ReLU into cuBLASLt's epilogue where it has one, else composes.
  // linear_bwd_params composes (GEMM, then the bias_grad kernel) unless the BGRADB epilogue is
  // switched on: on an H200 the fused form ran at 0.81-0.97x the composed one on every Linear
  // of paper-base (docs/perf/gpu.md). cuda_linear.cpp.
  void linear_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  std::optional<ActKind> act, Tensor& y) override;
  void linear_bwd_params(const Tensor& dy, const Tensor& x, Tensor& dweight,
                         Tensor& dbias) override;
  void add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void scale(Tensor& x, double s) override;
  void zero(Tensor& x) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void layernorm_fwd(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                     Tensor& y, Tensor& mean, Tensor& rstd) override;
  void layernorm_bwd(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                     const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) override;
  // One kernel where the rows fit it (kernels.h), else Backend's composition.
  void residual_layernorm_fwd(const Tensor& x, const Tensor& body, double p, uint64_t seed,
                              uint64_t offset, const Tensor& weight, const Tensor& bias, double eps,
                              Tensor& sum, Tensor& y, Tensor& mean, Tensor& rstd) override;
  void activation_fwd(ActKind kind, const Tensor& x, Tensor& y) override;
  void activation_bwd(ActKind kind, const Tensor& dy, const Tensor& x, Tensor& dx) override;
  void dropout_fwd(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& y) override;
  void dropout_bwd(const Tensor& dy, double p, uint64_t seed, uint64_t offset, Tensor& dx) override;
  void embed_fwd(const Tensor& ids, const Tensor& table, const Tensor& pe, double scale,
                 Tensor& y) override;
  void embed_bwd(const Tensor& ids, const Tensor& dy, double scale, Tensor& dtable) override;
  void attention_fwd(const AttnArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                     Tensor& out, AttnSaved& saved) override;
  void attention_bwd(const AttnArgs& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                     const Tensor& v, const AttnSaved& saved, Tensor& dq, Tensor& dk,
                     Tensor& dv) override;
  XentResult softmax_xent(const Tensor& logits, const Tensor& labels, int64_t pad_id,
                          double smoothing, double grad_scale, Tensor* dlogits) override;
  double sum_squares(const Tensor& x) override;
  double sum_squares_all(const std::vector<const Tensor*>& xs) override;
  void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr, double beta1,
                 double beta2, double eps, double weight_decay, int64_t step,
                 double grad_scale) override;
  void adam_step_all(const std::vector<AdamSlot>& slots, double lr, double beta1, double beta2,
                     double eps, double weight_decay, int64_t step, double grad_scale) override;

  // dst = src converted between F32, BF16 and F16 (same numel), on the compute stream.
  void cast(const Tensor& src, Tensor& dst) override;

  // --- beyond the Backend interface --------------------------------------------------------
  int device_index() const { return device_; }
  cudaStream_t compute_stream() const { return compute_; }
  cudaStream_t comm_stream() const { return comm_; }
  // The communication stream waits for everything enqueued on the compute stream so far.
  void comm_wait_compute();
  // The compute stream waits for everything enqueued on the communication stream so far.
  void compute_wait_comm();
  void synchronize();  // both streams
  cuda::CachingAllocator& allocator() { return *alloc_; }
  cuda::GemmLt& gemm_lt() { return *gemm_; }
  // linear_bwd_params through cuBLASLt's bias-gradient epilogue (true) or composed (false, the
  // default; MH_GEMM_BGRAD_EPILOGUE=1 starts it true). For `bench gemm` and the tests.
  void set_bgrad_epilogue(bool on) { bgrad_epilogue_ = on; }
  bool bgrad_epilogue() const { return bgrad_epilogue_; }
  // cuDNN's SDPA (created on first use: it loads cuDNN's engines).
  cuda::CudnnSdpa& cudnn_sdpa();
  // The implementation attention_fwd runs for these arguments and dtype: a.impl when it can,
  // else naive (said once on stderr, with the reason).
  AttnImpl attention_impl(const AttnArgs& a, DType t);

 private:
  // Device copy of the host key lengths, re-uploaded (async, on the compute stream) only when
  // they change.
  const int32_t* device_key_len(const AttnArgs& a);
  // One GEMM per (batch, head) of the attention, as strided-batched cuBLASLt calls: `x_b` and
  // `x_h` are each operand's element strides over batch and head.
  struct AttnOperand {
    const void* ptr;
    int64_t ld, stride_b, stride_h;
  };
  void attn_gemm(const AttnArgs& a, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                 AttnOperand x, AttnOperand y, void* c, int64_t ldc, int64_t c_stride_b,
                 int64_t c_stride_h, DType ab, DType ct);

  int device_;
  cudaStream_t compute_ = nullptr, comm_ = nullptr;
  cudaEvent_t compute_event_ = nullptr, comm_event_ = nullptr;
  std::shared_ptr<cuda::CachingAllocator> alloc_;
  std::shared_ptr<void> workspace_;
  std::unique_ptr<cuda::GemmLt> gemm_;
  std::vector<int32_t> key_len_host_;
  Tensor key_len_dev_;
  Tensor sums_;  // F64 [3] for softmax_xent and sum_squares
  std::unique_ptr<cuda::CudnnSdpa> cudnn_sdpa_;
  // A list of pointers and sizes mirrored on the device, uploaded again only when it changes
  // (the parameters and gradients of a run are the same every step): adam_step_all's and
  // sum_squares_all's.
  struct DeviceList {
    std::vector<int64_t> host;
    Tensor dev;
  };
  int64_t* upload_list(DeviceList& l, std::vector<int64_t> list);
  DeviceList adam_list_, sum_list_;
  std::set<std::string> attn_notes_;    // fallback notes already printed
  std::set<std::string> linear_notes_;  // unfused-linear notes already printed
  bool bgrad_epilogue_ = false;
};

}  // namespace mh
