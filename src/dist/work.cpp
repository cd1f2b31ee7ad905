// Work::wait/test/seconds over the shared Work::State (dist/work_state.h).
#include <chrono>

#include "dist/work_state.h"

namespace mh {

void Work::wait() {
  if (!state_) return;
  if (state_->poll && !state_->done_flag.load(std::memory_order_acquire)) {
    // Driven completion (work_state.h): this thread drives it.
    std::exception_ptr err;
    try {
      state_->block();
    } catch (...) {
      err = std::current_exception();
    }
    state_->finish(err);
  }
  if (!state_->done_flag.load(std::memory_order_acquire)) {
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->cv.wait(lock, [&] { return state_->done; });
  }
  if (state_->error) std::rethrow_exception(state_->error);
}

bool Work::test() {
  if (!state_ || state_->done_flag.load(std::memory_order_acquire)) return true;
  if (!state_->poll) return false;
  bool ended = false;
  std::exception_ptr err;
  try {
    ended = state_->poll();
  } catch (...) {
    ended = true;  // failed: complete, and wait() rethrows
    err = std::current_exception();
  }
  if (ended) state_->finish(err);
  return ended;
}

double Work::seconds() const {
  if (!state_) return 0.0;
  MH_CHECK(state_->done_flag.load(std::memory_order_acquire),
           "Work::seconds() before the collective completed");
  if (state_->elapsed) return state_->elapsed();
  return std::chrono::duration<double>(state_->end - state_->start).count();
}

}  // namespace mh
