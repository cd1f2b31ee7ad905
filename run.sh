#!/usr/bin/env bash
# The main job: installs what is missing (Debian 12), builds into build/, and trains the embedded
# toy config (a synthetic translation task) data-parallel on 2 MPI ranks (launch/mpirun.sh picks
# threads and binding), then prints held-out examples and their accuracy.
# Extra arguments go to `multihead train`, e.g. ./run.sh --set train.steps=500
# MH_RANKS=1 ./run.sh trains in one process.
set -euo pipefail
cd "$(dirname "$0")"
source tools/setup/install_deps.sh
mh_install_deps build
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMULTIHEAD_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)"
exec launch/mpirun.sh -np "${MH_RANKS:-2}" -- train "$@"
