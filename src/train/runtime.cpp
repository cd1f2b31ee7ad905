#include "train/runtime.h"

#include "backend/cpu/blas_kernels.h"
#include "backend/cpu/cpu_backend.h"
#include "dist/host_staged_communicator.h"
#include "dist/mpi_communicator.h"

#ifdef MH_WITH_CUDA
#include "backend/cuda/cuda_available.h"
#include "backend/cuda/cuda_backend.h"
#include "dist/nccl/nccl_communicator.h"
#endif

namespace mh {

namespace {
int visible_gpus() {
#ifdef MH_WITH_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}
}  // namespace

Runtime make_runtime(const Config& cfg, World& world) {
  Runtime rt;
  std::string device = cfg.train.device;
  if (device == "auto") device = visible_gpus() > 0 ? "cuda" : "cpu";
  if (device == "cpu") {
    if (cfg.train.precision != Precision::fp32)
      user_error("train.precision ", name_of(cfg.train.precision),
                 " needs a GPU (train.device resolved to cpu: ",
                 visible_gpus() > 0 ? "set train.device=cuda" : "no CUDA device is visible", ")");
    cpu_set_threads(static_cast<int>(cfg.train.threads));
    rt.backend = std::make_unique<CpuBackend>();
    rt.dp = rt.dp_host = &world.dp_comm();
    rt.description = "cpu (" + blas_description() + "), dp over " + rt.dp->name();
    return rt;
  }
#ifdef MH_WITH_CUDA
  const int gpus = visible_gpus();
  if (gpus == 0) user_error("train.device cuda: no CUDA device is visible on ", world.hostname());
  const int dev = world.local_rank() % gpus;
  rt.backend = make_cuda_backend(dev);
  auto* cuda = static_cast<CudaBackend*>(rt.backend.get());
  rt.dp = rt.dp_host = &world.dp_comm();
  std::string how = rt.dp->name();
  if (world.dp() > 1) {
    auto* mpi = dynamic_cast<MpiCommunicator*>(&world.dp_comm());
    MH_CHECK(mpi, "the dp communicator is not an MPI communicator");
    if (world.local_size() <= gpus) {
      rt.owned_dp = std::make_unique<NcclCommunicator>(mpi->comm(), "nccl:dp", dev,
                                                       cuda->compute_stream(), cuda->comm_stream());
      how = "nccl";
    } else {
      // More ranks than GPUs on this node: NCCL refuses two ranks of one communicator on one GPU.
      rt.owned_dp = std::make_unique<HostStagedCommunicator>(world.dp_comm(), *rt.backend);
      how = "mpi, staged through host memory (ranks share a GPU; no overlap)";
    }
    rt.dp = rt.owned_dp.get();
  }
  rt.description =
      str("cuda:", dev, " of ", gpus, ", ", name_of(cfg.train.precision), ", dp over ", how);
  return rt;
#else
  user_error(
      "train.device cuda: this multihead was built without the CUDA backend "
      "(configure with -DMULTIHEAD_CUDA=ON on a machine with the CUDA toolkit)");
#endif
}

}  // namespace mh
