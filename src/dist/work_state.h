// Work::State: the completion record behind a Work handle, shared by every Communicator
// implementation (so Work::wait/test/seconds are written once, in work.cpp).
//
// The communication side calls mark_started() when the collective actually begins (not when it
// is queued) and complete() exactly once when it ends, successfully or with the exception that
// wait() will rethrow.
//
// Driven completion. A communicator whose collectives move forward only when someone drives them
// sets `poll` (drives a little without blocking; true once the collective has ended; may throw
// its failure) and `block` (drives until it has ended; may throw), and optionally `elapsed` (the
// collective's own seconds, e.g. between two CUDA events). Work's test() and wait() then call
// them instead of sleeping, and the first caller that sees the end calls finish() (complete() at
// most once, whichever thread gets there first). NCCL on a CUDA stream polls and synchronizes its
// event this way; MPI drives its queue on the waiting thread (mpi_communicator.h, "Who drives")
// and completes the collective itself. When `poll` is unset, wait() sleeps until complete().
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>

#include "dist/communicator.h"

namespace mh {

struct Work::State {
  using Clock = std::chrono::steady_clock;

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;                   // guarded by mu
  std::atomic<bool> done_flag{false};  // mirrors done, for a lock-free test()
  std::exception_ptr error;            // set before done; rethrown by wait()
  Clock::time_point start{}, end{};    // written by the communication side before done
  std::function<bool()> poll;          // optional: driven completion, see above
  std::function<void()> block;         // with poll: blocks until complete
  std::function<double()> elapsed;     // optional: seconds(), instead of end - start

  void mark_started() { start = Clock::now(); }
  // Marks the collective complete (with `err` if it failed) and wakes every waiter.
  void complete(std::exception_ptr err = nullptr) {
    end = Clock::now();
    {
      std::lock_guard<std::mutex> lock(mu);
      error = std::move(err);
      done = true;
      done_flag.store(true, std::memory_order_release);
    }
    cv.notify_all();
  }
  // Polled completion: complete(err) unless the collective already completed (so a test() and a
  // wait() racing on other threads complete it once).
  void finish(std::exception_ptr err = nullptr) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (done) return;
      end = Clock::now();
      error = std::move(err);
      done = true;
      done_flag.store(true, std::memory_order_release);
    }
    cv.notify_all();
  }
};

// A Work that is already complete (size-1 fast paths), its start and end both `now`.
inline Work completed_work() {
  auto state = std::make_shared<Work::State>();
  state->mark_started();
  state->complete();
  return Work(std::move(state));
}

}  // namespace mh
