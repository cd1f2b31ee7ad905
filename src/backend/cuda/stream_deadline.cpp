// See stream_deadline.h.
#include "backend/cuda/stream_deadline.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace mh::cuda {

cudaError_t sync_within(cudaStream_t s, const char* what, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    const cudaError_t e = cudaStreamQuery(s);
    if (e != cudaErrorNotReady) return e;
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr,
                   "multihead: %s did not finish within %.0f s (a kernel deadlock?): exiting\n",
                   what, seconds);
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

}  // namespace mh::cuda
