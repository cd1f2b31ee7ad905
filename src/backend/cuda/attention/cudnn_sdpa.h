// cuDNN's fused scaled-dot-product attention (model.attention: cudnn), forward and backward,
// through cuDNN's graph API, on the same AttnProblem as the custom kernels
// (attention_problem.h): padded and packed batches, key-padding and causal masks, dropout.
// Graphs are built once per problem shape and cached; workspace comes from the caching allocator.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "backend/cuda/allocator.h"
#include "backend/cuda/attention/attention_problem.h"

namespace mh::cuda {

class CudnnSdpa {
 public:
  CudnnSdpa(int device, std::shared_ptr<CachingAllocator> alloc);
  ~CudnnSdpa();
  CudnnSdpa(const CudnnSdpa&) = delete;
  CudnnSdpa& operator=(const CudnnSdpa&) = delete;

  // Whether this cuDNN (build and runtime) can run the problem; if not, why.
  bool supports(const AttnProblem& p, std::string* why);
  // io.lse receives cuDNN's softmax statistics (H · total_q floats, cuDNN's own layout).
  void fwd(const AttnProblem& p, const AttnFwdIO& io, cudaStream_t s);
  void bwd(const AttnProblem& p, const AttnBwdIO& io, cudaStream_t s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mh::cuda
