// MpiCommunicator: the Communicator contract over an MPI communicator, for host (CPU) tensors.
//
// Why a progress thread. On CPUs, overlapping communication with compute (gradient buckets
// all-reduced while backward still runs) needs someone to drive MPI while the compute thread is
// busy: Open MPI moves a nonblocking collective forward only inside MPI calls made by the process
// (no asynchronous progress over shared memory or TCP), so a collective started with
// MPI_Iallreduce and left alone until the next wait() would not overlap anything. Each
// MpiCommunicator therefore owns one progress thread, started on its first collective. Issued
// collectives wait in a FIFO queue; they are started one at a time, in issue order, each as a
// nonblocking MPI call (MPI_Iallreduce, MPI_Ireduce_scatter_block, MPI_Ibcast, MPI_Ibarrier;
// all_gather, and all_reduce from kRingAllReduceMinBytes, as rings of MPI_Isend/MPI_Irecv, see
// post_ring_step and post_ring_all_reduce_step) and driven to completion with MPI_Test. Collectives
// on one communicator thus start and complete in issue order, on every rank; collectives on
// different communicators progress independently.
//
// Who drives. "Driving" (starting the next queued collective, testing the one in flight) is done
// under drive_mu_ by whichever thread holds it: the progress thread while nobody waits, or a
// thread in Work::wait() (or Work::test(), which drives one step if nobody else is). A waiting
// thread takes over: it drives the queue, in order, until its own collective completes, while the
// progress thread keeps out of the way. Every thread switch on a rank's core costs (on a VM,
// ~3-5 us), and the earlier design paid four per collective (submit woke the progress thread,
// the waiter slept, completion woke the waiter, the progress thread slept again): 10-20 us, 8-20%
// of a 1 MB all-reduce or all-gather on 2 ranks. Now a collective issued and waited for at once
// runs entirely on the waiting thread: with nothing to drive, the progress thread sleeps on
// queue_cv_, and submit() wakes it only when no thread drives and none stopped driving in the
// last MpiPolling::driver_grace_us (a caller that waited on its last collective is most likely
// about to wait on this one too); a driver that leaves collectives queued wakes it. Should a
// collective be issued within the grace and not waited for, the thread finds it when its
// sleep times out (MpiPolling::park_us). It does not nap and look: a thread waking every 1 ms
// cost 3-5% of a 1 MB all-gather here (timer interrupt, two switches, on a VM), more than the
// whole remaining overhead; `bench comm` is now within a few % of the blocking MPI call from
// 1 MB on (docs/perf/comm.md).
//
// How the progress thread polls a collective in flight that nobody waits for (gradient buckets
// during backward). It shares a core with the compute thread (mpirun binds each rank to one core
// by default; a 2-core machine runs 2 ranks), so a rank waiting for a slower peer must not burn
// that core. It tests in a tight loop for MpiPolling::spin_us (short collectives end there), then
// sleeps between tests, 2, 4, 8 ... up to MpiPolling::sleep_us us, its timer slack cut to 1 us so
// a sleep is what was asked for. Each wake-up preempts the compute thread briefly, which is what
// keeps the collective moving during compute (yielding instead would leave it waiting a whole
// scheduler slice, milliseconds). Most of a bucket's time in flight is spent waiting for the
// slower rank to reach the same bucket, when polling is wasted; large all-reduces and all-gathers
// therefore run as rings of point-to-point steps, and every completed step (the peers are active)
// brings the naps back to 2 us. The cap trades CPU for progress: measured over `bench train` on
// 2 ranks, the progress thread used ~20-25 ms of CPU per step with 100 us (the copies and the
// reduction included, ~10 ms), ~20 ms with 500 us or 1 ms, but those left buckets in flight longer
// (8-16% of the step exposed against 2-3%); 20 us, before the rings, cost ~90 ms. (Progress
// calls from the compute thread, a test() of the oldest bucket at every gradient report, made
// training slower in 5 of 5 paired runs, by 3-11% and once 35%; not kept.) The final wait drives
// at full speed. A driving waiter tests without sleeping: back to back for 20 us after each
// change, then, only where ranks share cores (MpiPolling::waiter_yields), with sched_yield
// between tests; its thread has nothing else to do. Not yielding costs this rank's own progress
// thread nothing: it sleeps while a waiter drives, and preempts the spinning waiter if it wakes.
//
// All-reduces under kRingAllReduceMinBytes stay MPI_Iallreduce. World::init makes Open MPI's
// nonblocking all-reduce use Rabenseifner's algorithm (see world.cpp): its default, a binomial
// tree for in-place calls, ran at ~45% of the blocking call.
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

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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
  int spin_us = 5;         // tight MPI_Test loop after a collective starts or ends
  int first_sleep_us = 2;  // then sleeps between tests, doubling from this ...
  int sleep_us = 100;      // ... up to this
  // With nothing to drive the thread sleeps until woken, or for at most park_us. submit() does
  // not wake it within driver_grace_us after a waiting thread stopped driving.
  int driver_grace_us = 1000;
  int park_us = 20'000;
  // Whether a driving waiter yields its core between tests once nothing has changed for 20 us:
  // 1 yes, 0 no, -1 decide at construction (node_oversubscribed over the communicator's ranks).
  int waiter_yields = -1;
};

// True when this node runs more ranks than it has CPUs (`ranks_on_node` of them), or when Open
// MPI says it oversubscribed the node or was asked to yield when idle. Ranks then share cores, and
// a rank spinning on a collective would keep the peer it waits for off the core until the
// scheduler's tick; otherwise spinning is the fastest wait (sched_yield is a system call each
// test: 2% of a 1 MB all-gather on 2 ranks).
bool node_oversubscribed(int ranks_on_node);

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
  double progress_cpu_seconds() const override;

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
    ReduceOp reduce = ReduceOp::sum;  // all_reduce on the ring: applied here, not by MPI
    int root = 0;
    bool in_place = false;  // all_gather: `in` is this rank's chunk of `out`
    bool ring = false;      // all_reduce: as a ring (ring_all_reduce_step), not MPI_Iallreduce
    std::shared_ptr<Work::State> state;
  };
  // The collective in flight: its requests, and for the rings the step they belong to.
  struct Active {
    Op op;
    bool started = false;
    int step = 0;
    MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    int nreqs = 0;
  };
  Work submit(Op op);
  void progress_loop();
  // With drive_mu_ held: starts the next queued collective if none is in flight, then tests the
  // one in flight once (completing it, and its Work, when it has ended). Returns false when there
  // was nothing to drive. A failure completes the collective's Work with the error instead of
  // throwing.
  bool drive_once();
  void start(Active& a);
  bool test_active(Active& a);  // true once `a` has completed (all ring steps)
  void post_ring_step(Active& a);
  void post_ring_all_reduce_step(Active& a);
  void post_ring_exchange(Active& a, void* recv, int rcount, const void* send, int scount);
  void reduce_received(Active& a);
  void finish(std::exception_ptr error);
  // Work::wait() and Work::test() on a collective of this communicator (see "Who drives").
  void drive_until_done(const Work::State& state);
  bool try_drive(const Work::State& state);
  static constexpr int kRingTag = 0x6d68;  // point-to-point messages of the rings
  // From this size on all_reduce runs as a ring; below, the ring's 2(size - 1) latencies would
  // cost more than MPI's log2(size) (scalars, token counts).
  static constexpr int64_t kRingAllReduceMinBytes = 256 << 10;

  MPI_Comm comm_ = MPI_COMM_NULL;
  std::string name_;
  MpiPolling polling_;
  int rank_ = 0, size_ = 1;

  mutable std::mutex queue_mu_;  // guards queue_, pending_, drivers_, stop_, thread_ start
  std::condition_variable queue_cv_;
  std::deque<Op> queue_;
  int pending_ = 0;        // issued, not yet complete (queued or in flight)
  int drivers_ = 0;        // waiting threads driving, or about to (the progress thread steps aside)
  bool sleeping_ = false;  // the progress thread waits on queue_cv_ (submit() may wake it)
  std::chrono::steady_clock::time_point last_driver_exit_{};  // when a waiter last stopped driving
  bool stop_ = false;
  std::thread thread_;

  std::mutex drive_mu_;           // held by whoever drives; guards what follows
  std::optional<Active> active_;  // the collective in flight
  uint64_t progress_ = 0;         // counts starts, ring steps and completions (polling resets)
  // Ring all-reduce: the chunk being received. Kept (its largest size: 1/size of the largest
  // buffer) rather than faulted in again for every collective.
  std::vector<std::byte> ring_tmp_;
  std::string failure_;  // the first failure; later collectives fail too
};

}  // namespace mh
