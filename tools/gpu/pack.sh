#!/usr/bin/env bash
# tools/gpu/pack.sh: build multihead with CUDA on THIS (development) machine and pack what the GPU
# machine lacks into tools/gpu/payload.tar.xz, for tools/gpu/check.sh to run there. docs/gpu.md.
#
#   tools/gpu/pack.sh                 # Release-like build in build-gpu/, CUDA on, then pack
#   MH_PACK_CUDA=OFF tools/gpu/pack.sh   # CPU-only build: rehearse the packing without CUDA
#   MH_PACK_NO_BUILD=1 tools/gpu/pack.sh # pack what build-gpu/ holds, no cmake/ninja
#
# What travels (the GPU machine has the CUDA 13 toolkit, cmake/ctest, python3 with torch and the
# nvidia-cudnn-cu13 / nvidia-nccl-cu13 wheels, but no yaml-cpp, Boost, OpenBLAS or Open MPI):
#   build-gpu/multihead, the binaries of the ctest tests labelled gpu, and build-gpu's ctest files
#     (at the same relative paths, so `ctest -L gpu` runs there as here);
#   .gpu-runtime/lib/      every shared library those binaries (and Open MPI's plugins) need,
#                          except the C/C++ runtime (glibc, libstdc++, libgcc_s: the GPU machine's
#                          are newer) and the CUDA libraries (cudart, cuBLAS(Lt), cuDNN, NCCL,
#                          the driver): check.sh takes those from the machine;
#   .gpu-runtime/ompi/     an Open MPI install tree, relocatable with OPAL_PREFIX: orterun/mpirun,
#                          orted, the MCA plugins whose dependencies travel too (no InfiniBand,
#                          UCX, libfabric, PSM or X11 ones), help texts; PMIx's plugins likewise
#                          (PMIX_INSTALL_PREFIX);
#   .gpu-runtime/MANIFEST  the source and build paths, git revision, date, mpiexec path, the gpu
#                          tests' commands.
# The binaries are built for -march=x86-64-v3 (not the project's Release -march=native: this
# machine's AVX-512 flavour need not exist on the GPU machine's CPU).
# The payload must stay under 60 MiB (the device tool carries at most 64 MiB in all).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BUILD=build-gpu
CUDA=${MH_PACK_CUDA:-ON}
JOBS=${MH_PACK_JOBS:-2}
OUT_TAR=tools/gpu/payload.tar.xz
LIMIT_MIB=60
MARCH=${MH_PACK_MARCH:-x86-64-v3}

say() { printf '[pack] %s\n' "$*"; }

if [[ -z "${MH_PACK_NO_BUILD:-}" ]]; then
  say "configure $BUILD (MULTIHEAD_CUDA=$CUDA, -O3 -march=$MARCH)"
  # RelWithDebInfo with Release's optimisation and no -g: the top CMakeLists adds -march=native
  # for CMAKE_BUILD_TYPE=Release only.
  cmake -S . -B "$BUILD" -G Ninja -DMULTIHEAD_CUDA="$CUDA" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O3 -DNDEBUG" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O3 -DNDEBUG" \
    -DCMAKE_CUDA_FLAGS_RELWITHDEBINFO="-O3 -DNDEBUG" -DCMAKE_C_FLAGS="-march=$MARCH" \
    -DCMAKE_CXX_FLAGS="-march=$MARCH" -DCMAKE_CUDA_FLAGS="-Xcompiler=-march=$MARCH" >/dev/null
  say "build ($JOBS jobs)"
  ninja -C "$BUILD" -j"$JOBS"
fi
[[ -x "$BUILD/multihead" ]] || { say "no $BUILD/multihead: build first"; exit 1; }

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
RT="$STAGE/.gpu-runtime"
mkdir -p "$RT/lib" "$STAGE/$BUILD"

# --- binaries: multihead and the gpu-labelled tests' executables ----------------------------------
# ctest lists the gpu tests with their commands; every argument that is a file of the build tree
# is a binary to carry (the test executable itself, or multihead under mpirun).
ctest --test-dir "$BUILD" -L gpu --show-only=json-v1 >"$STAGE/gpu_tests.json" 2>/dev/null ||
  echo '{"tests": []}' >"$STAGE/gpu_tests.json"
python3 - "$STAGE/gpu_tests.json" "$ROOT/$BUILD" >"$STAGE/gpu_bins.txt" <<'EOF'
import json, os, sys
tests = json.load(open(sys.argv[1])).get("tests", [])
build = os.path.realpath(sys.argv[2])
bins = set()
for t in tests:
    for arg in t.get("command", []):
        p = os.path.realpath(arg)
        if p.startswith(build + os.sep) and os.path.isfile(p) and os.access(p, os.X_OK):
            bins.add(os.path.relpath(p, build))
print("\n".join(sorted(bins)))
EOF
NGPU=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("tests", [])))' \
  "$STAGE/gpu_tests.json")
say "gpu-labelled tests: $NGPU; their binaries: $(tr '\n' ' ' <"$STAGE/gpu_bins.txt")"
[[ "$NGPU" -gt 0 ]] || say "WARNING: no ctest test carries the label gpu (is the CUDA build on?)"

BINS=("$BUILD/multihead")
while read -r b; do
  [[ -n "$b" && "$b" != multihead ]] && BINS+=("$BUILD/$b")
done <"$STAGE/gpu_bins.txt"
for b in "${BINS[@]}"; do
  mkdir -p "$STAGE/$(dirname "$b")"
  cp "$b" "$STAGE/$b"
  strip --strip-unneeded "$STAGE/$b" 2>/dev/null || true  # keeps the device code (fatbins)
done
# ctest's files (they name binaries by absolute path; check.sh maps the path) and the
# reference data the tests may read.
# (every .cmake file outside CMakeFiles/: CTestTestfile.cmake includes gtest's *_include.cmake /
# *_tests.cmake and fixture files).
(cd "$BUILD" && find . -path ./CMakeFiles -prune -o -path '*/CMakeFiles' -prune -o \
  -name '*.cmake' -print0 | xargs -0 -r cp --parents -t "$STAGE/$BUILD")
[[ -d "$BUILD/reference" ]] && cp -r "$BUILD/reference" "$STAGE/$BUILD/"

# --- shared libraries ----------------------------------------------------------------------------
# Not carried: the C/C++ runtime and the CUDA stack (check.sh finds those on the GPU machine).
is_skipped_lib() {
  case "$(basename "$1")" in
    linux-vdso* | ld-linux* | libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | \
      libresolv.so* | libutil.so* | libstdc++.so* | libgcc_s.so*) return 0 ;;
    libcuda.so* | libcudart.so* | libcublas.so* | libcublasLt.so* | libcudnn*.so* | \
      libnccl.so* | libnvrtc*.so* | libnvJitLink*.so* | libnvidia-*.so* | libcufft* | \
      libcurand* | libcusparse* | libcusolver*) return 0 ;;
  esac
  return 1
}
# A plugin whose dependencies pull in an interconnect, a GPU-aware path or X: not carried (it would
# need libraries the GPU machine lacks; Open MPI skips plugins it does not find).
is_unwanted_plugin() {  # (ldd's output first: grep -q would SIGPIPE ldd and pipefail flip it)
  local deps
  deps=$(ldd "$1" 2>/dev/null || true)
  grep -Eq \
    'libuc[pmst]|libfabric|libibverbs|librdmacm|libpsm|libinfinipath|libX11|libOpenCL|libxml2|libicu|libcuda|libnl-|libhcoll|libmxm|libknem|libxpmem|liblustre|libslurm|libtorque|libpbs' \
    <<<"$deps"
}
LIBSET="$STAGE/libs.txt"
: >"$LIBSET"
add_deps() {  # the resolved non-skipped dependencies of $1
  ldd "$1" 2>/dev/null | awk '/=> \// {print $3}' | while read -r lib; do
    is_skipped_lib "$lib" || echo "$lib"
  done >>"$LIBSET"
  local missing
  missing=$(ldd "$1" 2>/dev/null | grep 'not found' || true)
  if [[ -n "$missing" ]]; then
    say "WARNING: $1 has unresolved libraries:"
    sed 's/^/[pack]   /' <<<"$missing"
  fi
}
for b in "${BINS[@]}"; do add_deps "$b"; done

# --- Open MPI: a relocatable install tree (OPAL_PREFIX) ------------------------------------------
OMPI_INFO=$(command -v ompi_info || true)
if [[ -n "$OMPI_INFO" ]]; then
  ompi_path() { "$OMPI_INFO" --path "$1" --parsable 2>/dev/null | sed -n "s/^path:$1://p"; }
  PREFIX=$(ompi_path prefix)
  PKGLIB=$(ompi_path pkglibdir)
  PKGDATA=$(ompi_path pkgdatadir)
  BINDIR=$(ompi_path bindir)
  O="$RT/ompi"
  rel() { echo "${1#"$PREFIX"/}"; }  # path relative to the prefix, as OPAL_PREFIX rebuilds it
  mkdir -p "$O/$(rel "$PKGLIB")" "$O/$(rel "$PKGDATA")" "$O/$(rel "$BINDIR")"
  for tool in orterun orted; do
    if [[ -x "$BINDIR/$tool" ]]; then
      cp "$BINDIR/$tool" "$O/$(rel "$BINDIR")/"
      add_deps "$BINDIR/$tool"
    fi
  done
  ln -sf orterun "$O/$(rel "$BINDIR")/mpirun"
  ln -sf orterun "$O/$(rel "$BINDIR")/mpiexec"
  kept=0 dropped=0
  for p in "$PKGLIB"/*.so; do
    if is_unwanted_plugin "$p"; then
      dropped=$((dropped + 1))
      continue
    fi
    cp "$p" "$O/$(rel "$PKGLIB")/"
    add_deps "$p"
    kept=$((kept + 1))
  done
  say "Open MPI plugins ($PKGLIB): $kept carried, $dropped left (interconnect/X/CUDA deps)"
  cp -r "$PKGDATA/." "$O/$(rel "$PKGDATA")/"  # help-*.txt, amca-param-sets
  # PMIx (external, Debian: its own prefix and plugin dir): the same treatment.
  PMIX_LIB=$(awk '/libpmix\.so/ {print $3; exit}' < <(ldd "$PKGLIB/mca_pmix_ext3x.so" 2>/dev/null))
  PMIX_PREFIX=""
  for d in /usr/lib/x86_64-linux-gnu/pmix2 /usr/lib/x86_64-linux-gnu/pmix; do
    [[ -d "$d/lib/pmix" ]] && PMIX_PREFIX=$d && break
  done
  if [[ -n "$PMIX_PREFIX" ]]; then
    mkdir -p "$RT/pmix/lib/pmix"
    for p in "$PMIX_PREFIX"/lib/pmix/*.so; do
      is_unwanted_plugin "$p" && continue
      cp "$p" "$RT/pmix/lib/pmix/"
      add_deps "$p"
    done
    [[ -d "$PMIX_PREFIX/share" ]] && cp -r "$PMIX_PREFIX/share" "$RT/pmix/"
    [[ -d /usr/share/pmix ]] && mkdir -p "$RT/pmix/share" && cp -r /usr/share/pmix/. "$RT/pmix/share/pmix/"
    say "PMIx: $PMIX_PREFIX ($PMIX_LIB)"
  fi
  echo "OMPI_PREFIX_REL=ompi" >"$RT/ompi.env"
  echo "OMPI_BINDIR_REL=ompi/$(rel "$BINDIR")" >>"$RT/ompi.env"
  echo "PMIX_REL=$([[ -n "$PMIX_PREFIX" ]] && echo pmix)" >>"$RT/ompi.env"
else
  say "WARNING: no ompi_info: Open MPI's runtime is not packed"
fi

# The closure: the libraries' own dependencies (ldd already lists indirect ones; once more for
# safety), copied under their sonames.
sort -u "$LIBSET" -o "$LIBSET"
while read -r lib; do add_deps "$lib"; done < <(cat "$LIBSET")
sort -u "$LIBSET" -o "$LIBSET"
while read -r lib; do
  cp -L "$lib" "$RT/lib/$(basename "$lib")"
done <"$LIBSET"
say "shared libraries: $(wc -l <"$LIBSET"), $(du -sh "$RT/lib" | cut -f1) uncompressed"

# --- manifest ------------------------------------------------------------------------------------
MPIEXEC=$(sed -n 's/^MPIEXEC_EXECUTABLE:[A-Z]*=//p' "$BUILD/CMakeCache.txt" | head -1)
{
  echo "source_dir=$ROOT"
  echo "build_dir=$BUILD"
  echo "mpiexec=$MPIEXEC"
  echo "cuda=$(sed -n 's/^MULTIHEAD_CUDA:[A-Z]*=//p' "$BUILD/CMakeCache.txt" | head -1)"
  echo "march=$MARCH"
  echo "git_rev=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo +dirty)"
  echo "packed=$(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
  echo "gpu_tests=$NGPU"
} >"$RT/MANIFEST"
cp "$STAGE/gpu_tests.json" "$RT/gpu_tests.json"
du -sh "$STAGE/$BUILD" "$RT"/* 2>/dev/null | sed 's/^/[pack]   /'

# --- pack ------------------------------------------------------------------------------------------
say "xz -9 ... (a minute or two)"
tar -C "$STAGE" -cf - "$BUILD" .gpu-runtime | xz -9 -T"$JOBS" >"$OUT_TAR.tmp"
mv "$OUT_TAR.tmp" "$OUT_TAR"
BYTES=$(stat -c %s "$OUT_TAR")
MIB=$(awk -v b="$BYTES" 'BEGIN {printf "%.1f", b / 1048576}')
say "$OUT_TAR: $MIB MiB ($BYTES bytes; limit $LIMIT_MIB MiB)"
if ((BYTES > LIMIT_MIB * 1048576)); then
  say "ERROR: payload over $LIMIT_MIB MiB: it would not travel"
  exit 1
fi
say "next: give it to the device tool (carry: [\"$OUT_TAR\"] when git ignores it) and run"
say "      tools/gpu/check.sh there (docs/gpu.md)"
