// Checks of an AttnProblem shared by the fused implementations, and what the custom kernels
// support (attention_problem.h).
#include "backend/cuda/attention/attention_problem.h"

#include <cmath>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace mh::cuda {

AttnProblem padded_attn_problem(const AttnArgs& a, DType t, const int32_t* key_len_dev) {
  AttnProblem p;
  p.dtype = t;
  p.batch = static_cast<int>(a.batch);
  p.heads = static_cast<int>(a.heads);
  p.head_dim = static_cast<int>(a.head_dim);
  p.max_len_q = static_cast<int>(a.len_q);
  p.max_len_k = static_cast<int>(a.len_k);
  p.total_q = a.batch * a.len_q;
  p.total_k = a.batch * a.len_k;
  p.key_len = key_len_dev;
  p.causal = a.causal;
  p.scale = static_cast<float>(a.scale);
  p.dropout = static_cast<float>(a.dropout);
  p.seed = a.seed;
  p.offset = a.offset;
  return p;
}

void check_attn_problem(const AttnProblem& p, const char* who) {
  MH_CHECK(p.dtype == DType::bf16 || p.dtype == DType::f16, who, ": BF16 or F16, not ",
           dtype_name(p.dtype));
  MH_CHECK(p.batch >= 0 && p.heads >= 1 && p.head_dim >= 1 && p.max_len_q >= 0 && p.max_len_k >= 0,
           who, ": batch ", p.batch, " heads ", p.heads, " head_dim ", p.head_dim, " lengths ",
           p.max_len_q, "/", p.max_len_k);
  MH_CHECK(p.batch <= 65535 && p.heads <= 65535, who, ": batch and heads must be <= 65535");
  MH_CHECK(std::isfinite(p.scale) && p.scale > 0, who, ": softmax scale ", p.scale);
  MH_CHECK(p.dropout >= 0 && p.dropout < 1, who, ": dropout ", p.dropout, " not in [0, 1)");
  MH_CHECK((p.cu_seqlens_q == nullptr) == (p.cu_seqlens_k == nullptr), who,
           ": packed batches need both cu_seqlens_q and cu_seqlens_k");
  if (p.packed()) {
    MH_CHECK(p.key_len == nullptr, who,
             ": key_len is for padded batches; packed ones use cu_seqlens");
  } else {
    MH_CHECK(p.key_len || p.batch == 0, who, ": padded batches need key_len");
    MH_CHECK(
        p.total_q == int64_t{p.batch} * p.max_len_q && p.total_k == int64_t{p.batch} * p.max_len_k,
        who, ": padded total rows ", p.total_q, "/", p.total_k, " != batch × max_len");
  }
  MH_CHECK(p.total_q * p.row_elems() < (int64_t{1} << 40), who, ": problem too large");
}

void set_smem_limit_once(const void* kernel, int bytes) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;  // (kernel, device)
  int dev = 0;
  MH_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, dev})) return;
  MH_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.insert({kernel, dev});
}

namespace {
// Compute capability major of the current device, cached per device.
int device_major() {
  static std::mutex mu;
  static std::vector<int> majors;
  int dev = 0;
  MH_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(majors.size()) <= dev) majors.resize(dev + 1, -1);
  if (majors[dev] < 0)
    MH_CUDA_CHECK(cudaDeviceGetAttribute(&majors[dev], cudaDevAttrComputeCapabilityMajor, dev));
  return majors[dev];
}
}  // namespace

bool flash_shape_supported(const AttnProblem& p, std::string* why) {
  auto no = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  if (p.dtype != DType::bf16 && p.dtype != DType::f16)
    return no(std::string("computes in bf16/fp16, not ") + dtype_name(p.dtype));
  if (p.head_dim != 64 && p.head_dim != 128)
    return no("supports head_dim 64 and 128, not " + std::to_string(p.head_dim));
  return true;
}

bool flash_supports(const AttnProblem& p, std::string* why) {
  if (!flash_shape_supported(p, why)) return false;
  if (device_major() < 8) {
    if (why) *why = "needs an sm_80 or newer GPU (mma.sync bf16)";
    return false;
  }
  return true;
}

}  // namespace mh::cuda
