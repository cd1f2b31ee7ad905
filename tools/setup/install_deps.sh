#!/usr/bin/env bash
# Installs the Debian 12 packages multihead needs, only those missing. Sourced by run.sh and
# test.sh; usable alone: tools/setup/install_deps.sh [build|test].
#   build: compiler, CMake, Ninja, yaml-cpp, Boost.Program_options, OpenBLAS, Open MPI
#   test:  build + GoogleTest + PyTorch (CPU, for the golden reference tests)
set -euo pipefail

mh_packages_build=(g++ cmake ninja-build pkg-config libyaml-cpp-dev libboost-program-options-dev
                   libopenblas-dev openmpi-bin libopenmpi-dev)
mh_packages_test=("${mh_packages_build[@]}" libgtest-dev python3-torch python3-numpy bc)

mh_install_deps() {
  local kind=${1:-build} missing=() pkg
  local -n list="mh_packages_${kind}"
  for pkg in "${list[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then mh_install_deps "${1:-build}"; fi
