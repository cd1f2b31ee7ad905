// MpiCommunicator: a FIFO of collectives driven by one progress thread (see the header).
#include "dist/mpi_communicator.h"

#include <pthread.h>
#include <sched.h>
#include <sys/sysinfo.h>
#include <time.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dist/work_state.h"

namespace mh {

void mpi_fail(int code, const char* call, const char* file, int line) {
  char msg[MPI_MAX_ERROR_STRING + 1] = {};
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS)
    std::snprintf(msg, sizeof msg, "error %d", code);
  throw MpiError(str(file, ":", line, ": ", call, " failed: ", msg));
}

std::mutex& mpi_call_mutex() {
  static std::mutex mu;
  return mu;
}

MPI_Datatype mpi_datatype(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return MPI_FLOAT;
    case DType::f64:
      return MPI_DOUBLE;
    case DType::i32:
      return MPI_INT;
    default:
      break;
  }
  MH_CHECK(false, "collectives support f32, f64 and i32 tensors, not ", dtype_name(dtype));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return MPI_SUM;
    case ReduceOp::max:
      return MPI_MAX;
    case ReduceOp::min:
      return MPI_MIN;
  }
  MH_CHECK(false, "unknown ReduceOp");
}

namespace {

using Clock = std::chrono::steady_clock;

// Element count of a collective as MPI's int count.
int mpi_count(int64_t n, const char* what) {
  MH_CHECK(n >= 0 && n <= INT_MAX, what, ": ", n, " elements exceed MPI's int count");
  return static_cast<int>(n);
}

void check_host(const Tensor& t, const char* what) {
  MH_CHECK(t.defined(), what, ": undefined tensor");
  MH_CHECK(t.device() == Device::cpu, what, ": MpiCommunicator takes host tensors only");
}

// [a, a + an) and [b, b + bn) share a byte.
bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  const auto* pa = static_cast<const std::byte*>(a);
  const auto* pb = static_cast<const std::byte*>(b);
  return an > 0 && bn > 0 && pa < pb + bn && pb < pa + an;
}

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, MpiPolling polling)
    : name_(std::move(name)), polling_(polling) {
  std::lock_guard<std::mutex> lock(mpi_call_mutex());
  MH_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  MH_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MH_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MH_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  if (polling_.waiter_yields < 0) {
    MPI_Comm node = MPI_COMM_NULL;
    int ranks_on_node = 1;
    MH_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    MH_MPI_CHECK(MPI_Comm_size(node, &ranks_on_node));
    MH_MPI_CHECK(MPI_Comm_free(&node));
    polling_.waiter_yields = node_oversubscribed(ranks_on_node) ? 1 : 0;
  }
}

bool node_oversubscribed(int ranks_on_node) {
  for (const char* var : {"OMPI_MCA_mpi_oversubscribe", "OMPI_MCA_mpi_yield_when_idle"}) {
    const char* v = std::getenv(var);
    if (v && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0)) return true;
  }
  return ranks_on_node > get_nprocs();
}

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stop_ = true;
  }
  queue_cv_.notify_all();
  if (thread_.joinable()) thread_.join();  // after the queue is drained
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) {
    std::lock_guard<std::mutex> lock(mpi_call_mutex());
    MPI_Comm_free(&comm_);  // a destructor must not throw; a failure here leaks one handle
  }
}

Work MpiCommunicator::all_reduce(Tensor& buf, ReduceOp op) {
  check_host(buf, "all_reduce");
  Op o;
  o.kind = Kind::all_reduce;
  o.out = buf;
  o.count = mpi_count(buf.numel(), "all_reduce");
  o.dtype = mpi_datatype(buf.dtype());
  o.op = mpi_op(op);
  o.reduce = op;
  o.ring = buf.nbytes() >= kRingAllReduceMinBytes && o.count >= size_;
  if (size_ == 1) return completed_work();
  return submit(std::move(o));
}

Work MpiCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  check_host(in, "reduce_scatter");
  check_host(out, "reduce_scatter");
  MH_CHECK(in.dtype() == out.dtype(), "reduce_scatter: in is ", dtype_name(in.dtype()), ", out is ",
           dtype_name(out.dtype()));
  MH_CHECK(in.numel() == out.numel() * size_, "reduce_scatter: in has ", in.numel(),
           " elements, expected out's ", out.numel(), " x ", size_, " ranks");
  MH_CHECK(!overlaps(in.raw(), in.nbytes(), out.raw(), out.nbytes()),
           "reduce_scatter: in and out overlap");
  Op o;
  o.kind = Kind::reduce_scatter;
  o.in = in;
  o.out = out;
  o.count = mpi_count(out.numel(), "reduce_scatter");
  o.dtype = mpi_datatype(in.dtype());
  o.op = mpi_op(op);
  if (size_ == 1) {
    if (out.nbytes() > 0) std::memcpy(out.raw(), in.raw(), out.nbytes());
    return completed_work();
  }
  return submit(std::move(o));
}

Work MpiCommunicator::all_gather(const Tensor& in, Tensor& out) {
  check_host(in, "all_gather");
  check_host(out, "all_gather");
  MH_CHECK(in.dtype() == out.dtype(), "all_gather: in is ", dtype_name(in.dtype()), ", out is ",
           dtype_name(out.dtype()));
  MH_CHECK(out.numel() == in.numel() * size_, "all_gather: out has ", out.numel(),
           " elements, expected in's ", in.numel(), " x ", size_, " ranks");
  Op o;
  o.kind = Kind::all_gather;
  o.in = in;
  o.out = out;
  o.count = mpi_count(in.numel(), "all_gather");
  o.dtype = mpi_datatype(in.dtype());
  const auto* own = static_cast<const std::byte*>(out.raw()) + in.nbytes() * rank_;
  o.in_place = in.raw() == own;
  MH_CHECK(o.in_place || !overlaps(in.raw(), in.nbytes(), out.raw(), out.nbytes()),
           "all_gather: in overlaps out without being this rank's chunk of it");
  if (size_ == 1) {
    if (!o.in_place && out.nbytes() > 0) std::memcpy(out.raw(), in.raw(), out.nbytes());
    return completed_work();
  }
  return submit(std::move(o));
}

Work MpiCommunicator::broadcast(Tensor& buf, int root) {
  check_host(buf, "broadcast");
  MH_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " outside [0, ", size_, ")");
  Op o;
  o.kind = Kind::broadcast;
  o.out = buf;
  o.count = mpi_count(buf.numel(), "broadcast");
  o.dtype = mpi_datatype(buf.dtype());
  o.root = root;
  if (size_ == 1) return completed_work();
  return submit(std::move(o));
}

Work MpiCommunicator::barrier() {
  if (size_ == 1) return completed_work();
  Op o;
  o.kind = Kind::barrier;
  return submit(std::move(o));
}

double MpiCommunicator::progress_cpu_seconds() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (!thread_.joinable()) return 0.0;
  clockid_t clock;
  timespec ts{};
  if (pthread_getcpuclockid(const_cast<std::thread&>(thread_).native_handle(), &clock) != 0 ||
      clock_gettime(clock, &ts) != 0)
    return 0.0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

Work MpiCommunicator::submit(Op op) {
  op.state = std::make_shared<Work::State>();
  const Work::State* key = op.state.get();  // the state outlives every call of its hooks
  op.state->poll = [this, key] { return try_drive(*key); };
  op.state->block = [this, key] { drive_until_done(*key); };
  Work work(op.state);
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    MH_CHECK(!stop_, name_, ": collective issued while the communicator is being destroyed");
    queue_.push_back(std::move(op));
    ++pending_;
    if (!thread_.joinable()) thread_ = std::thread([this] { progress_loop(); });
    // No wake while a waiter drives, or within driver_grace_us of one leaving: the caller is
    // then most likely about to wait() on this one too, and will drive it itself.
    wake = sleeping_ && drivers_ == 0 &&
           Clock::now() - last_driver_exit_ >= std::chrono::microseconds(polling_.driver_grace_us);
  }
  if (wake) queue_cv_.notify_one();
  return work;
}

void MpiCommunicator::progress_loop() {
#if defined(__linux__)
  // nanosleep(20 us) would otherwise sleep for 20 us + the default 50 us timer slack.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
#endif
  using us = std::chrono::microseconds;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      if (pending_ == 0 && stop_) return;  // every issued collective has completed
      if (pending_ == 0 || drivers_ > 0) {
        // Nothing for it to drive: it sleeps until submit() or a leaving driver wakes it, or for
        // at most park_us (a collective whose submit() skipped the wake, see there).
        sleeping_ = true;
        queue_cv_.wait_for(lock, us(polling_.park_us),
                           [&] { return stop_ || (pending_ > 0 && drivers_ == 0); });
        sleeping_ = false;
        continue;
      }
    }
    // Drive while there is work and no waiter drives.
    auto spin_until = Clock::now() + us(polling_.spin_us);
    int nap_us = polling_.first_sleep_us;
    for (;;) {
      {
        std::unique_lock<std::mutex> drive(drive_mu_, std::try_to_lock);
        if (!drive.owns_lock()) break;  // another thread drives
        const uint64_t before = progress_;
        if (!drive_once()) break;
        if (progress_ != before) {  // one started, moved a step or ended: poll hard again
          spin_until = Clock::now() + us(polling_.spin_us);
          nap_us = polling_.first_sleep_us;
        }
      }
      {
        std::lock_guard<std::mutex> lock(queue_mu_);
        if (pending_ == 0 || drivers_ > 0) break;
      }
      if (Clock::now() < spin_until) {
        cpu_relax();
      } else {
        // Short naps first: a thread about to wait() on this collective gets the core at once.
        std::this_thread::sleep_for(us(nap_us));
        nap_us = std::min(2 * nap_us, polling_.sleep_us);
      }
    }
  }
}

void MpiCommunicator::drive_until_done(const Work::State& state) {
  // Counted among the drivers while here, so the progress thread keeps out of the way; on the
  // way out it is woken only if there is work left for it.
  struct DriverCount {
    MpiCommunicator& c;
    explicit DriverCount(MpiCommunicator& comm) : c(comm) {
      std::lock_guard<std::mutex> lock(c.queue_mu_);
      ++c.drivers_;
    }
    ~DriverCount() {
      bool wake = false;
      {
        std::lock_guard<std::mutex> lock(c.queue_mu_);
        c.last_driver_exit_ = Clock::now();
        wake = --c.drivers_ == 0 && c.pending_ > 0 && c.sleeping_;
      }
      if (wake) c.queue_cv_.notify_one();
    }
  } counted(*this);
  std::lock_guard<std::mutex> drive(drive_mu_);
  // Tests back to back; where ranks share cores, only for the first kWaitSpin after the last
  // change (a step of a short collective ends within microseconds; a sched_yield is a system call
  // each time), then yielding between tests so that a peer on the same core can run.
  // (Without yielding there is nothing to time: no clock reads in the loop.)
  constexpr auto kWaitSpin = std::chrono::microseconds(20);
  const bool yields = polling_.waiter_yields > 0;
  auto spin_until = yields ? Clock::now() + kWaitSpin : Clock::time_point{};
  while (!state.done_flag.load(std::memory_order_acquire)) {
    const bool was_active = active_.has_value();
    const uint64_t before = progress_;
    // It is queued or in flight, so there is something to drive until it completes.
    MH_CHECK(drive_once(), name_, ": waiting on a collective that is not pending");
    if (!yields) {
      cpu_relax();
    } else if (active_.has_value() != was_active || progress_ != before) {
      spin_until = Clock::now() + kWaitSpin;
    } else if (Clock::now() < spin_until) {
      cpu_relax();
    } else {
      sched_yield();  // nothing changed for a while: let ranks that share this core run
    }
  }
}

bool MpiCommunicator::try_drive(const Work::State& state) {
  std::unique_lock<std::mutex> drive(drive_mu_, std::try_to_lock);
  if (drive.owns_lock()) drive_once();
  return state.done_flag.load(std::memory_order_acquire);
}

bool MpiCommunicator::drive_once() {
  if (!active_) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (queue_.empty()) return false;
    active_.emplace();
    active_->op = std::move(queue_.front());
    queue_.pop_front();
  }
  try {
    if (!active_->started) {
      start(*active_);
    } else if (test_active(*active_)) {
      finish(nullptr);
    }
  } catch (const std::exception& e) {
    if (failure_.empty()) failure_ = e.what();
    finish(std::current_exception());
  } catch (...) {
    if (failure_.empty()) failure_ = "unknown exception";
    finish(std::current_exception());
  }
  return true;
}

void MpiCommunicator::start(Active& a) {
  Op& op = a.op;
  a.started = true;
  ++progress_;
  op.state->mark_started();
  if (!failure_.empty())
    throw MpiError(str(name_, ": an earlier collective on this communicator failed: ", failure_));
  if (op.kind == Kind::all_gather) {
    post_ring_step(a);
    return;
  }
  if (op.kind == Kind::all_reduce && op.ring) {
    post_ring_all_reduce_step(a);
    return;
  }
  std::lock_guard<std::mutex> lock(mpi_call_mutex());
  switch (op.kind) {
    case Kind::all_reduce:
      MH_MPI_CHECK(
          MPI_Iallreduce(MPI_IN_PLACE, op.out.raw(), op.count, op.dtype, op.op, comm_, &a.reqs[0]));
      break;
    case Kind::reduce_scatter:
      MH_MPI_CHECK(MPI_Ireduce_scatter_block(op.in.raw(), op.out.raw(), op.count, op.dtype, op.op,
                                             comm_, &a.reqs[0]));
      break;
    case Kind::broadcast:
      MH_MPI_CHECK(MPI_Ibcast(op.out.raw(), op.count, op.dtype, op.root, comm_, &a.reqs[0]));
      break;
    case Kind::barrier:
      MH_MPI_CHECK(MPI_Ibarrier(comm_, &a.reqs[0]));
      break;
    case Kind::all_gather:
      break;
  }
  a.nreqs = 1;
}

bool MpiCommunicator::test_active(Active& a) {
  int done = 0;
  {
    std::lock_guard<std::mutex> lock(mpi_call_mutex());
    MH_MPI_CHECK(MPI_Testall(a.nreqs, a.reqs, &done, MPI_STATUSES_IGNORE));
  }
  if (!done) return false;
  ++progress_;
  if (a.op.kind == Kind::all_gather && a.step + 1 < size_ - 1) {
    ++a.step;
    post_ring_step(a);
    return false;
  }
  if (a.op.kind == Kind::all_reduce && a.op.ring) {
    if (a.step < size_ - 1) reduce_received(a);
    if (a.step + 1 < 2 * (size_ - 1)) {
      ++a.step;
      post_ring_all_reduce_step(a);
      return false;
    }
  }
  return true;
}

namespace {

template <class T>
void reduce_into(T* dst, const T* src, int64_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
      break;
    case ReduceOp::max:
      for (int64_t i = 0; i < n; ++i) dst[i] = std::max(dst[i], src[i]);
      break;
    case ReduceOp::min:
      for (int64_t i = 0; i < n; ++i) dst[i] = std::min(dst[i], src[i]);
      break;
  }
}

// Element range [begin, end) of chunk c of n elements cut into `parts`.
int64_t chunk_begin(int64_t n, int parts, int c) {
  return n * c / parts;
}

}  // namespace

// All-reduce as a ring (the bandwidth-optimal scheme of NCCL and Baidu's ring all-reduce): the
// buffer is cut into `size` chunks; in steps 0 .. size-2 (reduce-scatter) every rank sends chunk
// rank - s to rank + 1, receives chunk rank - s - 1 from rank - 1 into ring_tmp_ and adds it to
// its own, so that after them it holds the total of chunk rank + 1; in the size - 1 steps after
// (all-gather) it passes the totals on, chunk rank + 1 - t sent and chunk rank - t received in
// place. Every rank ends with the same bits (each total is computed once). Not MPI_Iallreduce for
// large buffers: its steps are invisible from outside, while here every completed step tells the
// progress thread that the peers are active and it should poll fast again (the first step waits
// for the slowest rank to arrive, which is when long naps are cheap).
void MpiCommunicator::post_ring_all_reduce_step(Active& a) {
  Op& op = a.op;
  const int n = size_, s = a.step;
  const bool scatter = s < n - 1;
  const int t = scatter ? s : s - (n - 1);
  const int send_c = scatter ? (rank_ - s + 2 * n) % n : (rank_ + 1 - t + 2 * n) % n;
  const int recv_c = scatter ? (rank_ - s - 1 + 2 * n) % n : (rank_ - t + 2 * n) % n;
  const size_t esize = dtype_size(op.out.dtype());
  auto* out = static_cast<std::byte*>(op.out.raw());
  const int64_t sb = chunk_begin(op.count, n, send_c), se = chunk_begin(op.count, n, send_c + 1);
  const int64_t rb = chunk_begin(op.count, n, recv_c), re = chunk_begin(op.count, n, recv_c + 1);
  std::byte* recv = out + rb * static_cast<int64_t>(esize);
  if (scatter) {
    ring_tmp_.resize(static_cast<size_t>(re - rb) * esize);
    recv = ring_tmp_.data();
  }
  post_ring_exchange(a, recv, static_cast<int>(re - rb), out + sb * static_cast<int64_t>(esize),
                     static_cast<int>(se - sb));
}

// One ring step's messages: `rcount` elements from rank - 1 into `recv`, `scount` from `send` to
// rank + 1.
void MpiCommunicator::post_ring_exchange(Active& a, void* recv, int rcount, const void* send,
                                         int scount) {
  const int right = (rank_ + 1) % size_, left = (rank_ + size_ - 1) % size_;
  std::lock_guard<std::mutex> lock(mpi_call_mutex());
  MH_MPI_CHECK(MPI_Irecv(recv, rcount, a.op.dtype, left, kRingTag, comm_, &a.reqs[0]));
  MH_MPI_CHECK(MPI_Isend(send, scount, a.op.dtype, right, kRingTag, comm_, &a.reqs[1]));
  a.nreqs = 2;
}

// Reduce-scatter step a.step has arrived in ring_tmp_: fold it into this rank's chunk.
void MpiCommunicator::reduce_received(Active& a) {
  Op& op = a.op;
  const int n = size_;
  const int recv_c = (rank_ - a.step - 1 + 2 * n) % n;
  const int64_t rb = chunk_begin(op.count, n, recv_c), re = chunk_begin(op.count, n, recv_c + 1);
  void* dst =
      static_cast<std::byte*>(op.out.raw()) + rb * static_cast<int64_t>(dtype_size(op.out.dtype()));
  switch (op.out.dtype()) {
    case DType::f32:
      reduce_into(static_cast<float*>(dst), reinterpret_cast<const float*>(ring_tmp_.data()),
                  re - rb, op.reduce);
      break;
    case DType::f64:
      reduce_into(static_cast<double*>(dst), reinterpret_cast<const double*>(ring_tmp_.data()),
                  re - rb, op.reduce);
      break;
    case DType::i32:
      reduce_into(static_cast<int32_t*>(dst), reinterpret_cast<const int32_t*>(ring_tmp_.data()),
                  re - rb, op.reduce);
      break;
    default:
      MH_CHECK(false, "ring all-reduce of ", dtype_name(op.out.dtype()));
  }
}

// All-gather as a ring of point-to-point messages: in step s (of size - 1) every rank sends the
// chunk it got in step s - 1 (its own in step 0) to rank + 1 and receives one from rank - 1.
// Not MPI_Iallgather: Open MPI's coll/libnbc version ran at 55-75% of the blocking
// MPI_Allgather up to 1 MB (2 ranks, shared memory), while nonblocking send/recv in a ring
// matches it at every size.
void MpiCommunicator::post_ring_step(Active& a) {
  Op& op = a.op;
  const size_t chunk_bytes = static_cast<size_t>(op.count) * dtype_size(op.out.dtype());
  auto* out = static_cast<std::byte*>(op.out.raw());
  const int send_chunk = (rank_ + size_ - a.step) % size_;
  const int recv_chunk = (rank_ + size_ - a.step - 1) % size_;
  const bool first = a.step == 0;
  const void* send = first && !op.in_place ? op.in.raw() : out + send_chunk * chunk_bytes;
  post_ring_exchange(a, out + recv_chunk * chunk_bytes, op.count, send, op.count);
  // This rank's own chunk, copied while the first messages are on their way.
  if (first && !op.in_place && chunk_bytes > 0)
    std::memcpy(out + rank_ * chunk_bytes, op.in.raw(), chunk_bytes);
}

// Completes the collective in flight (with `error` if it failed) and clears active_.
void MpiCommunicator::finish(std::exception_ptr error) {
  std::shared_ptr<Work::State> state = std::move(active_->op.state);
  active_.reset();  // releases the buffers before a waiter can see completion
  state->complete(std::move(error));
  std::lock_guard<std::mutex> lock(queue_mu_);
  --pending_;
}

}  // namespace mh
