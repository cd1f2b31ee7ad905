#!/usr/bin/env bash
# tools/gpu/check.sh [OUTDIR]: the one prepared GPU check (docs/gpu.md). Run on the GPU machine
# from the repository root, after tools/gpu/pack.sh made tools/gpu/payload.tar.xz here.
#
# Unpacks the payload (multihead, the gpu tests, the libraries the machine lacks, Open MPI), then
# runs, each step under its own timeout and logged, a failure recorded and the script going on:
#   nvidia-smi; multihead info; the ctest tests labelled gpu; a 2-rank MPI sanity run;
#   multihead bench train (bench-small and paper-base, bf16) and the PyTorch peer on the same
#   model and batch (tools/bench/torch_gpu_peer.py: AMP bf16, SDPA, eager and torch.compile);
#   GEMM TFLOP/s of torch.matmul and of multihead's cuBLASLt path (`multihead bench gemm`, beside
#   cublasGemmEx) on the same shapes; attention TFLOP/s of `multihead bench attention` (custom,
#   cuDNN, naive, and hopper: the opt-in sm_90a kernels, n/a off sm_90) and of PyTorch's flash
#   SDPA on the same problems (tools/bench/torch_attention_peer.py); then a summary table, printed
#   last.
# Everything finishes inside MH_CHECK_BUDGET seconds (default 450, under the 8 minutes asked):
# each step's timeout is cut to what is left, and a step with under 10 s left is skipped.
# A partial rerun (what is left of the device time after a fix): MH_CHECK_STEPS, an extended
# regular expression, runs only the steps whose names it matches (e.g. 'ctest_gpu|hopper'), and
# MH_CHECK_TESTS one narrows the gpu tests (ctest -R, e.g. '[Hh]opper').
# Without a GPU it says so and still checks the payload: unpacking, the library paths, and
# multihead from the payload in a clean environment (env -i), the gpu tests (which skip) and MPI.
#
# OUTDIR (default $OUT, else ./gpu-check-out) receives at most 4 files (the device tool returns 8):
#   summary.txt (the table), results.jsonl (every JSON result line), console.log (all output),
#   logs.tar.gz (one log per step).
set -uo pipefail

# MH_CHECK_HIDE_SYSTEM=1 (a rehearsal on the development machine, as root): rerun in a private
# mount namespace where this machine's own copies of the carried libraries and Open MPI are
# hidden, so only the payload can satisfy them, as on the GPU machine.
if [[ -n "${MH_CHECK_HIDE_SYSTEM:-}" && -z "${MH_CHECK_IN_NS:-}" ]]; then
  exec unshare -m --propagation private env MH_CHECK_IN_NS=1 "$0" "$@"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUTDIR=${1:-${OUT:-$ROOT/gpu-check-out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOGS=$(mktemp -d)/logs
mkdir -p "$LOGS"
exec > >(tee "$OUTDIR/console.log") 2>&1
TEE_PID=$!

BUDGET=${MH_CHECK_BUDGET:-450}
PY=${MH_PYTHON:-python3}
PAYLOAD=${MH_PAYLOAD:-tools/gpu/payload.tar.xz}
T0=$(date +%s)
SUMMARY=()  # "step|status|seconds|note"
UNSELECTED=()  # steps MH_CHECK_STEPS left out
RESULTS="$OUTDIR/results.jsonl"
: >"$RESULTS"

# The benchmark shapes, the same for multihead and PyTorch (tokens per step = batch × (src + tgt)).
SMALL_ARGS=(--batch 256 --src-len 32 --tgt-len 32)
BASE_ARGS=(--batch 192 --src-len 64 --tgt-len 64)  # ~24.6k tokens: the paper's ~25k per step
SMALL_MODEL=(--d-model 256 --heads 4 --d-ff 1024 --encoder-layers 3 --decoder-layers 3 --vocab 8000)
BASE_MODEL=(--d-model 512 --heads 8 --d-ff 2048 --encoder-layers 6 --decoder-layers 6 --vocab 37000)
# Three timed rounds of 20 steps each: tokens/s is the median round's, the summary shows the range.
MH_STEPS=(--steps 20 --warmup 5 --rounds 3)
PEER_STEPS=(--steps 20 --warmup-steps 5 --rounds 3)
# Attention: a reduced sweep (~30 s each side; the full one is for humans, docs/perf/attention.md):
# head_dim 64, bf16, L 1024/2048/4096 over 16k tokens, causal and not, and the translation batch
# packed and padded; the same options for multihead and the PyTorch peer, so their rows join.
ATTN_ARGS=(--dtype bf16 --head-dim 64 --seq 1024,2048,4096 --causal=both --iters 10 --warmup 2
  --json)
# The full sweep of the attention issue, last (budget permitting): L 128..8192, head_dim 64 and
# 128, causal and not, bf16 then fp16; multihead without naive. Table: attention_full.txt.
ATTN_FULL=(--head-dim 64,128 --seq 128,256,512,1024,2048,4096,8192 --causal=both --mt-tokens 0
  --iters 10 --warmup 2 --json)
# GEMMs: two squares and paper-base's Linear maps at 12288 tokens (192 x 64, BASE_ARGS' target
# tokens, as in torch_gpu_peer.py's default set) in each pass multihead runs (fwd: T x out x in,
# dX: T x in x out, dW: out x in x T), as m x n x k for torch.matmul (x[m, k] @ w[k, n]) and for
# `multihead bench gemm --tokens 12288` (the model's transposes); the summary joins them.
GEMM_TOKENS=12288
GEMM_SHAPES=(8192x8192x8192 4096x4096x4096)
for io in 512:512 512:2048 2048:512 512:37000; do
  i=${io%:*} o=${io#*:}
  for mnk in "${GEMM_TOKENS}x${o}x${i}" "${GEMM_TOKENS}x${i}x${o}" "${o}x${i}x${GEMM_TOKENS}"; do
    [[ " ${GEMM_SHAPES[*]} " == *" $mnk "* ]] || GEMM_SHAPES+=("$mnk")
  done
done

say() { printf '[check %3ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }

# step NAME MAX_SECONDS CMD...: runs CMD under timeout (cut to the budget left), logs to
# $LOGS/NAME.log, echoes the log's tail, records status and time; JSON lines go to results.jsonl.
step() {
  local name=$1 max=$2
  shift 2
  if [[ -n "${MH_CHECK_STEPS:-}" && ! "$name" =~ $MH_CHECK_STEPS ]]; then
    UNSELECTED+=("$name")
    return 0
  fi
  local l t rc s0
  l=$(left)
  if ((l - 10 < 10)); then
    say "$name: SKIPPED (budget spent)"
    SUMMARY+=("$name|skipped|0|budget spent")
    return 0
  fi
  t=$((max < l - 10 ? max : l - 10))
  local shown=() a skip=1
  for a in "$@"; do  # the command without the env prefix (logs.tar.gz has the environment)
    if ((skip)) && [[ "$a" == env || "$a" == -i || "$a" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
      continue
    fi
    skip=0
    shown+=("$a")
  done
  say "$name (timeout ${t}s): ${shown[*]}"
  s0=$(date +%s)
  timeout -k 5 "$t" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - s0))
  tail -n "${TAIL_LINES:-6}" "$LOGS/$name.log" | sed 's/^/    /'
  grep -E '^\{.*\}$' "$LOGS/$name.log" | sed "s/^{/{\"step\": \"$name\", /" >>"$RESULTS"
  local status=ok
  ((rc == 124 || rc == 137)) && status=TIMEOUT
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAIL($rc)"
  SUMMARY+=("$name|$status|$dt|")
  return 0
}

# The Hopper kernels have a step of their own each (a fault loses the CUDA context of its process
# only). A hang ends its process after 20 s (stream_deadline.h: "... did not finish within"), and
# every later step would hang the same way: hopper_step skips them then. KIND plain: the steps
# that run the plain forward and the backward every Hopper step shares; overlap: the overlapped
# forward's. A hang in a backward, or in a plain step, stops both kinds; one in the overlapped
# forward, only its own.
declare -A HOPPER_HUNG # kind (plain, overlap) -> the step that hung
hopper_step() {
  local kind=$1 name=$2
  shift
  local hung=${HOPPER_HUNG[plain]:-}
  [[ $kind == overlap && -z "$hung" ]] && hung=${HOPPER_HUNG[overlap]:-}
  if [[ -n "$hung" ]]; then
    say "$name: SKIPPED (a Hopper kernel hung in $hung)"
    SUMMARY+=("$name|skipped|0|Hopper kernel hung in $hung")
    return 0
  fi
  step "$@"
  local msg scope=plain
  msg=$(grep -m1 'did not finish within' "$LOGS/$name.log" 2>/dev/null) || return 0
  [[ $kind == overlap && $msg != *backward* ]] && scope=overlap
  HOPPER_HUNG[$scope]=$name
  say "$name: hung ($msg): the later $([[ $scope == overlap ]] && echo 'overlap-forward' ||
    echo 'Hopper') steps skip"
  return 0
}

# --- 1. payload ----------------------------------------------------------------------------------
if [[ ! -f "$PAYLOAD" ]]; then
  say "no $PAYLOAD: run tools/gpu/pack.sh on the development machine first (docs/gpu.md)"
  exit 2
fi
BYTES=$(stat -c %s "$PAYLOAD")
say "payload $PAYLOAD: $(awk -v b="$BYTES" 'BEGIN {printf "%.1f MiB", b / 1048576}')"
((BYTES > 60 * 1048576)) && say "WARNING: payload over 60 MiB"
UNPACK=${MH_UNPACK_DIR:-$ROOT}
tar -C "$UNPACK" -xJf "$PAYLOAD" || { say "unpacking failed"; exit 2; }
RT="$UNPACK/.gpu-runtime"
cat "$RT/MANIFEST" | sed 's/^/    /'
mf() { sed -n "s/^$1=//p" "$RT/MANIFEST"; }
SRC_DIR=$(mf source_dir)
BUILD="$UNPACK/$(mf build_dir)"
MPIEXEC=$(mf mpiexec)
# shellcheck disable=SC1091
source "$RT/ompi.env" 2>/dev/null || true

# ctest files and the test binaries name the build machine's paths (source_dir): map them here.
if [[ "$SRC_DIR" != "$UNPACK" ]]; then
  if [[ ! -e "$SRC_DIR" ]] && mkdir -p "$(dirname "$SRC_DIR")" 2>/dev/null &&
    ln -s "$UNPACK" "$SRC_DIR" 2>/dev/null; then
    say "linked $SRC_DIR -> $UNPACK (the paths built into the tests)"
  else
    say "rewriting $SRC_DIR -> $UNPACK in the ctest files"
    find "$BUILD" -name '*.cmake' -print0 | xargs -0 -r sed -i "s#$SRC_DIR#$UNPACK#g"
  fi
fi

if [[ -n "${MH_CHECK_IN_NS:-}" ]]; then
  EMPTY_DIR=$(mktemp -d)
  EMPTY_FILE="$EMPTY_DIR/empty"
  : >"$EMPTY_FILE"
  hidden=0
  for f in "$RT"/lib/*; do
    case "$(basename "$f")" in  # base-system libraries every machine has (python, ctest use them)
      libz.so* | libudev* | liblzma* | libbsd* | libmd.so* | libuuid* | libcap* | libselinux* | \
        libpcre* | libcrypto* | libssl* | libsystemd* | libzstd* | liblz4* | libgcrypt* | \
        libgpg-error*) continue ;;
    esac
    for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64; do
      [[ -e "$d/$(basename "$f")" ]] && mount --bind "$EMPTY_FILE" "$d/$(basename "$f")" &&
        hidden=$((hidden + 1))
    done
  done
  for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi \
    /usr/share/pmix /etc/openmpi; do
    [[ -d "$d" ]] && mount --bind "$EMPTY_DIR" "$d" && hidden=$((hidden + 1))
  done
  for f in /usr/bin/orted /usr/bin/orterun /usr/bin/mpirun /usr/bin/mpiexec; do
    [[ -e "$f" ]] && mount --bind "$EMPTY_FILE" "$(readlink -f "$f")" && hidden=$((hidden + 1))
  done
  say "rehearsal: $hidden system copies hidden in a private mount namespace"
fi

# --- 2. library paths ----------------------------------------------------------------------------
# The CUDA libraries come from the machine: the toolkit (cudart, cuBLAS, cuBLASLt) and the Python
# wheels nvidia-cudnn-cu13 / nvidia-nccl-cu13 (and nvidia-cublas / cuda-runtime as a fallback).
CUDA_DIRS=()
for d in ${CUDA_HOME:-/usr/local/cuda}/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d "$d" ]] && CUDA_DIRS+=("$d")
done
WHEEL_DIRS=$(timeout 60 "$PY" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = []
for r in roots:
    for pat in ("*/lib", "*/lib64", "cu13/lib", "cu13/lib64"):
        for d in sorted(glob.glob(os.path.join(r, pat))):
            if glob.glob(os.path.join(d, "lib*.so*")) and d not in dirs:
                dirs.append(d)
print(":".join(dirs))
EOF
)
IFS=: read -r -a WD <<<"$WHEEL_DIRS"
CUDA_DIRS+=("${WD[@]}")
CUDA_LD=$(IFS=:; echo "${CUDA_DIRS[*]}")
LD_OURS="$RT/lib${CUDA_LD:+:$CUDA_LD}"
for lib in libcudart.so.13 libcublasLt.so.13 libcublas.so.13 libcudnn.so.9 libnccl.so.2; do
  found=""
  for d in "${CUDA_DIRS[@]}"; do [[ -e "$d/$lib" ]] && found="$d/$lib" && break; done
  say "$lib: ${found:-NOT FOUND}"
done
# The environment of every multihead process: our libraries (never given to python: the payload's
# libz etc. must not shadow torch's), Open MPI relocated to the payload, quiet about plugins it
# cannot use, shared memory only.
MHENV=(env LD_LIBRARY_PATH="$LD_OURS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  PATH="$RT/${OMPI_BINDIR_REL:-ompi/bin}:$PATH"
  OPAL_PREFIX="$RT/${OMPI_PREFIX_REL:-ompi}"
  OMPI_MCA_mca_base_component_show_load_errors=0 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1
  OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_ALLOW_RUN_AS_ROOT=1
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  PMIX_MCA_pcompress_base_silence_warning=1)
[[ -n "${PMIX_REL:-}" ]] && MHENV+=(PMIX_INSTALL_PREFIX="$RT/$PMIX_REL" PMIX_MCA_mca_base_component_show_load_errors=0)
MH="$BUILD/multihead"
MPIRUN="$RT/${OMPI_BINDIR_REL:-ompi/bin}/mpirun"
if [[ -n "$MPIEXEC" ]]; then  # the gpu tests' mpirun: the payload's
  find "$BUILD" -name 'CTestTestfile.cmake' -print0 | xargs -0 -r sed -i "s#$MPIEXEC#$MPIRUN#g"
fi
# ... and their Python (ddp.gpu_equivalence compares weights with NumPy): this machine's.
if PY_ABS=$(command -v "$PY"); then
  find "$BUILD" -name 'CTestTestfile.cmake' -print0 |
    xargs -0 -r sed -i "s#MH_PYTHON=[^;\"]*#MH_PYTHON=$PY_ABS#g"
fi
printf '%s\n' "${MHENV[@]:1}" >"$LOGS/environment.txt"

# --- 3. the GPU ----------------------------------------------------------------------------------
HAVE_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  HAVE_GPU=1
fi
if ((HAVE_GPU)); then
  step nvidia-smi 30 nvidia-smi
  nvidia-smi -L | sed 's/^/    /'
else
  say "NO GPU on this machine (nvidia-smi missing or lists none): checking the payload only;"
  say "the gpu tests skip, the benchmarks do not run"
  SUMMARY+=("nvidia-smi|no GPU|0|")
fi

# --- 4. multihead from the payload, in a clean environment (nothing of this shell leaks in) -------
step info_clean_env 30 env -i HOME="${HOME:-/root}" "${MHENV[@]:1}" "$MH" info \
  --config configs/paper-base.yaml
step libs_resolved 20 "${MHENV[@]}" bash -c "ldd '$MH' | grep -E 'not found|$RT|cuda|cudnn|nccl|cublas' || true; ! ldd '$MH' | grep -q 'not found'"

# --- 5. correctness: the gpu-labelled tests, then MPI across 2 ranks -------------------------------
if command -v ctest >/dev/null; then
  # -j 6: the ~130 gpu tests are separate processes (backend set-up, cuDNN graph builds) that
  # share the GPU well; one at a time they could outlast the step's time.
  TAIL_LINES=15 step ctest_gpu 200 "${MHENV[@]}" ctest --test-dir "$BUILD" -L gpu -j 6 \
    ${MH_CHECK_TESTS:+-R "$MH_CHECK_TESTS"} --output-on-failure --timeout 120 --no-tests=error
else
  say "no ctest on PATH: the gpu tests' binaries one by one, without ctest's arguments"
  while read -r b; do
    [[ -n "$b" && "$b" != multihead ]] && step "test_$(basename "$b")" 120 "${MHENV[@]}" "$BUILD/$b"
  done < <("$PY" -c 'import json,sys,os
for t in json.load(open(sys.argv[1])).get("tests", []):
    c = t.get("command", [])
    if c: print(os.path.relpath(c[0], sys.argv[2]))' "$RT/gpu_tests.json" "$(mf source_dir)/$(mf build_dir)" | sort -u)
fi
# MPI: a singleton (no mpirun, as every single-process multihead run) and 2 ranks under the
# carried mpirun, both through the carried Open MPI.
step mpi_singleton 30 "${MHENV[@]}" "$MH" bench comm --min 4K --max 64K --iters 2
step mpi_2ranks 40 "${MHENV[@]}" "$MPIRUN" --allow-run-as-root --oversubscribe -np 2 "$MH" bench comm \
  --min 4K --max 1M --iters 3

# --- 6. benchmarks (GPU only) --------------------------------------------------------------------
if ((HAVE_GPU)); then
  GPU_SET=(--set train.precision=bf16 --set train.device=cuda)
  step mh_small_bf16 60 "${MHENV[@]}" "$MH" bench train --config configs/bench-small.yaml \
    "${GPU_SET[@]}" "${SMALL_ARGS[@]}" "${MH_STEPS[@]}" --profile 3 --json
  # --profile 3: after the timed steps, 3 with CUDA events around every op (the per-op table).
  step mh_base_bf16 90 "${MHENV[@]}" "$MH" bench train --config configs/paper-base.yaml \
    "${GPU_SET[@]}" "${BASE_ARGS[@]}" "${MH_STEPS[@]}" --profile 3 --json
  PEER=("$PY" tools/bench/torch_gpu_peer.py)
  step torch_small_eager 60 "${PEER[@]}" train "${SMALL_MODEL[@]}" "${SMALL_ARGS[@]}" \
    "${PEER_STEPS[@]}" --precision bf16 --json
  step torch_base_eager 75 "${PEER[@]}" train "${BASE_MODEL[@]}" "${BASE_ARGS[@]}" \
    "${PEER_STEPS[@]}" --precision bf16 --json
  step torch_gemm 60 "${PEER[@]}" gemm --shapes "${GEMM_SHAPES[@]}" --dtypes bf16 fp32 --json
  step mh_gemm 60 "${MHENV[@]}" "$MH" bench gemm --tokens "$GEMM_TOKENS" --dtype bf16,fp32 --json
  step mh_attention 60 "${MHENV[@]}" "$MH" bench attention "${ATTN_ARGS[@]}" \
    --impl custom,cudnn,naive
  # The hopper column in a process of its own: its backward (flash_bwd_sm90) is new on a GPU, and
  # a fault there (the CUDA context is then lost) or a hang (the step's timeout ends it) must not
  # cost the other columns. n/a off sm_90.
  hopper_step plain mh_attention_hopper 40 "${MHENV[@]}" "$MH" bench attention "${ATTN_ARGS[@]}" --impl hopper
  # and its forward with one consumer warpgroup (64 query rows) per block: the summary's "hopWG1"
  # column (the translation batch's short sentences leave a 128-row block half idle).
  hopper_step plain mh_attention_hopper_wg1 30 "${MHENV[@]}" MH_HOPPER_FWD_WG=1 "$MH" bench attention \
    "${ATTN_ARGS[@]}" --impl hopper
  # and the overlapped Hopper forward (FlashAttention-3's intra-warpgroup overlap, 128-key tiles,
  # setmaxnreg; new on a GPU, hence a process of its own): the summary's "hopOVL" column.
  hopper_step overlap mh_attention_hopper_ovl 30 "${MHENV[@]}" MH_HOPPER_FWD=overlap "$MH" bench attention \
    "${ATTN_ARGS[@]}" --impl hopper
  # and with three consumer warpgroups (192-row blocks, FlashAttention-3's head_dim-64 tile):
  # the summary's "hopOV3" column.
  hopper_step overlap mh_attention_hopper_ovl3 30 "${MHENV[@]}" MH_HOPPER_FWD_WG=3 "$MH" bench \
    attention "${ATTN_ARGS[@]}" --impl hopper
  # custom alone again with flash_bwd's other head_dim-64 tiling (128 keys, 8 warps per block):
  # the summary's "cus128" column, to choose the default from a measurement.
  step mh_attention_k128 30 "${MHENV[@]}" MH_FLASH_BWD_KEYS=128 "$MH" bench attention \
    "${ATTN_ARGS[@]}" --impl custom
  # and with the backward in FlashAttention-2's layout (2-D warp tiles over 128 keys x 128
  # queries, P and dS through shared memory): the summary's "cusT" column.
  step mh_attention_bwd_tiles 30 "${MHENV[@]}" MH_FLASH_BWD=tiles "$MH" bench attention \
    "${ATTN_ARGS[@]}" --impl custom
  # and with each of the forward's other head_dim-64 tilings (the "forward tilings" table)
  for tile in 64x128 128x64 128x128; do
    step "mh_attention_f$tile" 30 "${MHENV[@]}" MH_FLASH_FWD_TILE="$tile" "$MH" bench attention \
      "${ATTN_ARGS[@]}" --impl custom
  done
  step torch_attention 45 "$PY" tools/bench/torch_attention_peer.py "${ATTN_ARGS[@]}"
  # torch.compile last: its compile time is the least predictable.
  step torch_small_compile 90 "${PEER[@]}" train "${SMALL_MODEL[@]}" "${SMALL_ARGS[@]}" \
    "${PEER_STEPS[@]}" --precision bf16 --compile --json
  step torch_base_compile 120 "${PEER[@]}" train "${BASE_MODEL[@]}" "${BASE_ARGS[@]}" \
    "${PEER_STEPS[@]}" --precision bf16 --compile --json
  for dt in bf16 fp16; do
    step "mh_attention_full_$dt" 75 "${MHENV[@]}" "$MH" bench attention --dtype "$dt" \
      "${ATTN_FULL[@]}" --impl custom,cudnn
    hopper_step plain "mh_hopper_full_$dt" 45 "${MHENV[@]}" "$MH" bench attention --dtype "$dt" \
      "${ATTN_FULL[@]}" --impl hopper
    step "torch_attention_full_$dt" 60 "$PY" tools/bench/torch_attention_peer.py --dtype "$dt" \
      "${ATTN_FULL[@]}"
  done
  # Last, budget permitting: hardware counters of one backward and one forward launch (custom,
  # bf16, head_dim 64, L 2048, no mask): tensor-pipe and shared-memory throughput, stall reasons,
  # occupancy, for the next round of kernel work (the backward runs at a third of PyTorch's, and
  # no counter has said why yet).
  # ncu reads counters on Firecracker machines only (docs: the device tool's KINDS.md); where it
  # cannot, these steps fail and nothing else does. Full reports in logs.tar.gz.
  NCU=$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null |
    tail -n 1 || true)
  if [[ -n "$NCU" ]]; then
    # name:kernel:impl:knob; the Hopper kernels last (n/a, and so failing, off sm_90).
    for spec in bwd:flash_bwd_kernel:custom:MH_FLASH_BWD=strips \
      bwd_tiles:flash_bwd_tiles_kernel:custom:MH_FLASH_BWD=tiles \
      fwd:flash_fwd_kernel:custom:MH_FLASH_FWD_TILE=64x64 \
      hopper_bwd:flash_bwd_sm90_kernel:hopper:MH_HOPPER_FWD=plain \
      hopper_fwd_ovl:flash_fwd_sm90_kernel:hopper:MH_HOPPER_FWD=overlap; do
      IFS=: read -r name kern impl knob <<<"$spec"
      run=(step)
      [[ $impl == hopper ]] && run=(hopper_step "$([[ $knob == *overlap ]] && echo overlap || echo plain)")
      TAIL_LINES=40 "${run[@]}" "ncu_flash_$name" 45 "${MHENV[@]}" "$knob" "$NCU" --clock-control none \
        -k "regex:$kern" -c 1 --section SpeedOfLight \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy --section LaunchStats \
        "$MH" bench attention --dtype bf16 --head-dim 64 --seq 2048 --causal=off --mt-tokens 0 \
        --impl "$impl" --iters 1 --warmup 0
    done
  fi
fi

# --- 7. results -----------------------------------------------------------------------------------
tar -C "$(dirname "$LOGS")" -czf "$OUTDIR/logs.tar.gz" logs
{
  echo "# multihead GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $(hostname)"
  ((HAVE_GPU)) && echo "# $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  ((HAVE_GPU)) || echo "# no GPU: payload check only"
  echo "# payload: $(mf git_rev), packed $(mf packed), cuda=$(mf cuda)"
  printf '%-22s %-12s %6s  %s\n' step status secs note
  for row in "${SUMMARY[@]}"; do
    IFS='|' read -r n s d note <<<"$row"
    printf '%-22s %-12s %6s  %s\n' "$n" "$s" "$d" "$note"
  done
  ((${#UNSELECTED[@]})) && echo "not selected (MH_CHECK_STEPS=$MH_CHECK_STEPS): ${UNSELECTED[*]}"
  [[ -n "${MH_CHECK_TESTS:-}" ]] && echo "gpu tests narrowed to ctest -R '$MH_CHECK_TESTS'"
  echo
  "$PY" - "$RESULTS" "$OUTDIR/attention_full.txt" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {r.get("step"): r for r in rows}
def tok(name):
    r = by.get(name)
    return r.get("tokens_per_s") if r else None
print(f"{'model (bf16)':14s} {'multihead tok/s':>16s} {'torch eager':>12s} {'torch.compile':>14s}"
      f" {'mh/eager':>9s} {'mh/compile':>11s} {'MFU torch eager':>16s}")
for label, key in (("bench-small", "small"), ("paper-base", "base")):
    mh, te, tc = tok(f"mh_{key}_bf16"), tok(f"torch_{key}_eager"), tok(f"torch_{key}_compile")
    f = lambda x: f"{x:,.0f}" if x else "-"
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
    mfu = (by.get(f"torch_{key}_eager") or {}).get("mfu")
    print(f"{label:14s} {f(mh):>16s} {f(te):>12s} {f(tc):>14s} {ratio(mh, te):>9s}"
          f" {ratio(mh, tc):>11s} {(f'{100 * mfu:.1f}%' if mfu else '-'):>16s}")
# Every round's tokens/s (the medians above), so the spread of the repeats is on record.
for name in ("mh_small_bf16", "torch_small_eager", "torch_small_compile", "mh_base_bf16",
             "torch_base_eager", "torch_base_compile"):
    rs = (by.get(name) or {}).get("rounds_tokens_per_s")
    if rs:
        print(f"  {name:20s} rounds: " + " ".join(f"{x:,.0f}" for x in rs)
              + f"  (spread {100 * (max(rs) - min(rs)) / max(rs):.1f}%)")
# Where multihead's paper-base step goes, op by op (bench train --profile: device time).
prof = (by.get("mh_base_bf16") or {}).get("profile") or []
if prof:
    total = sum(r["ms"] for r in prof) or 1.0
    print(f"\n{'paper-base bf16, per op':44s} {'ms/step':>8s} {'share':>6s} {'calls':>6s}")
    for r in prof[:12]:
        print(f"{r['op'][:44]:44s} {r['ms']:8.3f} {100 * r['ms'] / total:5.1f}% {r['calls']:6.1f}")
    print(f"{'all ' + str(len(prof)) + ' ops':44s} {total:8.3f}")
# GEMMs joined on (dtype, m, n, k): torch.matmul, multihead's cuBLASLt (which layer and pass),
# cublasGemmEx on multihead's buffers, multihead / torch, and the fused epilogue's speedup.
key = lambda r: (r.get("dtype"), r.get("m"), r.get("n"), r.get("k"))
torch_by = {key(r): r for r in rows if r.get("step") == "torch_gemm"}
mh = [r for r in rows if r.get("step") == "mh_gemm"]
if torch_by or mh:
    num = lambda x, f="{:.1f}": f.format(x) if isinstance(x, (int, float)) else "-"
    print(f"\n{'GEMM (TFLOP/s)':26s} {'layer pass':11s} {'torch':>7s} {'mh':>7s} {'cuBLAS':>7s}"
          f" {'mh/torch':>8s} {'fused':>7s}")
    ratios, seen = [], set()
    for r in mh:
        t = torch_by.get(key(r))
        seen.add(key(r))
        ratio = r["tflops"] / t["tflops"] if t and r.get("tflops") and t.get("tflops") else None
        if ratio:
            ratios.append(ratio)
        print(f"{r['dtype'] + ' ' + str(r['m']) + 'x' + str(r['n']) + 'x' + str(r['k']):26s}"
              f" {r['layer'] + ' ' + r['pass']:11s} {num(t and t.get('tflops')):>7s}"
              f" {num(r.get('tflops')):>7s} {num(r.get('cublas_tflops')):>7s}"
              f" {num(ratio, '{:.2f}'):>8s} {num(r.get('fused_speedup'), '{:.2f}x'):>7s}")
    for k, t in torch_by.items():
        if k not in seen:
            print(f"{t['dtype'] + ' ' + str(t['m']) + 'x' + str(t['n']) + 'x' + str(t['k']):26s}"
                  f" {'-':11s} {num(t.get('tflops')):>7s}")
    if ratios:
        print(f"multihead / torch.matmul over {len(ratios)} GEMMs: mean"
              f" {sum(ratios) / len(ratios):.2f}, min {min(ratios):.2f}")
# Attention TFLOP/s (FlashAttention's FLOP count), joined on the problem's keys.
key = lambda r: (r["case"], r["dtype"], r["head_dim"], r["causal"], r["seq"], r["pass"])
mh_att = {key(r): r for r in rows if r.get("step") == "mh_attention"}
pt_att = {key(r): r for r in rows if r.get("step") == "torch_attention"}
k128 = {key(r): r for r in rows if r.get("step") == "mh_attention_k128"}
ktiles = {key(r): r for r in rows if r.get("step") == "mh_attention_bwd_tiles"}
hop = {key(r): r for r in rows if r.get("step") == "mh_attention_hopper"}
hop1 = {key(r): r for r in rows if r.get("step") == "mh_attention_hopper_wg1"}
hopo = {key(r): r for r in rows if r.get("step") == "mh_attention_hopper_ovl"}
hopo3 = {key(r): r for r in rows if r.get("step") == "mh_attention_hopper_ovl3"}
if mh_att or pt_att:
    print(f"\n{'attention bf16 d64':26s} {'custom':>7s} {'torch':>7s} {'cudnn':>7s}"
          f" {'naive':>7s} {'hopper':>7s} {'cus/torch':>9s} {'cus/cudnn':>9s} {'cus128':>7s}"
          f" {'hop/torch':>9s} {'hopWG1':>7s} {'hopOVL':>7s} {'hopOV3':>7s} {'cusT':>7s}"
          f"  TFLOP/s")
    for k in sorted(set(mh_att) | set(pt_att), key=lambda k: (k[0] != "sweep", k[0], k[3], k[4],
                                                             k[5] != "fwd")):
        if k[2] != 64 or k[1] != "bf16" or k[5] not in ("fwd", "bwd"):
            continue
        m, t = mh_att.get(k, {}), pt_att.get(k, {})
        c, tt, d, n, h = (m.get("custom_tflops"), t.get("torch_flash_tflops"),
                          m.get("cudnn_tflops"), m.get("naive_tflops"),
                          hop.get(k, {}).get("hopper_tflops"))
        f = lambda x: f"{x:.1f}" if x else "-"
        ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
        label = f"{k[0]} {'causal' if k[3] else 'full'} L{k[4]} {k[5]}"
        c128 = k128.get(k, {}).get("custom_tflops")
        print(f"{label:26s} {f(c):>7s} {f(tt):>7s} {f(d):>7s} {f(n):>7s} {f(h):>7s}"
              f" {ratio(c, tt):>9s} {ratio(c, d):>9s} {f(c128):>7s} {ratio(h, tt):>9s}"
              f" {f(hop1.get(k, {}).get('hopper_tflops')):>7s}"
              f" {f(hopo.get(k, {}).get('hopper_tflops')):>7s}"
              f" {f(hopo3.get(k, {}).get('hopper_tflops')):>7s}"
              f" {f(ktiles.get(k, {}).get('custom_tflops')):>7s}")
# custom's forward with each tiling (rows x keys), beside PyTorch's flash forward.
tiles = ["64x64", "64x128", "128x64", "128x128"]
by_tile = {t: {key(r): r for r in rows
               if r.get("step") == ("mh_attention" if t == "64x64" else f"mh_attention_f{t}")}
           for t in tiles}
if any(by_tile[t] for t in tiles[1:]):
    print(f"\n{'custom forward tilings':26s} " + " ".join(f"{t:>8s}" for t in tiles)
          + f" {'torch':>8s}  TFLOP/s")
    for k in sorted(by_tile["64x64"], key=lambda k: (k[0] != "sweep", k[0], k[3], k[4])):
        if k[2] != 64 or k[1] != "bf16" or k[5] != "fwd":
            continue
        vals = [by_tile[t].get(k, {}).get("custom_tflops") for t in tiles]
        vals.append(pt_att.get(k, {}).get("torch_flash_tflops"))
        label = f"{k[0]} {'causal' if k[3] else 'full'} L{k[4]}"
        print(f"{label:26s} " + " ".join(f"{(f'{v:.1f}' if v else '-'):>8s}" for v in vals))
# Each tuning knob's variants against its default, as the geometric mean of the speed ratio over
# the reduced sweep's rows (L >= 1024) and, apart, over the translation batch's: the numbers the
# defaults are chosen from (docs/perf/attention.md lists the knobs).
def geo(xs):
    import math
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None
def knob(label, base, var, col, pass_):
    for region, pick in (("L>=1024", lambda k: k[0] == "sweep" and k[4] >= 1024),
                         ("mt", lambda k: k[0].startswith("mt-"))):
        rs = [var[k][col] / base[k][col] for k in var
              if k in base and k[5] == pass_ and pick(k) and k[2] == 64 and k[1] == "bf16"
              and var[k].get(col) and base[k].get(col)]
        g = geo(rs)
        if g:
            print(f"  {label:44s} {pass_:3s} {region:8s} x{g:.2f} (min {min(rs):.2f},"
                  f" max {max(rs):.2f}, {len(rs)} rows)")
if mh_att and (k128 or ktiles or hop1 or hopo or hopo3 or any(by_tile[t] for t in tiles[1:])):
    print("\ntuning knobs, variant / default (geometric mean; > 1: the variant is faster)")
    knob("MH_FLASH_BWD_KEYS=128 / 64", mh_att, k128, "custom_tflops", "bwd")
    knob("MH_FLASH_BWD=tiles / strips", mh_att, ktiles, "custom_tflops", "bwd")
    for t in tiles[1:]:
        knob(f"MH_FLASH_FWD_TILE={t} / 64x64", mh_att, by_tile[t], "custom_tflops", "fwd")
    knob("MH_HOPPER_FWD_WG=1 / 2", hop, hop1, "hopper_tflops", "fwd")
    knob("MH_HOPPER_FWD=overlap / plain", hop, hopo, "hopper_tflops", "fwd")
    knob("overlap MH_HOPPER_FWD_WG=3 / 2", hopo, hopo3, "hopper_tflops", "fwd")
    hop_as_custom = {k: {"custom_tflops": r.get("hopper_tflops")} for k, r in hop.items()}
    knob("hopper backward / custom backward", mh_att, hop_as_custom, "custom_tflops", "bwd")
    hopo_as_custom = {k: {"custom_tflops": r.get("hopper_tflops")} for k, r in hopo.items()}
    knob("hopper overlap forward / custom forward", mh_att, hopo_as_custom, "custom_tflops", "fwd")
    hopo3_as_custom = {k: {"custom_tflops": r.get("hopper_tflops")} for k, r in hopo3.items()}
    knob("hopper overlap, 3 wg / custom forward", mh_att, hopo3_as_custom, "custom_tflops", "fwd")
# The full sweep: every row into attention_full.txt; here custom / torch flash per dtype,
# head_dim, mask and pass at L >= 1024 (the issue's target range), as min-max.
mh_full = {key(r): r for r in rows if str(r.get("step", "")).startswith("mh_attention_full_")}
pt_full = {key(r): r for r in rows if str(r.get("step", "")).startswith("torch_attention_full_")}
hop_full = {key(r): r for r in rows if str(r.get("step", "")).startswith("mh_hopper_full_")}
if mh_full or pt_full:
    f = lambda x: f"{x:.1f}" if x else "-"
    groups, hgroups = {}, {}
    with open(sys.argv[2], "w") as out:
        out.write(f"{'dtype d mask L pass':30s} {'custom':>7s} {'torch':>7s} {'cudnn':>7s}"
                  f" {'hopper':>7s} {'cus/torch':>9s}  TFLOP/s\n")
        for k in sorted(set(mh_full) | set(pt_full), key=lambda k: (k[1], k[2], k[3], k[4], k[5])):
            m, t = mh_full.get(k, {}), pt_full.get(k, {})
            c, tt = m.get("custom_tflops"), t.get("torch_flash_tflops")
            r = c / tt if c and tt else None
            label = f"{k[1]} d{k[2]} {'causal' if k[3] else 'full'} L{k[4]} {k[5]}"
            rs = f"{r:.2f}" if r else "-"
            out.write(f"{label:30s} {f(c):>7s} {f(tt):>7s} {f(m.get('cudnn_tflops')):>7s}"
                      f" {f(hop_full.get(k, {}).get('hopper_tflops')):>7s} {rs:>9s}\n")
            if r and k[4] >= 1024 and k[5] in ("fwd", "bwd"):
                groups.setdefault((k[1], k[2], k[3], k[5]), []).append(r)
            hp = hop_full.get(k, {}).get("hopper_tflops")
            if hp and tt and k[4] >= 1024 and k[5] in ("fwd", "bwd"):
                hgroups.setdefault((k[1], k[2], k[3], k[5]), []).append(hp / tt)
    print(f"\nfull attention sweep (all rows: attention_full.txt), custom / torch flash at L >= 1024"
          f" (hopper / torch beside it):")
    for g, rs in sorted(groups.items()):
        hs = hgroups.get(g)
        print(f"  {g[0]} d{g[1]} {'causal' if g[2] else 'full  '} {g[3]:3s}"
              f" {min(rs):.2f}-{max(rs):.2f} over {len(rs)} lengths"
              + (f"   hopper {min(hs):.2f}-{max(hs):.2f}" if hs else ""))
EOF
  echo "# total $(($(date +%s) - T0)) s (budget $BUDGET s); logs: $OUTDIR/logs.tar.gz"
} >"$OUTDIR/summary.txt" 2>&1
echo
cat "$OUTDIR/summary.txt"
# Let tee finish writing before the script returns (its output is what the caller sees last).
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null || true
