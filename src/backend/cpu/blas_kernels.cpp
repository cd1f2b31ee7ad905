#include "backend/cpu/blas_kernels.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

extern "C" char* openblas_get_corename(void);
extern "C" char* openblas_get_config(void);

namespace mh {

namespace {
// The best kernel family OpenBLAS 0.3.x has for this CPU's features, or nullptr.
const char* best_core_for_cpu() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512) return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}

// Kernel families that mean "detection failed": generic SSE code.
bool is_generic_core(const char* core) {
  for (const char* generic : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Katmai",
                              "Coppermine", "Northwood", "Banias", "Atom", "Unknown"})
    if (strcasecmp(core, generic) == 0) return true;
  return false;
}
}  // namespace

void blas_select_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("MH_BLAS_REEXEC")) return;
  const char* current = openblas_get_corename();
  const char* best = best_core_for_cpu();
  if (!current || !best || !is_generic_core(current)) return;
  setenv("OPENBLAS_CORETYPE", best, 1);
  setenv("MH_BLAS_REEXEC", "1", 1);  // never loop, even if the library ignores the variable
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on with the generic kernels; results are the same, only slower.
  unsetenv("OPENBLAS_CORETYPE");
}

std::string blas_description() {
  // openblas_get_config() reads "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...": keep name + version.
  std::string config = openblas_get_config() ? openblas_get_config() : "OpenBLAS";
  const size_t second_space = config.find(' ', config.find(' ') + 1);
  if (second_space != std::string::npos) config.resize(second_space);
  const char* core = openblas_get_corename();
  return config + " (kernels: " + (core ? core : "?") + ")";
}

}  // namespace mh
