// See flash_sm90_host.h.
#include "backend/cuda/attention/flash_sm90_host.h"

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <map>
#include <mutex>
#include <vector>

#include "backend/cuda/cuda_check.h"

namespace mh::cuda::flash {

namespace {

// cuTensorMapEncodeTiled from the driver, through the runtime; null when the driver has none.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static std::once_flag once;
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  std::call_once(once, [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
    else
      (void)cudaGetLastError();  // not sticky; clear it
  });
  return fn;
}

}  // namespace

bool tma_encoder_available() {
  return tensor_map_encoder() != nullptr;
}

CUtensorMap encode_tma(const TmaSpec& s, DType t, const char* who) {
  CUtensorMap m;
  cuuint64_t dims[5], strides[4];
  cuuint32_t box[5], elem_strides[5];
  for (int i = 0; i < s.rank; ++i) {
    dims[i] = s.dims[i];
    box[i] = s.box[i];
    elem_strides[i] = 1;
    if (i > 0) strides[i - 1] = s.strides[i];
  }
  const CUresult r = tensor_map_encoder()(
      &m, t == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
      static_cast<cuuint32_t>(s.rank), const_cast<void*>(s.base), dims, strides, box, elem_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  MH_CHECK(r == CUDA_SUCCESS, who, ": cuTensorMapEncodeTiled failed (CUresult ",
           static_cast<int>(r), ")");
  return m;
}

// Asked on every attention call (CudaBackend::attention_impl), hence the cache.
int device_cc() {
  static std::mutex mu;
  static std::vector<int> ccs;
  int dev = 0;
  MH_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(ccs.size()) <= dev) ccs.resize(dev + 1, -1);
  if (ccs[dev] < 0) {
    int major = 0, minor = 0;
    MH_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    MH_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    ccs[dev] = 10 * major + minor;
  }
  return ccs[dev];
}

void check_setmaxnreg_pool(const void* kernel, int threads, int producer_regs, int consumer_regs,
                           const char* who) {
  static std::mutex mu;
  static std::map<const void*, int> regs_of;
  int regs = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = regs_of.find(kernel);
    if (it == regs_of.end()) {
      cudaFuncAttributes a{};
      MH_CUDA_CHECK(cudaFuncGetAttributes(&a, kernel));
      it = regs_of.emplace(kernel, a.numRegs).first;
    }
    regs = it->second;
  }
  MH_CHECK(128 * (regs - producer_regs) >= (threads - 128) * (consumer_regs - regs), who,
           ": the kernel was compiled with ", regs, " registers per thread, its setmaxnreg needs ",
           consumer_regs - (128 * (consumer_regs - producer_regs)) / threads,
           " (model.attention: custom does without)");
}

}  // namespace mh::cuda::flash
