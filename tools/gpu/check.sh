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
# that run the plain forward and the default backward, which every Hopper step shares; a variant
# kind names the pass it changes: overlap (the overlapped forward), dqbulk (the backward with
# MH_HOPPER_BWD_DQ=bulk). A hang in a plain step, or in the pass the variants share, stops them
# all; one in a variant's own pass stops only that variant's steps.
declare -A HOPPER_HUNG # kind (plain, overlap, dqbulk) -> the step that hung
declare -A HOPPER_PASS=([overlap]=forward [dqbulk]=backward)
hopper_step() {
  local kind=$1 name=$2
  shift
  local hung=${HOPPER_HUNG[plain]:-}
  [[ $kind != plain && -z "$hung" ]] && hung=${HOPPER_HUNG[$kind]:-}
  if [[ -n "$hung" ]]; then
    say "$name: SKIPPED (a Hopper kernel hung in $hung)"
    SUMMARY+=("$name|skipped|0|Hopper kernel hung in $hung")
    return 0
  fi
  step "$@"
  local msg scope=plain
  msg=$(grep -m1 'did not finish within' "$LOGS/$name.log" 2>/dev/null) || return 0
  [[ $kind != plain && $msg == *"${HOPPER_PASS[$kind]}"* ]] && scope=$kind
  HOPPER_HUNG[$scope]=$name
  say "$name: hung ($msg): the later $([[ $scope == plain ]] && echo 'Hopper' ||
    echo "$scope") steps skip"
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
  hopper_step plain mh_attention_hopper 40 "${MHENV[@]}" "$MH" bench attention \
    "${ATTN_ARGS[@]}" --impl hopper
  # and its forward with one consumer warpgroup (64 query rows) per block: the summary's "hopWG1"
  # column (the translation batch's short sentences leave a 128-row block half idle).
  hopper_step plain mh_attention_hopper_wg1 30 "${MHENV[@]}" MH_HOPPER_FWD_WG=1 "$MH" bench \
    attention "${ATTN_ARGS[@]}" --impl hopper
  # and the overlapped Hopper forward (FlashAttention-3's intra-warpgroup overlap, 128-key tiles,
  # setmaxnreg; new on a GPU, hence a process of its own): the summary's "hopOVL" column.
  hopper_step overlap mh_attention_hopper_ovl 30 "${MHENV[@]}" MH_HOPPER_FWD=overlap "$MH" bench \
    attention "${ATTN_ARGS[@]}" --impl hopper
  # and with three consumer warpgroups (192-row blocks, as FlashAttention-3 at head_dim 64):
  # the summary's "hopOV3" column.
  hopper_step overlap mh_attention_hopper_ovl3 30 "${MHENV[@]}" MH_HOPPER_FWD_WG=3 "$MH" bench \
    attention "${ATTN_ARGS[@]}" --impl hopper
  # and the Hopper backward with dQ added up by bulk reductions (shared memory, then one warp's
  # cp.reduce.async.bulk per row, as FlashAttention-3) instead of atomics: the "hopDQB" column.
  hopper_step dqbulk mh_attention_hopper_dqb 30 "${MHENV[@]}" MH_HOPPER_BWD_DQ=bulk "$MH" bench \
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
    # name:kernel:impl:knob:hopper kind (- for custom: plain step); the Hopper kernels last (n/a,
    # and so failing, off sm_90).
    for spec in bwd:flash_bwd_kernel:custom:MH_FLASH_BWD=strips:- \
      bwd_tiles:flash_bwd_tiles_kernel:custom:MH_FLASH_BWD=tiles:- \
      fwd:flash_fwd_kernel:custom:MH_FLASH_FWD_TILE=64x64:- \
      hopper_bwd:flash_bwd_sm90_kernel:hopper:MH_HOPPER_FWD=plain:plain \
      hopper_fwd_ovl:flash_fwd_sm90_kernel:hopper:MH_HOPPER_FWD=overlap:overlap; do
      IFS=: read -r name kern impl knob kind <<<"$spec"
      run=(step)
      [[ $kind != - ]] && run=(hopper_step "$kind")
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
  "$PY" "$ROOT/tools/gpu/summary.py" "$RESULTS" --full-table "$OUTDIR/attention_full.txt"
  echo "# total $(($(date +%s) - T0)) s (budget $BUDGET s); logs: $OUTDIR/logs.tar.gz"
} >"$OUTDIR/summary.txt" 2>&1
echo
cat "$OUTDIR/summary.txt"
# Let tee finish writing before the script returns (its output is what the caller sees last).
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null || true
