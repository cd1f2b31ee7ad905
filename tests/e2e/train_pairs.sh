#!/usr/bin/env bash
# e2e.train_pairs: train from pre-tokenized pairs files (data.task=pairs) written here: a copy task
# over ids 4..20, 200 training and 40 validation pairs; 30 steps exit 0 and print a validation
# line whose token count matches the validation file.
#   train_pairs.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init train_pairs "$@"

# write_copy_pairs FILE COUNT SEED: COUNT lines "x1 .. xn<TAB>x1 .. xn", n in 3..10, ids in 4..20.
write_copy_pairs() {
  awk -v count="$2" -v seed="$3" 'BEGIN {
    srand(seed)
    for (i = 0; i < count; i++) {
      n = 3 + int(rand() * 8); s = ""
      for (j = 0; j < n; j++) s = s (j ? " " : "") (4 + int(rand() * 17))
      print s "\t" s
    }
  }' >"$1"
}
write_copy_pairs "$T/train.pairs" 200 1
write_copy_pairs "$T/valid.pairs" 40 2
[ "$(wc -l <"$T/train.pairs")" -eq 200 ] || fail "internal: train.pairs does not have 200 lines"
want_tokens=$(target_tokens "$T/valid.pairs")

run_ok train "$MH" train --set data.task=pairs --set "data.train_pairs=$T/train.pairs" \
  --set "data.valid_pairs=$T/valid.pairs" --set train.steps=30 --set train.log_every=10 \
  --set data.batch_size=32 --set "train.out_dir=$T/run"

grep -q '^step  *30/30 ' "$T/train.out" || { show_output train; fail "no progress line for step 30/30"; }
# "valid: nll X | loss Y | N tokens" (src/train/train_run.cpp), X and Y finite and > 0.
valid=$(grep '^valid: ' "$T/train.out" || true)
[ -n "$valid" ] || { show_output train; fail "train printed no 'valid: ...' line"; }
[ "$(wc -l <<<"$valid")" -eq 1 ] || fail "expected one 'valid:' line (eval_every=0), got: $valid"
py - "$valid" "$want_tokens" <<'PY' || fail "validation line check failed (see above)"
import math, re, sys
line, want = sys.argv[1], int(sys.argv[2])
m = re.fullmatch(r"valid: nll (\S+) \| loss (\S+) \| (\d+) tokens", line)
if not m:
    sys.exit(f"malformed validation line: {line!r}")
nll, loss, tokens = float(m[1]), float(m[2]), int(m[3])
for name, v in (("nll", nll), ("loss", loss)):
    if not math.isfinite(v) or v <= 0:
        sys.exit(f"validation {name} is {v}, expected a finite number > 0: {line!r}")
if tokens != want:
    sys.exit(f"validation counted {tokens} tokens, the valid file has {want} target tokens: {line!r}")
PY
# No greedy decoding of held-out examples for pairs (that is for the synthetic tasks).
! grep -q '^held-out examples' "$T/train.out" || fail "train printed toy held-out examples for task pairs"

# metrics.jsonl: 30 step lines and one final validation line.
py - "$T/run/metrics.jsonl" <<'PY' || fail "metrics.jsonl check failed (see above)"
import json, math, sys
path = sys.argv[1]
recs = [json.loads(l) for l in open(path)]
steps = [r["step"] for r in recs if "loss" in r]
if steps != list(range(1, 31)):
    sys.exit(f"{path}: step lines are not 1..30: {steps}")
valid = [r for r in recs if "valid_nll" in r]
if len(valid) != 1 or valid[0]["step"] != 30 or not math.isfinite(valid[0]["valid_nll"]):
    sys.exit(f"{path}: expected one finite valid_nll line at step 30, got {valid}")
PY

echo "PASS train_pairs: $valid"
