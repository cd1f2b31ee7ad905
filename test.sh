#!/usr/bin/env bash
# The test suite: installs what is missing (Debian 12), builds into build/ (Release) and runs every
# test under ctest; then builds the CPU code with AddressSanitizer + UndefinedBehaviorSanitizer into
# build-asan/ and runs the tests again there (long end-to-end runs, labelled "slow", only once).
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup/install_deps.sh
mh_install_deps test
jobs=$(nproc)

echo "== Release build and tests (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests (build-asan/)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMULTIHEAD_SANITIZE=ON \
  -DMULTIHEAD_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
# Unit and reference tests (no MPI): AddressSanitizer, UBSan and LeakSanitizer.
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure -j"$jobs" -L "unit|reference" -LE slow)
# Everything that starts Open MPI (the CLI, end-to-end and MPI tests): AddressSanitizer and UBSan.
# LeakSanitizer stays off there: Open MPI keeps memory until exit by design, and LSan's tracer
# crashed intermittently ("Tracer caught signal 11") on Open MPI's threads in CI.
(cd build-asan && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure -j"$jobs" -LE "unit|reference|slow")
