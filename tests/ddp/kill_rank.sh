#!/usr/bin/env bash
# ddp.kill_rank: a rank that dies (kill -9, as the OOM killer or a lost node would) ends the whole
# job: `mpirun -np 2` training for many steps; once training runs, rank 1 is killed with SIGKILL;
# mpirun must exit non-zero within 60 s, name the lost rank, and leave no process behind.
#   kill_rank.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init kill_rank "$@"
ddp_cleanup_on_exit  # whatever happens, nothing of this job outlives the test

out_dir=$T/killrun  # unique: finds this job's processes by their command line
# mpirun in a session (and process group) of its own, so the trap can kill everything it
# started. Not under `timeout`: this test times it itself.
setsid "$MPIRUN" -np 2 "${mpi_flags[@]}" "$MH" train --set model.dropout=0 \
  --set train.steps=100000 --set train.log_every=1 --set data.batch_size=8 \
  --set train.threads=1 --set "train.out_dir=$out_dir" >"$T/job.out" 2>"$T/job.err" &
job=$!
MH_DDP_PGIDS=$job

# Training has started once rank 1 logged a progress line (and rank 0 wrote a metrics line).
started=0
for _ in $(seq 1 600); do
  if grep -q '^step ' "$out_dir/logs/rank1.log" 2>/dev/null &&
    [ -s "$out_dir/metrics.jsonl" ]; then
    started=1
    break
  fi
  kill -0 "$job" 2>/dev/null || break
  sleep 0.1
done
if [ "$started" != 1 ]; then
  show_output job
  fail "training did not start within 60 s (no progress line in logs/rank1.log)"
fi

# Rank 1's PID: the multihead process of this job whose environment says it is world rank 1
# (Open MPI sets OMPI_COMM_WORLD_RANK in every rank; mpirun itself has none).
victim=""
for pid in $(pgrep -f -- "train.out_dir=$out_dir" || true); do
  [ "$pid" != "$job" ] || continue
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then
    victim=$pid
    break
  fi
done
[ -n "$victim" ] || { ps -o pid,pgid,args -g "$job" >&2 || true; fail "found no rank-1 process"; }
ranks_before=$(pgrep -f -- "train.out_dir=$out_dir" | grep -cvx "$job")

kill -KILL "$victim"
t0=$(date +%s.%N)
while kill -0 "$job" 2>/dev/null; do
  if [ "$(echo "$(date +%s.%N) - $t0 > 60" | bc)" = 1 ]; then
    show_output job
    fail "mpirun still running 60 s after rank 1 (PID $victim) was killed: the job hangs"
  fi
  sleep 0.1
done
rc=0
wait "$job" || rc=$?
elapsed=$(echo "$(date +%s.%N) - $t0" | bc)

[ "$rc" != 0 ] || { show_output job; fail "mpirun exited 0 after rank 1 was killed"; }
# Open MPI: "mpirun noticed that process rank 1 with PID N on node H exited on signal 9 (Killed)."
grep -q 'process rank 1 with PID .*signal 9' "$T/job.out" "$T/job.err" || {
  show_output job
  fail "mpirun's output does not name the killed rank 1 (exit code $rc)"
}
sleep 0.5
left=$(pgrep -f -- "train.out_dir=$out_dir" || true)
if [ -n "$left" ]; then
  ps -o pid,args -p "$(paste -sd, <<<"$left")" >&2 || true
  fail "processes left behind: $(paste -sd' ' <<<"$left")"
fi
MH_DDP_PGIDS=""

printf 'PASS kill_rank: %d ranks, rank 1 (PID %s) killed; mpirun exited %d after %.2f s: %s\n' \
  "$ranks_before" "$victim" "$rc" "$elapsed" \
  "$(grep -ho 'process rank 1 with PID .*' "$T/job.out" "$T/job.err" | head -1)"
