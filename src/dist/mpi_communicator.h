// MpiCommunicator: the Communicator contract over an MPI communicator, for host (CPU) tensors.
//
// Why a progress thread. On CPUs, overlapping communication with compute (gradient buckets
// all-reduced while backward still runs) needs someone to drive MPI while the compute thread is
// busy: Open MPI moves a nonblocking collective forward only inside MPI calls made by the process
// (no asynchronous progress over shared memory or TCP), so a collective started with
// MPI_Iallreduce and left alone until the next wait() would not overlap anything. Each
// MpiCommunicator therefore owns one progress thread, started on its first collective. It takes
// collectives from a FIFO queue one at a time, starts each as a nonblocking MPI call
// (MPI_Iallreduce, MPI_Ireduce_scatter_block, MPI_Ibcast, MPI_Ibarrier; all_gather as a ring of
// MPI_Isend/MPI_Irecv, see ring_all_gather) and drives it to completion with MPI_Test.
// Collectives on one communicator thus start and complete in issue order, on every rank;
// collectives on different communicators progress independently.
//
// How it polls. The progress thread shares a core with the compute thread (mpirun binds each
// rank to one core by default; a 2-core machine runs 2 ranks), so a rank waiting for a slower
// peer must not burn that core. After starting a collective the thread tests in a tight loop for
// MpiPolling::spin_us (short collectives end there), then sleeps between tests, 2, 4, 8 ... up to
// MpiPolling::sleep_us µs, its timer slack cut to 1 µs so a sleep is what was asked for. Each
// wake-up from such a sleep preempts the compute thread briefly, which is what keeps the
// collective moving during compute (yielding instead would leave it waiting a whole scheduler
// slice, milliseconds). While a thread is blocked in Work::wait() on this communicator the core is
// the progress thread's: it tests without sleeping (sched_yield between tests, for oversubscribed
// runs).
//
// Costs, measured with `multihead bench comm` (2 ranks, 2 cores, both threads of a rank on one
// core): a call + wait() adds two thread switches on that core, ~10-15 µs, to a collective. Small
// messages pay it in full (4 KB: ~3x the blocking call's time); from 1 MB on all_reduce is within
// ~5% of the blocking MPI_Allreduce, all_gather from 2 MB on. (Tried and measured worse: the
// waiting thread running the queue itself, spinning in wait(), the progress thread spinning for
// the next collective.) World::init makes Open MPI's nonblocking all-reduce use Rabenseifner's
// algorithm (see world.cpp): its default, a binomial tree for in-place calls, ran at ~45% of the
// blocking call.
//
// Thread-level contract (MPI_THREAD_SERIALIZED, see World::init). Every MPI call made by this
// file's code holds mpi_call_mutex(), so the progress threads of several communicators (dp and
// tp both busy) never call MPI at the same time. Code elsewhere may call MPI directly (e.g. a raw
// MPI_Allreduce baseline) only while holding mpi_call_mutex() or while no Work of any
// MpiCommunicator is pending.
//
// Size-1 fast path: with one rank no thread is started and every collective completes at once
// (all_reduce and broadcast: nothing to do; reduce_scatter, all_gather: a copy).
#pragma once

// Only MPI's C API: Open MPI's mpi.h otherwise drags in the removed C++ bindings (libmpi_cxx).
// Include <mpi.h> through this header.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "dist/communicator.h"

namespace mh {

// An MPI call that returned an error (every communicator here uses MPI_ERRORS_RETURN).
struct MpiError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws MpiError "file:line: MPI_Xxx(...) failed: <MPI's error string>".
[[noreturn]] void mpi_fail(int code, const char* call, const char* file, int line);

#define MH_MPI_CHECK(call)                                                                \
  do {                                                                                    \
    const int mh_mpi_rc_ = (call);                                                        \
    if (mh_mpi_rc_ != MPI_SUCCESS) ::mh::mpi_fail(mh_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// Held around every MPI call multihead makes while progress threads may run (see above).
std::mutex& mpi_call_mutex();

// The MPI datatype of a tensor dtype: f32, f64, i32 (MH_CHECK for the others).
MPI_Datatype mpi_datatype(DType dtype);
MPI_Op mpi_op(ReduceOp op);

// How the progress thread polls a started collective (see the file comment).
struct MpiPolling {
  int spin_us = 5;         // tight MPI_Test loop right after the start
  int first_sleep_us = 2;  // then sleeps between tests, doubling from this ...
  int sleep_us = 20;       // ... up to this, while no thread waits for the collective
};

class MpiCommunicator final : public Communicator {
 public:
  // Collective over `comm` (MPI_Comm_dup): every rank of `comm` constructs its MpiCommunicator
  // together. The duplicate gets MPI_ERRORS_RETURN; `comm` itself is left as it is.
  MpiCommunicator(MPI_Comm comm, std::string name, MpiPolling polling = {});
  // Drains the queue (every issued collective completes: the other ranks issued them too), stops
  // and joins the progress thread, frees the duplicate communicator.
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  Work all_reduce(Tensor& buf, ReduceOp op) override;
  Work reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  // In place when `in` is exactly this rank's chunk of `out` (MPI_IN_PLACE).
  Work all_gather(const Tensor& in, Tensor& out) override;
  Work broadcast(Tensor& buf, int root) override;
  Work barrier() override;

  // The duplicated communicator, for raw MPI calls (under the contract above).
  MPI_Comm comm() const { return comm_; }

 private:
  enum class Kind { all_reduce, reduce_scatter, all_gather, broadcast, barrier };
  // One queued collective. The tensors keep their storage alive until it completes.
  struct Op {
    Kind kind = Kind::barrier;
    Tensor in, out;  // all_reduce, broadcast: out only (in place)
    int count = 0;   // elements: all_reduce/broadcast: of out; reduce_scatter/all_gather: per rank
    MPI_Datatype dtype = MPI_DATATYPE_NULL;
    MPI_Op op = MPI_OP_NULL;
    int root = 0;
    bool in_place = false;  // all_gather: `in` is this rank's chunk of `out`
    std::shared_ptr<Work::State> state;
  };
  Work submit(Op op);
  void progress_loop();
  void run_op(Op& op);
  void ring_all_gather(Op& op);
  // MPI_Testall until `reqs` are complete, polling as the file comment says.
  void poll_until_done(MPI_Request* reqs, int n);
  static constexpr int kRingTag = 0x6d68;  // point-to-point messages of ring_all_gather

  MPI_Comm comm_ = MPI_COMM_NULL;
  std::string name_;
  MpiPolling polling_;
  int rank_ = 0, size_ = 1;

  std::mutex queue_mu_;  // guards queue_, stop_, thread_ start
  std::condition_variable queue_cv_;
  std::deque<Op> queue_;
  bool stop_ = false;
  std::thread thread_;
  std::string failure_;  // progress thread only: the first failure; later collectives fail too
  std::shared_ptr<std::atomic<int>> waiters_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace mh
