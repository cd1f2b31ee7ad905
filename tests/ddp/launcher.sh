#!/usr/bin/env bash
# ddp.launcher: launch/mpirun.sh picks ranks, threads and binding, and starts a job that trains.
# --dry-run: 2 ranks on this machine get cores / 2 threads each (OMP_NUM_THREADS,
# OPENBLAS_NUM_THREADS, -x, --set train.threads), core binding when 2 × threads fit the cores,
# --oversubscribe without binding when 4 ranks do not fit; a user's train.threads wins; bad
# options exit 2. Then a real 2-rank run (MULTIHEAD points the launcher at this build).
#   launcher.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init launcher "$@"

L=$(cd "$(dirname "$0")/../.." && pwd)/launch/mpirun.sh
export MULTIHEAD=$MH MPIRUN
cores=$(nproc)

run_ok dry2 "$L" -np 2 --dry-run -- train --set train.steps=3
cmd=$(tail -n 1 "$T/dry2.out")
t=$((cores / 2 > 0 ? cores / 2 : 1))
for want in "OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t " " -np 2 " " -x OMP_NUM_THREADS " \
  " -x OPENBLAS_NUM_THREADS " " train --set train.threads=$t --set train.steps=3" "$MH train"; do
  [[ $cmd == *"$want"* ]] || { show_output dry2; fail "dry run lacks '$want': $cmd"; }
done
if [ $((2 * t)) -le "$cores" ]; then
  [[ $cmd == *" --map-by slot:PE=$t --bind-to core "* ]] || fail "2 ranks: expected core binding: $cmd"
fi
[ "$(id -u)" != 0 ] || [[ $cmd == *" --allow-run-as-root "* ]] || fail "root: no --allow-run-as-root: $cmd"
[[ $cmd != *"--tag-output"* ]] || fail "--tag-output in: $cmd"

# More ranks than cores: no binding, oversubscription allowed; no `--` needed.
np=$((cores * 2))
run_ok dry_over "$L" -np "$np" --dry-run train
cmd=$(tail -n 1 "$T/dry_over.out")
[[ $cmd == *" --bind-to none --oversubscribe "* ]] || fail "$np ranks on $cores cores: $cmd"
[[ $cmd == *"OMP_NUM_THREADS=1 "* ]] || fail "$np ranks on $cores cores: not 1 thread each: $cmd"

# The user's train.threads becomes the threads per rank; --threads sets it for other commands.
run_ok dry_user "$L" -np 1 --dry-run -- train --set train.threads=1
cmd=$(tail -n 1 "$T/dry_user.out")
[[ $cmd == *"OMP_NUM_THREADS=1 "* && $cmd != *"train --set train.threads=1 --set train.threads"* ]] ||
  fail "user's train.threads=1 not honoured: $cmd"
run_ok dry_info "$L" -np 2 --threads 3 --dry-run info
cmd=$(tail -n 1 "$T/dry_info.out")
[[ $cmd == *"OMP_NUM_THREADS=3 "* && $cmd != *"train.threads"* ]] || fail "--threads 3 info: $cmd"
printf 'localhost slots=%s\n' "$cores" >"$T/hosts"
run_ok dry_hosts "$L" --hostfile "$T/hosts" --dry-run -- train
cmd=$(tail -n 1 "$T/dry_hosts.out")
[[ $cmd == *" --hostfile $T/hosts "* && $cmd == *" --map-by ppr:"* ]] || fail "hostfile: $cmd"

expect_error 2 "launch/mpirun.sh: error: -np: expected a positive integer, got 'x'" bad_np "$L" -np x train
expect_error 2 "launch/mpirun.sh: error: missing the multihead command" no_cmd "$L" -np 2
expect_error 2 "launch/mpirun.sh: error: unknown option '--bogus'" bad_opt "$L" --bogus train
run_ok help "$L" --help
grep -q '^usage: launch/mpirun.sh' "$T/help.out" || fail "--help prints no usage"

# A real job through the launcher: 2 ranks, 1 thread each.
run_ok real timeout -k 10 120 "$L" -np 2 --threads 1 -- train "${toy_args[@]}" \
  --set "train.out_dir=$T/run"
grep -q '^step  *5/5 .*| compute .* ms, comm ' "$T/real.out" || { show_output real; fail "launched job: no 2-rank progress line for step 5/5"; }
[ -s "$T/run/logs/rank1.log" ] || fail "launched job: no logs/rank1.log"
grep -q "^  threads: 1$" "$T/run/config.yaml" || fail "launched job: train.threads is not 1 in config.yaml"

echo "PASS launcher"
