# shellcheck shell=bash
# Helpers of the data-parallel tests (tests/ddp/*.sh, registered by tests/ddp.cmake), on top of
# the end-to-end helpers (tests/e2e/lib.sh: e2e_init, fail, run_ok, show_output, py). Sourced.
#   MPIRUN (env MH_MPIRUN, else mpirun) and mpi_run NP CMD...: CMD on NP ranks with the flags
#     every test wants (see mpi_flags below), under `timeout` so that a hang fails the test
#     instead of blocking ctest (MH_DDP_TIMEOUT seconds, default 120).
#   run_mpi_ok LABEL NP CMD...  like run_ok, through mpi_run.
#   toy_args                    the small training run the tests share (an array).
#   compare_weights A B LABEL   tests/ddp/compare_weights.py; fails the test if the global
#                               relative error exceeds MH_DDP_TOL (1e-5).
#   ddp_cleanup_on_exit         after e2e_init: on exit, kill the process groups listed in
#                               $MH_DDP_PGIDS (background jobs started with setsid), then clean
#                               up as e2e_init's trap does, keeping the script's exit status.
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"

DDP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MPIRUN=${MH_MPIRUN:-mpirun}
command -v "$MPIRUN" >/dev/null 2>&1 || {
  echo "FAIL: $MPIRUN not found (set MH_MPIRUN, or install Open MPI)" >&2
  exit 1
}

# One BLAS thread per rank: tests may run 4 ranks on 2 cores, and ctest runs tests side by side.
# --bind-to none --oversubscribe: more ranks than cores must start, and ranks of concurrent tests
# must not be pinned onto the same cores. --allow-run-as-root: CI containers run as root.
mpi_flags=(--bind-to none --oversubscribe -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1)
[ "$(id -u)" != 0 ] || mpi_flags+=(--allow-run-as-root)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

mpi_run() {  # NP CMD...
  local np=$1
  shift
  timeout -k 10 "${MH_DDP_TIMEOUT:-120}" "$MPIRUN" -np "$np" "${mpi_flags[@]}" "$@"
}

run_mpi_ok() {  # LABEL NP CMD...
  local label=$1 np=$2
  shift 2
  run_ok "$label" mpi_run "$np" "$@"
}

# The shared small run: the toy task (235k parameters), dropout off, 8 sentences per global
# micro-batch and 150 target tokens per step, i.e. 2-3 micro-batches accumulated per step (a
# toy sentence has at most 13 target tokens, 8 of them at most 104). 16 held-out examples and
# max_len 16 (>= the 14 tokens of the longest toy target) keep the final evaluation and greedy
# decoding short; sinusoidal positions are no parameters, so max_len changes no weight.
# Adam's epsilon 1e-6 instead of 1e-9: Adam divides each gradient by its own RMS, so a gradient
# that is zero up to rounding (attention key biases: softmax ignores a shift shared by all keys)
# becomes a full-size update of pure rounding noise, different for every summation order. With
# eps = 1e-9 those 384 values alone put the global relative error at ~8e-6 (2 ranks) to ~9.5e-6
# (3, 4 ranks), next to the 1e-5 bound, while all other tensors agree to ~5e-9; with 1e-6
# (far below the ~1e-2 size of real gradients here: losses and gradient norms do not change in
# their 5 printed digits) the noise stays noise-sized and the global error is ~1e-8.
toy_args=(--set model.dropout=0 --set train.steps=5 --set data.batch_size=8
          --set train.tokens_per_step=150 --set train.log_every=1 --set train.eval_every=0
          --set train.threads=1 --set data.toy_valid_size=16 --set model.max_len=16
          --set train.adam_eps=1e-6)

# NumPy is needed: the system Python (Debian's python3-numpy) unless MH_PYTHON says otherwise.
DDP_PYTHON=${MH_PYTHON:-python3}
[ -n "${MH_PYTHON:-}" ] || [ ! -x /usr/bin/python3 ] || DDP_PYTHON=/usr/bin/python3
compare_weights() {  # A B LABEL
  local rc=0
  "$DDP_PYTHON" "$DDP_DIR/compare_weights.py" "$1" "$2" --label "$3" \
    --tol "${MH_DDP_TOL:-1e-5}" >"$T/compare-$3.out" 2>&1 || rc=$?
  cat "$T/compare-$3.out"
  [ "$rc" != 1 ] || fail "$3: weights differ (global relative error above ${MH_DDP_TOL:-1e-5})"
  [ "$rc" = 0 ] || fail "$3: compare_weights.py failed (exit code $rc)"
}

# Process groups to kill on exit (background mpirun jobs started with setsid).
MH_DDP_PGIDS=""
ddp_cleanup() {
  local rc=$? g
  for g in $MH_DDP_PGIDS; do
    # The group, or the process alone if it has not made its group yet (killed right away).
    kill -KILL -- "-$g" 2>/dev/null || kill -KILL "$g" 2>/dev/null || true
  done
  set +e         # (under set -e the next line would end the script here)
  (exit "$rc")   # e2e_cleanup exits with the status $? has when it starts
  e2e_cleanup
}
ddp_cleanup_on_exit() {
  trap ddp_cleanup EXIT
}
