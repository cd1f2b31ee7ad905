#!/usr/bin/env bash
# ddp.equivalence: data-parallel training gives the weights of single-process training.
# The toy model, dropout off, 5 steps of 8 sentences per micro-batch accumulated to 150 target
# tokens (2-3 micro-batches per step), trained by 1 process (no mpirun) and by 2, 3 (uneven
# shares 3/3/2) and 4 MPI ranks (4 oversubscribes a 2-core machine), with several gradient
# buckets (parallel.bucket_mb=0.1, ~10 buckets of the 0.9 MB of gradients); then 2 ranks with
# overlap off and with tiny buckets (0.01 MB, ~100), and 4 ranks with both. Every pair of saved
# weights must agree within a global relative error ||a-b||/||b|| <= 1e-5
# (tests/ddp/compare_weights.py); the per-tensor errors are printed (rounding noise dominates
# tensors whose gradient is zero but for rounding: see toy_args in lib.sh).
# Also checked per run: steps 1..5 printed once each (only rank 0 prints), one log per rank in
# train.out_dir/logs, metrics.jsonl from rank 0 with the same tokens, losses and gradient norms
# per step as 1 process.
#   equivalence.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init equivalence "$@"

# check_run LABEL NP: the output and files of run LABEL (out_dir $T/LABEL) on NP ranks.
check_run() {
  local label=$1 np=$2 s r
  for s in 1 2 3 4 5; do
    [ "$(grep -c "^step  *$s/5 " "$T/$label.out")" -eq 1 ] || {
      show_output "$label"
      fail "$label: expected exactly one progress line for step $s/5 on the terminal"
    }
  done
  for ((r = 0; r < np; r++)); do
    [ -s "$T/$label/logs/rank$r.log" ] || fail "$label: no log $T/$label/logs/rank$r.log"
    grep -q '^step  *5/5 ' "$T/$label/logs/rank$r.log" ||
      fail "$label: logs/rank$r.log lacks the progress line of step 5/5"
  done
  [ ! -e "$T/$label/logs/rank$np.log" ] || fail "$label: a log for rank $np of $np ranks"
  [ -s "$T/$label.safetensors" ] || fail "$label: no weights saved"
}

common=("${toy_args[@]}")

run_ok np1 "$MH" train "${common[@]}" --set "train.out_dir=$T/np1" \
  --set "train.save=$T/np1.safetensors"
check_run np1 1

for np in 2 3 4; do
  run_mpi_ok "np$np" "$np" "$MH" train "${common[@]}" --set parallel.bucket_mb=0.1 \
    --set "train.out_dir=$T/np$np" --set "train.save=$T/np$np.safetensors"
  check_run "np$np" "$np"
done
run_mpi_ok np2_no_overlap 2 "$MH" train "${common[@]}" --set parallel.bucket_mb=0.1 \
  --set parallel.overlap=false --set "train.out_dir=$T/np2_no_overlap" \
  --set "train.save=$T/np2_no_overlap.safetensors"
check_run np2_no_overlap 2
run_mpi_ok np2_tiny_buckets 2 "$MH" train "${common[@]}" --set parallel.bucket_mb=0.01 \
  --set "train.out_dir=$T/np2_tiny_buckets" --set "train.save=$T/np2_tiny_buckets.safetensors"
check_run np2_tiny_buckets 2
# 4 ranks: the reduction order may depend on the message size there (Open MPI picks its
# all-reduce algorithm by size), so bucketing could matter at the rounding level.
run_mpi_ok np4_tiny_no_overlap 4 "$MH" train "${common[@]}" --set parallel.bucket_mb=0.01 \
  --set parallel.overlap=false --set "train.out_dir=$T/np4_tiny_no_overlap" \
  --set "train.save=$T/np4_tiny_no_overlap.safetensors"
check_run np4_tiny_no_overlap 4
# With more than one rank the progress line also reports communication (train_run.cpp).
grep -q '^step  *5/5 .*| compute .* ms, comm .* ms, exposed .* ms' "$T/np2.out" ||
  { show_output np2; fail "np2: the progress line lacks the compute/comm/exposed times"; }

# metrics.jsonl: 5 step lines per run; every step >= 150 target tokens (so >= 2 micro-batches of
# at most 104), the same token counts, losses and gradient norms as 1 process (printed with 6
# digits). The gradient norm catches what the weights cannot: Adam's update does not change
# when every gradient is scaled alike, e.g. averaged over ranks instead of target tokens.
py - "$T" np2 np3 np4 np2_no_overlap np2_tiny_buckets np4_tiny_no_overlap <<'PY' || fail "metrics.jsonl check failed (see above)"
import json, sys
root, runs = sys.argv[1], sys.argv[2:]
def steps(run):
    recs = [json.loads(l) for l in open(f"{root}/{run}/metrics.jsonl")]
    s = [r for r in recs if "loss" in r]
    if [r["step"] for r in s] != [1, 2, 3, 4, 5]:
        sys.exit(f"{run}/metrics.jsonl: step lines are not 1..5: {[r['step'] for r in s]}")
    return s
ref = steps("np1")
for r in ref:
    if r["tgt_tokens"] < 150:
        sys.exit(f"np1: step {r['step']} has {r['tgt_tokens']} target tokens, below tokens_per_step 150")
for run in runs:
    for a, b in zip(steps(run), ref):
        if (a["tgt_tokens"], a["src_tokens"]) != (b["tgt_tokens"], b["src_tokens"]):
            sys.exit(f"{run}: step {a['step']}: tokens {a['tgt_tokens']}/{a['src_tokens']}, "
                     f"1 process: {b['tgt_tokens']}/{b['src_tokens']}")
        for key in ("loss", "nll", "grad_norm"):
            if abs(a[key] - b[key]) > 2e-5 * abs(b[key]):
                sys.exit(f"{run}: step {a['step']}: {key} {a[key]}, 1 process: {b[key]}")
print("1 process: target tokens per step", [r["tgt_tokens"] for r in ref], "| losses",
      [r["loss"] for r in ref], "| gradient norms", [r["grad_norm"] for r in ref])
PY

compare_weights "$T/np2.safetensors" "$T/np1.safetensors" "np2-vs-np1"
compare_weights "$T/np3.safetensors" "$T/np1.safetensors" "np3-vs-np1"
compare_weights "$T/np4.safetensors" "$T/np1.safetensors" "np4-vs-np1"
compare_weights "$T/np2_no_overlap.safetensors" "$T/np2.safetensors" "overlap-off-vs-on"
compare_weights "$T/np2_no_overlap.safetensors" "$T/np1.safetensors" "overlap-off-vs-np1"
compare_weights "$T/np2_tiny_buckets.safetensors" "$T/np2.safetensors" "tiny-buckets-vs-0.1MB"
compare_weights "$T/np4_tiny_no_overlap.safetensors" "$T/np4.safetensors" "np4-tiny-no-overlap-vs-np4"

echo "PASS equivalence"
