// OpClock on the CUDA backend's compute stream: one reusable event per mark, so the profile's
// times are device times (backend/profiling_backend.h).
#pragma once

#include <memory>

#include "backend/profiling_backend.h"

namespace mh::cuda {

// `backend` must be a CudaBackend (MH_CHECK).
std::unique_ptr<OpClock> make_cuda_op_clock(Backend& backend);

}  // namespace mh::cuda
