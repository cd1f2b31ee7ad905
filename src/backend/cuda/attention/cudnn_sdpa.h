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
  // Whether cudnn-frontend accepts the forward and backward graphs of the problem for a GPU of
  // compute capability `sm_version` (10 · major + minor); if not, why. Needs neither a GPU nor a
  // cuDNN handle (the frontend's validate() only): cuDNN's engines may still refuse the graphs
  // when supports() builds them. For checking the graph descriptions on a machine without a GPU.
  static bool validate_graphs(const AttnProblem& p, int sm_version, std::string* why);
  // io.lse receives cuDNN's softmax statistics (H · total_q floats, cuDNN's own layout).
  void fwd(const AttnProblem& p, const AttnFwdIO& io, cudaStream_t s);
  void bwd(const AttnProblem& p, const AttnBwdIO& io, cudaStream_t s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mh::cuda
