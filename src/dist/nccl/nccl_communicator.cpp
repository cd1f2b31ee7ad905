// NcclCommunicator: collectives on a CUDA communication stream, Work completed by CUDA events
// (see the header).
#include "dist/nccl/nccl_communicator.h"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <thread>

#include "backend/cuda/cuda_check.h"
#include "dist/work_state.h"

namespace mh {

void nccl_fail(ncclResult_t result, const char* call, const char* file, int line) {
  const char* last = ncclGetLastError(nullptr);
  throw NcclError(str(file, ":", line, ": ", call, " failed: ", ncclGetErrorString(result),
                      last && *last ? str(" (", last, ")") : std::string()));
}

ncclDataType_t nccl_datatype(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::bf16:
      return ncclBfloat16;
    case DType::f16:
      return ncclFloat16;
    case DType::i32:
      return ncclInt32;
    case DType::f64:
      return ncclFloat64;
    default:
      break;
  }
  MH_CHECK(false, "NCCL collectives support F32, BF16, F16, I32 and F64 tensors, not ",
           dtype_name(dtype));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::max:
      return ncclMax;
    case ReduceOp::min:
      return ncclMin;
  }
  MH_CHECK(false, "unknown ReduceOp");
}

int nccl_device_for_local_rank(int local_rank) {
  int count = 0;
  MH_CUDA_CHECK(cudaGetDeviceCount(&count));
  MH_CHECK(count > 0, "no CUDA device visible");
  MH_CHECK(local_rank >= 0, "negative local rank ", local_rank);
  return local_rank % count;
}

namespace {

void check_device(const Tensor& t, const char* what) {
  MH_CHECK(t.defined(), what, ": undefined tensor");
  MH_CHECK(t.device() == Device::cuda, what, ": NcclCommunicator takes device (CUDA) tensors only");
}

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  const auto* pa = static_cast<const std::byte*>(a);
  const auto* pb = static_cast<const std::byte*>(b);
  return an > 0 && bn > 0 && pa < pb + bn && pb < pa + an;
}

// Makes `device` current for the scope, restoring the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MH_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) MH_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int cur = prev_;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// The NCCL communicator as the Work handles see it: cleared by ~NcclCommunicator, so a handle that
// outlives its communicator never asks a destroyed one for its error state.
using CommRef = std::shared_ptr<std::atomic<ncclComm_t>>;

// Throws when NCCL reports an asynchronous error on `comm` (a peer failed, a network error).
void check_async(ncclComm_t comm, const char* name) {
  ncclResult_t async = ncclSuccess;
  MH_NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
  if (async != ncclSuccess && async != ncclInProgress)
    throw NcclError(str(name, ": asynchronous NCCL error: ", ncclGetErrorString(async), " (",
                        ncclGetLastError(comm), ")"));
}

// The events of one collective; destroyed with the last Work handle that refers to them.
struct OpEvents {
  cudaEvent_t start = nullptr, end = nullptr;
  Tensor keep_a, keep_b;  // the buffers, alive until the Work state goes
  CommRef comm;
  std::string name;
  ~OpEvents() {
    if (start) cudaEventDestroy(start);  // no throw in a destructor; a failure leaks one event
    if (end) cudaEventDestroy(end);
  }
  // true once the collective has ended; throws its failure.
  bool ended() const {
    const cudaError_t e = cudaEventQuery(end);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) MH_CUDA_CHECK(e);
    const ncclComm_t c = comm->load(std::memory_order_acquire);
    if (!c) throw NcclError(str(name, ": communicator destroyed before the collective completed"));
    check_async(c, name.c_str());
    return false;
  }
};

void relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

NcclCommunicator::NcclCommunicator(MPI_Comm comm, std::string name, int device,
                                   cudaStream_t compute_stream, cudaStream_t comm_stream)
    : name_(std::move(name)),
      device_(device),
      compute_stream_(compute_stream),
      comm_stream_(comm_stream) {
  int count = 0;
  MH_CUDA_CHECK(cudaGetDeviceCount(&count));
  MH_CHECK(device >= 0 && device < count, name_, ": device ", device, " outside [0, ", count, ")");
  MH_CUDA_CHECK(cudaSetDevice(device));  // current for this thread from here on (rank → GPU)

  // The unique id travels over MPI with a flag, so a failure on rank 0 fails every rank instead
  // of leaving them in MPI_Bcast.
  struct {
    ncclUniqueId id;
    int ok;
  } msg;
  std::memset(&msg, 0, sizeof msg);
  std::string root_error;
  {
    std::lock_guard<std::mutex> lock(mpi_call_mutex());
    MH_MPI_CHECK(MPI_Comm_rank(comm, &rank_));
    MH_MPI_CHECK(MPI_Comm_size(comm, &size_));
    if (rank_ == 0) {
      try {
        MH_NCCL_CHECK(ncclGetUniqueId(&msg.id));
        msg.ok = 1;
      } catch (const std::exception& e) {
        root_error = e.what();
      }
    }
    MH_MPI_CHECK(MPI_Bcast(&msg, static_cast<int>(sizeof msg), MPI_BYTE, 0, comm));
  }
  if (!msg.ok)
    throw NcclError(str(name_, ": rank 0 could not create the NCCL unique id",
                        root_error.empty() ? std::string() : str(": ", root_error)));
  MH_NCCL_CHECK(ncclCommInitRank(&comm_, size_, msg.id, rank_));
  try {
    MH_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&barrier_buf_), sizeof(int)));
    MH_CUDA_CHECK(cudaMemset(barrier_buf_, 0, sizeof(int)));
  } catch (...) {
    ncclCommDestroy(comm_);
    throw;
  }
  ref_ = std::make_shared<std::atomic<ncclComm_t>>(comm_);
}

NcclCommunicator::~NcclCommunicator() {
  // No throwing from here: failures leak and are otherwise ignored.
  if (cudaSetDevice(device_) != cudaSuccess) return;
  bool failed = false;
  // Drain: every issued collective completes (the other ranks issued them too), unless NCCL
  // reports an asynchronous error, which would leave its kernels waiting forever.
  for (;;) {
    const cudaError_t e = cudaStreamQuery(comm_stream_);
    if (e == cudaSuccess) break;
    if (e != cudaErrorNotReady) {
      failed = true;
      break;
    }
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess ||
        (async != ncclSuccess && async != ncclInProgress)) {
      failed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  if (ref_) ref_->store(nullptr, std::memory_order_release);
  if (failed) {
    ncclCommAbort(comm_);
  } else {
    if (ncclCommFinalize(comm_) != ncclSuccess)
      ncclCommAbort(comm_);
    else
      ncclCommDestroy(comm_);
  }
  if (barrier_buf_) cudaFree(barrier_buf_);
}

template <typename Launch>
Work NcclCommunicator::enqueue(const char* what, Launch&& launch, Tensor keep_a, Tensor keep_b) {
  DeviceGuard guard(device_);
  auto ev = std::make_shared<OpEvents>();
  ev->comm = ref_;
  ev->name = str(name_, " ", what);
  ev->keep_a = std::move(keep_a);
  ev->keep_b = std::move(keep_b);
  MH_CUDA_CHECK(cudaEventCreate(&ev->start));
  MH_CUDA_CHECK(cudaEventCreate(&ev->end));

  // comm stream after everything the compute stream was asked to do so far.
  if (compute_stream_ != comm_stream_) {
    cudaEvent_t ready = nullptr;
    MH_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    const cudaError_t rec = cudaEventRecord(ready, compute_stream_);
    const cudaError_t wait = rec == cudaSuccess ? cudaStreamWaitEvent(comm_stream_, ready, 0) : rec;
    cudaEventDestroy(ready);  // safe once the wait is enqueued: it keeps the recorded work
    MH_CUDA_CHECK(wait);
  }
  MH_CUDA_CHECK(cudaEventRecord(ev->start, comm_stream_));
  launch();
  MH_CUDA_CHECK(cudaEventRecord(ev->end, comm_stream_));

  auto state = std::make_shared<Work::State>();
  state->mark_started();  // host clock; seconds() uses the events
  state->poll = [ev] { return ev->ended(); };
  state->block = [ev] {
    // Spin briefly (short collectives end here), then yield, then nap; asking NCCL's error state
    // each round so a failed peer becomes an error, not a hang.
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      if (ev->ended()) return;
      const auto waited = std::chrono::steady_clock::now() - t0;
      if (waited < std::chrono::microseconds(20)) {
        relax();
      } else if (waited < std::chrono::milliseconds(2)) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
  };
  state->elapsed = [ev] {
    float ms = 0;
    MH_CUDA_CHECK(cudaEventElapsedTime(&ms, ev->start, ev->end));
    return static_cast<double>(ms) * 1e-3;
  };
  return Work(std::move(state));
}

Work NcclCommunicator::all_reduce(Tensor& buf, ReduceOp op) {
  check_device(buf, "all_reduce");
  const ncclDataType_t dt = nccl_datatype(buf.dtype());
  const ncclRedOp_t rop = nccl_op(op);
  const size_t n = static_cast<size_t>(buf.numel());
  void* p = buf.raw();
  return enqueue(
      "all_reduce",
      [&] {
        if (n > 0) MH_NCCL_CHECK(ncclAllReduce(p, p, n, dt, rop, comm_, comm_stream_));
      },
      buf, Tensor());
}

Work NcclCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  check_device(in, "reduce_scatter");
  check_device(out, "reduce_scatter");
  MH_CHECK(in.dtype() == out.dtype(), "reduce_scatter: in is ", dtype_name(in.dtype()), ", out is ",
           dtype_name(out.dtype()));
  MH_CHECK(in.numel() == out.numel() * size_, "reduce_scatter: in has ", in.numel(),
           " elements, expected out's ", out.numel(), " x ", size_, " ranks");
  MH_CHECK(!overlaps(in.raw(), in.nbytes(), out.raw(), out.nbytes()),
           "reduce_scatter: in and out overlap");
  const ncclDataType_t dt = nccl_datatype(in.dtype());
  const ncclRedOp_t rop = nccl_op(op);
  const size_t n = static_cast<size_t>(out.numel());
  const void* src = in.raw();
  void* dst = out.raw();
  return enqueue(
      "reduce_scatter",
      [&] {
        if (n > 0) MH_NCCL_CHECK(ncclReduceScatter(src, dst, n, dt, rop, comm_, comm_stream_));
      },
      in, out);
}

Work NcclCommunicator::all_gather(const Tensor& in, Tensor& out) {
  check_device(in, "all_gather");
  check_device(out, "all_gather");
  MH_CHECK(in.dtype() == out.dtype(), "all_gather: in is ", dtype_name(in.dtype()), ", out is ",
           dtype_name(out.dtype()));
  MH_CHECK(out.numel() == in.numel() * size_, "all_gather: out has ", out.numel(),
           " elements, expected in's ", in.numel(), " x ", size_, " ranks");
  const auto* own = static_cast<const std::byte*>(out.raw()) + in.nbytes() * rank_;
  const bool in_place = in.raw() == own;  // NCCL's in-place all-gather
  MH_CHECK(in_place || !overlaps(in.raw(), in.nbytes(), out.raw(), out.nbytes()),
           "all_gather: in overlaps out without being this rank's chunk of it");
  const ncclDataType_t dt = nccl_datatype(in.dtype());
  const size_t n = static_cast<size_t>(in.numel());
  const void* src = in.raw();
  void* dst = out.raw();
  return enqueue(
      "all_gather",
      [&] {
        if (n > 0) MH_NCCL_CHECK(ncclAllGather(src, dst, n, dt, comm_, comm_stream_));
      },
      in, out);
}

Work NcclCommunicator::broadcast(Tensor& buf, int root) {
  check_device(buf, "broadcast");
  MH_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " outside [0, ", size_, ")");
  const ncclDataType_t dt = nccl_datatype(buf.dtype());
  const size_t n = static_cast<size_t>(buf.numel());
  void* p = buf.raw();
  return enqueue(
      "broadcast",
      [&] {
        if (n > 0) MH_NCCL_CHECK(ncclBroadcast(p, p, n, dt, root, comm_, comm_stream_));
      },
      buf, Tensor());
}

Work NcclCommunicator::barrier() {
  int* p = barrier_buf_;
  return enqueue(
      "barrier",
      [&] { MH_NCCL_CHECK(ncclAllReduce(p, p, 1, ncclInt32, ncclSum, comm_, comm_stream_)); },
      Tensor(), Tensor());
}

}  // namespace mh
