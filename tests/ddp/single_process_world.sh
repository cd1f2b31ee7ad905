#!/usr/bin/env bash
# ddp.single_process_world: without mpirun, `multihead train` is a world of one process (MPI's
# singleton init) and trains as before: progress lines, metrics, weights, logs/rank0.log, no
# communication figures on the progress line, nothing on stderr; `mpirun -np 1` is the
# same world of one and gives the same weights.
#   single_process_world.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init single_process_world "$@"

args=("${toy_args[@]}" --set parallel.bucket_mb=0.1)
run_ok alone timeout -k 5 120 "$MH" train "${args[@]}" --set "train.out_dir=$T/alone" \
  --set "train.save=$T/alone.safetensors"
grep -q '^step  *5/5 | loss ' "$T/alone.out" || { show_output alone; fail "no progress line for step 5/5"; }
! grep -q 'comm .* ms' "$T/alone.out" || { show_output alone; fail "communication times without data parallelism"; }
[ ! -s "$T/alone.err" ] || { show_output alone; fail "stderr is not empty"; }
[ -s "$T/alone/logs/rank0.log" ] || fail "no logs/rank0.log"
[ "$(ls "$T/alone/logs")" = rank0.log ] || fail "logs/ holds more than rank0.log: $(ls "$T/alone/logs")"
[ "$(grep -c '"loss"' "$T/alone/metrics.jsonl")" -eq 5 ] || fail "metrics.jsonl lacks 5 step lines"
[ -s "$T/alone/config.yaml" ] || fail "no config.yaml"
[ -s "$T/alone.safetensors" ] || fail "no weights saved"

# A bad input still ends with one line, exit 2, and no rank prefix.
expect_error 2 "multihead: error: $T/none.pairs: cannot read file" missing timeout -k 5 60 \
  "$MH" train --set data.task=pairs --set "data.train_pairs=$T/none.pairs" \
  --set "train.out_dir=$T/missing"

run_mpi_ok np1 1 "$MH" train "${args[@]}" --set "train.out_dir=$T/np1" \
  --set "train.save=$T/np1.safetensors"
grep -q '^step  *5/5 | loss ' "$T/np1.out" || { show_output np1; fail "mpirun -np 1: no progress line for step 5/5"; }
compare_weights "$T/np1.safetensors" "$T/alone.safetensors" "mpirun-np1-vs-alone"

echo "PASS single_process_world"
