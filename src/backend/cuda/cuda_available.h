// What CPU-only code may ask about CUDA. Declared always; defined only in CUDA builds, so every
// use sits under #ifdef MH_WITH_CUDA.
#pragma once

#include <memory>

namespace mh {

struct Backend;

// Visible CUDA devices; 0 when there is no driver or no GPU. Never throws.
int cuda_device_count();
// A CudaBackend on `device` (0-based, < cuda_device_count()).
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace mh
