#!/usr/bin/env bash
# ddp.gpu_equivalence (labels mpi, gpu): data-parallel training on a GPU gives the weights of
# single-process training on that GPU. Two ranks share the machine's first GPU, so their
# gradients go over MPI staged through host memory (NCCL refuses two ranks of one communicator on
# one GPU; with one rank per GPU the runtime picks NCCL, whose collectives test_nccl_communicator
# checks). The toy model of ddp.equivalence in fp32 on the GPU, dropout off, 5 steps, several
# buckets; 1 process without mpirun, then 2 ranks with overlap on and off: weights within the
# global relative error MH_DDP_TOL (1e-5), losses, token counts and gradient norms per step as
# 1 process. Exits 77 (ctest: skipped) without a GPU or without the CUDA backend.
#   gpu_equivalence.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init gpu_equivalence "$@"

info=$("$MH" info 2>/dev/null || true)
if ! grep -q '"backends": \[[^]]*"cuda"' <<<"$info"; then
  echo "SKIP: this multihead was built without the CUDA backend"
  exit 77
fi
if ! grep -q '"cuda_devices": [1-9]' <<<"$info"; then
  echo "SKIP: no CUDA device: GPU test skipped"
  exit 77
fi

common=("${toy_args[@]}" --set train.device=cuda --set train.precision=fp32
        --set parallel.bucket_mb=0.1)

run_ok np1 "$MH" train "${common[@]}" --set "train.out_dir=$T/np1" \
  --set "train.save=$T/np1.safetensors"
run_mpi_ok np2 2 "$MH" train "${common[@]}" --set "train.out_dir=$T/np2" \
  --set "train.save=$T/np2.safetensors"
run_mpi_ok np2_no_overlap 2 "$MH" train "${common[@]}" --set parallel.overlap=false \
  --set "train.out_dir=$T/np2_no_overlap" --set "train.save=$T/np2_no_overlap.safetensors"
for label in np1 np2 np2_no_overlap; do
  grep -q '^step  *5/5 ' "$T/$label.out" || { show_output "$label"; fail "$label: no progress line for step 5/5"; }
  [ -s "$T/$label.safetensors" ] || fail "$label: no weights saved"
done
# The run says where it trains and how its gradients travel (rank 0's log).
grep -q 'cuda:0' "$T/np2/logs/rank0.log" || fail "np2: logs/rank0.log does not name cuda:0"
grep -q 'staged through host memory' "$T/np2/logs/rank0.log" ||
  fail "np2: two ranks on one GPU should all-reduce over MPI staged through host memory"

py - "$T" np2 np2_no_overlap <<'PY' || fail "metrics.jsonl check failed (see above)"
import json, sys
root, runs = sys.argv[1], sys.argv[2:]
def steps(run):
    s = [r for r in map(json.loads, open(f"{root}/{run}/metrics.jsonl")) if "loss" in r]
    if [r["step"] for r in s] != [1, 2, 3, 4, 5]:
        sys.exit(f"{run}/metrics.jsonl: step lines are not 1..5")
    return s
ref = steps("np1")
for run in runs:
    for a, b in zip(steps(run), ref):
        if (a["tgt_tokens"], a["src_tokens"]) != (b["tgt_tokens"], b["src_tokens"]):
            sys.exit(f"{run}: step {a['step']}: tokens differ from 1 process")
        for key in ("loss", "nll", "grad_norm"):
            if abs(a[key] - b[key]) > 2e-5 * abs(b[key]):
                sys.exit(f"{run}: step {a['step']}: {key} {a[key]}, 1 process: {b[key]}")
print("1 process on the GPU: losses", [r["loss"] for r in ref])
PY

compare_weights "$T/np2.safetensors" "$T/np1.safetensors" "gpu-np2-vs-np1"
compare_weights "$T/np2_no_overlap.safetensors" "$T/np1.safetensors" "gpu-np2-no-overlap-vs-np1"

echo "PASS gpu_equivalence"
