// NcclCommunicator: the Communicator contract (dist/communicator.h) over NCCL, for device (CUDA)
// tensors. Built only with the CUDA backend (CMake adds src/dist/nccl/ when CUDA is found).
//
// Construction is collective over an MPI communicator (a group of World: every rank of `comm`
// constructs its NcclCommunicator together): rank 0 of `comm` creates an ncclUniqueId
// (ncclGetUniqueId), broadcasts it to the others over MPI (MPI_Bcast under mpi_call_mutex(), the
// thread contract of dist/mpi_communicator.h), and every rank calls ncclCommInitRank with its rank
// in `comm`. One NcclCommunicator per process group, as for MPI.
//
// Rank → GPU. A rank uses device `local rank % device count` (World::local_rank(): its rank among
// the processes of its node); nccl_device_for_local_rank() computes it, and the constructor makes
// that device current on the calling thread. NCCL refuses two ranks of one communicator on one
// GPU ("Duplicate GPU detected"): with one GPU, a multi-rank job must use the MPI communicator
// (host-staged) instead; NCCL itself is then tested at world size 1.
//
// Streams and ordering. Every collective is enqueued on the communication stream `comm_stream`
// given at construction, after an event recorded on the compute stream `compute_stream` at the
// time of the call, which `comm_stream` waits on: a collective sees everything the compute stream
// was asked to do before it (the gradients backward wrote), while later compute work overlaps it.
// Completion is a CUDA event recorded on `comm_stream` after the collective: Work::test() asks it
// (cudaEventQuery), Work::wait() blocks the host until it has completed (polling it and NCCL's
// asynchronous error state, so a failed peer surfaces as an error rather than a hang), and
// Work::seconds() is the device time between events recorded just before and after the
// collective. Collectives complete in issue order (one stream). Buffers must stay untouched until
// the Work is complete; in particular the compute stream must not overwrite them before then
// (wait() on the host, then launch).
//
// Tensors: device tensors only; F32, BF16, F16, I32 and F64 (MH_CHECK otherwise). Every rank's
// counts must match, as for every Communicator. reduce_scatter: in (n · size) → out (n);
// all_gather: in (n) → out (n · size), in place when `in` is this rank's chunk of `out`.
// barrier(): a 1-element all-reduce of a scratch device int, waited for by Work::wait().
//
// Threads: collectives are issued from one thread at a time (as DDP does); Work handles may be
// tested and waited for from any thread. NCCL runs in its default blocking mode.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>

#include "dist/communicator.h"
#include "dist/mpi_communicator.h"  // <mpi.h>, mpi_call_mutex()

namespace mh {

// An NCCL call that returned an error.
struct NcclError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws NcclError "file:line: ncclXxx(...) failed: <ncclGetErrorString> (<last error>)".
[[noreturn]] void nccl_fail(ncclResult_t result, const char* call, const char* file, int line);

// Every NCCL call goes through this.
#define MH_NCCL_CHECK(call)                                                                  \
  do {                                                                                       \
    const ncclResult_t mh_nccl_rc_ = (call);                                                 \
    if (mh_nccl_rc_ != ncclSuccess) ::mh::nccl_fail(mh_nccl_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// NCCL's datatype of a tensor dtype: F32, BF16, F16, I32, F64 (MH_CHECK for the others).
ncclDataType_t nccl_datatype(DType dtype);
ncclRedOp_t nccl_op(ReduceOp op);

// The GPU of a rank: local_rank % the number of visible devices (MH_CHECK that there is one).
int nccl_device_for_local_rank(int local_rank);

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `comm` (see the file comment). `device` is this rank's GPU (see
  // nccl_device_for_local_rank); `compute_stream` and `comm_stream` are streams of that device,
  // owned by the caller and outliving this communicator.
  NcclCommunicator(MPI_Comm comm, std::string name, int device, cudaStream_t compute_stream,
                   cudaStream_t comm_stream);
  // Waits for every issued collective (the other ranks issued them too), then destroys the NCCL
  // communicator (ncclCommAbort instead when NCCL reported an asynchronous error).
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  Work all_reduce(Tensor& buf, ReduceOp op) override;
  Work reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  Work all_gather(const Tensor& in, Tensor& out) override;
  Work broadcast(Tensor& buf, int root) override;
  Work barrier() override;

  ncclComm_t comm() const { return comm_; }
  int device() const { return device_; }
  cudaStream_t comm_stream() const { return comm_stream_; }

 private:
  // Orders comm_stream_ after the compute stream, records the start event, enqueues `launch` (the
  // NCCL call) on comm_stream_, records the end event, and returns a Work completed by it. `keep`
  // are the tensors whose storage the Work keeps alive until it is released.
  template <typename Launch>
  Work enqueue(const char* what, Launch&& launch, Tensor keep_a, Tensor keep_b);

  ncclComm_t comm_ = nullptr;
  std::string name_;
  int rank_ = 0, size_ = 1, device_ = 0;
  cudaStream_t compute_stream_ = nullptr, comm_stream_ = nullptr;
  int* barrier_buf_ = nullptr;  // one device int for barrier()
  // comm_ as the Work handles see it: cleared by the destructor, so a handle that outlives this
  // communicator never asks a destroyed NCCL communicator for its error state.
  std::shared_ptr<std::atomic<ncclComm_t>> ref_;
};

}  // namespace mh
