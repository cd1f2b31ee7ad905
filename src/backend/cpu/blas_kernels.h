// Making OpenBLAS use this CPU's fast kernels.
//
// OpenBLAS picks its kernels once, when the library loads, from the CPU model number. Debian 12's
// OpenBLAS (0.3.21) predates Sapphire/Emerald Rapids and falls back to its generic "Prescott"
// SSE3 kernels there: 3-4x slower GEMMs than its AVX-512 ones on the same core. The only switch
// is the environment variable OPENBLAS_CORETYPE, read at load time, so `multihead` sets it from
// the CPU's feature flags and re-executes itself once. A user's own OPENBLAS_CORETYPE always wins.
#pragma once

#include <string>

namespace mh {

// Call first thing in main(). May not return (re-exec with OPENBLAS_CORETYPE set).
void blas_select_kernels(char** argv);
// "OpenBLAS <version> <core>", e.g. for `multihead info`.
std::string blas_description();

}  // namespace mh
