#!/usr/bin/env bash
# Installs the Debian 12 packages multihead needs, only those missing. Sourced by run.sh and
# test.sh; usable alone: tools/setup/install_deps.sh [build|test].
#   build: compiler, CMake, Ninja, yaml-cpp, Boost.Program_options, OpenBLAS, Open MPI
#   test:  build + GoogleTest + PyTorch (CPU, for the golden reference tests)
# Both then fetch NVIDIA's cudnn-frontend headers (cuDNN's SDPA, model.attention: cudnn) into
# .deps/cudnn-frontend/include when a CUDA toolkit is present (mh_fetch_cudnn_frontend).
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
  mh_apt_install "${missing[@]}"
  mh_fetch_cudnn_frontend
}

# apt-get install PACKAGE... (nothing when the list is empty)
mh_apt_install() {
  [ $# -eq 0 ] && return 0
  echo "installing: $*"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# cudnn-frontend: NVIDIA's header-only C++ layer over cuDNN's graph API, which
# src/backend/cuda/attention/cudnn_sdpa.cpp builds cuDNN's fused attention with. Not packaged
# by Debian; its PyPI wheel carries the headers under include/ (licenses: MIT and Apache-2.0).
# Pinned: this exact wheel (only its platform-independent headers are used, so one wheel serves
# every host), checked against its SHA-256, unpacked (include/ and the licenses only) into
# .deps/cudnn-frontend, which git ignores. Idempotent: a stamp file names
# the wheel that is there. MH_CUDNN_FRONTEND=auto (default: only where a CUDA toolkit is found,
# the only builds that use it), 1 (always) or 0 (never). cmake/cuda.cmake looks for the headers
# there (cache variable MH_CUDNN_FRONTEND_INCLUDE).
mh_cudnn_frontend_version=1.32.0
mh_cudnn_frontend_wheel=nvidia_cudnn_frontend-1.32.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
mh_cudnn_frontend_url=https://files.pythonhosted.org/packages/11/02/660e2dd9f9d9f940e1641443771730612c3aadaafbc5ef7a93cc313d519d/$mh_cudnn_frontend_wheel
mh_cudnn_frontend_sha256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0

mh_fetch_cudnn_frontend() {
  local mode=${MH_CUDNN_FRONTEND:-auto}
  [ "$mode" = 0 ] && return 0
  if [ "$mode" = auto ] && ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ] &&
    [ ! -x "${CUDACXX:-/nonexistent}" ]; then
    return 0
  fi
  local root dest stamp want
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  dest="$root/.deps/cudnn-frontend"
  stamp="$dest/WHEEL"
  want="$mh_cudnn_frontend_wheel $mh_cudnn_frontend_sha256"
  if [ -f "$dest/include/cudnn_frontend.h" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  local tools=()
  command -v curl >/dev/null 2>&1 || tools+=(curl ca-certificates)
  command -v unzip >/dev/null 2>&1 || tools+=(unzip)
  mh_apt_install "${tools[@]}"
  echo "fetching cudnn-frontend $mh_cudnn_frontend_version headers into $dest"
  local tmp
  tmp=$(mktemp -d)
  if ! curl -fsSL --retry 3 -o "$tmp/$mh_cudnn_frontend_wheel" "$mh_cudnn_frontend_url"; then
    rm -rf "$tmp"
    # Not fatal: the CUDA build goes on without cuDNN's attention and CMake says so.
    echo "warning: could not download $mh_cudnn_frontend_url; building without cuDNN SDPA" >&2
    return 0
  fi
  if ! echo "$mh_cudnn_frontend_sha256  $tmp/$mh_cudnn_frontend_wheel" | sha256sum -c --quiet -; then
    rm -rf "$tmp"
    echo "error: $mh_cudnn_frontend_wheel does not have the pinned SHA-256" >&2
    return 1
  fi
  unzip -q "$tmp/$mh_cudnn_frontend_wheel" 'include/*' "nvidia_cudnn_frontend-$mh_cudnn_frontend_version.dist-info/licenses/*" -d "$tmp/x"
  rm -rf "$dest"
  mkdir -p "$dest"
  mv "$tmp/x/include" "$dest/include"
  mv "$tmp/x/nvidia_cudnn_frontend-$mh_cudnn_frontend_version.dist-info/licenses" "$dest/licenses"
  echo "$want" >"$stamp"
  rm -rf "$tmp"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then mh_install_deps "${1:-build}"; fi
