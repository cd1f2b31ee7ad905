// CUDA events as ProfilingBackend's time marks (see the header).
#include "backend/cuda/cuda_op_clock.h"

#include <cuda_runtime.h>

#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"

namespace mh::cuda {

namespace {

class CudaOpClock final : public OpClock {
 public:
  CudaOpClock(int device, cudaStream_t stream) : device_(device), stream_(stream) {}
  ~CudaOpClock() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);  // no throwing from a destructor
  }
  CudaOpClock(const CudaOpClock&) = delete;
  CudaOpClock& operator=(const CudaOpClock&) = delete;

  void mark(size_t i) override {
    while (events_.size() <= i) {  // created once, reused by every later step
      cudaEvent_t e = nullptr;
      MH_CUDA_CHECK(cudaSetDevice(device_));
      MH_CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    MH_CUDA_CHECK(cudaEventRecord(events_[i], stream_));
  }
  void elapsed(size_t n, std::vector<double>& seconds) override {
    seconds.assign(n > 0 ? n - 1 : 0, 0.0);
    if (n == 0) return;
    MH_CUDA_CHECK(cudaEventSynchronize(events_[n - 1]));  // every earlier mark has passed too
    for (size_t i = 0; i + 1 < n; ++i) {
      float ms = 0;
      MH_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
      seconds[i] = static_cast<double>(ms) * 1e-3;
    }
  }

 private:
  int device_;
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
};

}  // namespace

std::unique_ptr<OpClock> make_cuda_op_clock(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  MH_CHECK(cuda, "make_cuda_op_clock: ", backend.name(), " is not the CUDA backend");
  return std::make_unique<CudaOpClock>(cuda->device_index(), cuda->compute_stream());
}

}  // namespace mh::cuda
