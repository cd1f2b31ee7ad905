#!/usr/bin/env bash
# e2e.train_eval_roundtrip: train the embedded toy config for 60 steps, then check everything the
# run leaves behind (progress lines, config.yaml, metrics.jsonl, the safetensors checkpoint) and
# evaluate the checkpoint with `multihead eval` (token count, determinism, reload via init_from).
#   train_eval_roundtrip.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init train_eval_roundtrip "$@"

# --- train ---------------------------------------------------------------------------------------
# data.toy_valid_size=50 only shortens the greedy decoding of held-out examples at the end.
run_ok train "$MH" train --set train.steps=60 --set train.log_every=20 \
  --set "train.out_dir=$T/run" --set "train.save=$T/w.safetensors" --set data.toy_valid_size=50

# Progress lines: one per log_every steps (20, 40, 60), each with every field.
grep '^step ' "$T/train.out" >"$T/progress.txt" || fail "train printed no progress line ('step ...')"
[ "$(wc -l <"$T/progress.txt")" -eq 3 ] ||
  fail "expected 3 progress lines (steps 20, 40, 60), got: $(cat "$T/progress.txt")"
for word in step loss lr tok/s ETA; do
  while IFS= read -r line; do
    grep -qF -- "$word" <<<"$line" || fail "progress line lacks '$word': $line"
  done <"$T/progress.txt"
done
grep -q '^step  *60/60 ' "$T/progress.txt" || fail "no progress line for step 60/60"

# --- config.yaml: exists, loads back, same YAML body as the effective config the run printed -----
[ -f "$T/run/config.yaml" ] || fail "$T/run/config.yaml was not written"
run_ok config "$MH" config --config "$T/run/config.yaml"
# The effective config printed by train: the lines between "effective config:" and the first
# progress line. Comment lines name the config's source and so legitimately differ.
awk '/^effective config:$/ { on = 1; next } /^step / { on = 0 } on' "$T/train.out" |
  grep -v '^#' >"$T/effective.yaml" || true
[ -s "$T/effective.yaml" ] || fail "train printed no 'effective config:' block"
grep -v '^#' "$T/config.out" >"$T/reloaded.yaml" || true
grep -v '^#' "$T/run/config.yaml" >"$T/saved.yaml" || true
diff -u "$T/effective.yaml" "$T/saved.yaml" >&2 ||
  fail "run/config.yaml differs from the effective config printed by train (diff above)"
diff -u "$T/effective.yaml" "$T/reloaded.yaml" >&2 ||
  fail "'multihead config --config run/config.yaml' differs from the run's effective config"

# --- metrics.jsonl: 60 step lines, increasing steps, finite losses, and the loss went down -------
[ -f "$T/run/metrics.jsonl" ] || fail "$T/run/metrics.jsonl was not written"
py - "$T/run/metrics.jsonl" <<'PY' || fail "metrics.jsonl check failed (see above)"
import json, math, sys
path = sys.argv[1]
steps = []
for n, line in enumerate(open(path), 1):
    try:
        rec = json.loads(line)
    except ValueError as e:
        sys.exit(f"{path}:{n}: not a JSON line ({e}): {line!r}")
    if "loss" in rec:  # a training step (validation lines carry valid_nll / valid_loss)
        steps.append(rec)
if len(steps) != 60:
    sys.exit(f"{path}: expected 60 step lines, got {len(steps)}")
got = [r["step"] for r in steps]
if got != list(range(1, 61)):
    sys.exit(f"{path}: steps are not 1..60 in increasing order: {got}")
for r in steps:
    for key in ("loss", "nll", "lr", "grad_norm"):
        v = r.get(key)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            sys.exit(f"{path}: step {r['step']}: {key} is not a finite number: {v!r}")
first = sum(r["loss"] for r in steps[:10]) / 10
last = sum(r["loss"] for r in steps[-10:]) / 10
if not last < first:
    sys.exit(f"{path}: loss did not decrease: mean of steps 1-10 {first:.4f}, of 51-60 {last:.4f}")
PY

# --- the checkpoint: safetensors header lists embed.weight [vocab, d_model] F32 ------------------
[ -f "$T/w.safetensors" ] || fail "$T/w.safetensors was not written"
py - "$T/w.safetensors" 32 64 <<'PY' || fail "safetensors check failed (see above)"
import json, struct, sys
path, vocab, d_model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
        sys.exit(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw)
    header = json.loads(f.read(n))
e = header.get("embed.weight")
if e is None:
    sys.exit(f"{path}: no tensor 'embed.weight'; tensors: {sorted(k for k in header if k != '__metadata__')}")
if e.get("dtype") != "F32" or e.get("shape") != [vocab, d_model]:
    sys.exit(f"{path}: embed.weight is {e.get('dtype')} {e.get('shape')}, expected F32 {[vocab, d_model]}")
PY

# --- eval on a small pairs file --------------------------------------------------------------------
# Targets with and without explicit BOS/EOS; the loss counts every target token after BOS.
printf '5 6 7 2\t1 7 6 5 2\n8 9 10 11\t11 10 9 8\n12 13 14 15 16 2\t1 16 15 14 13 12\n4 5\t5 4 2\n' \
  >"$T/p.pairs"
want_tokens=$(target_tokens "$T/p.pairs")
[ "$want_tokens" -eq 18 ] || fail "internal: expected 18 target tokens in p.pairs, counted $want_tokens"

check_eval_line() {  # FILE: one JSON line {tokens, nll, loss} with tokens == $want_tokens, nll > 0
  py - "$1" "$want_tokens" <<'PY' || fail "eval output check failed (see above)"
import json, math, sys
path, want = sys.argv[1], int(sys.argv[2])
lines = open(path).read().splitlines()
if len(lines) != 1:
    sys.exit(f"eval printed {len(lines)} lines, expected one JSON line: {lines!r}")
rec = json.loads(lines[0])
if sorted(rec) != ["loss", "nll", "tokens"]:
    sys.exit(f"eval JSON keys are {sorted(rec)}, expected loss, nll, tokens: {lines[0]}")
if rec["tokens"] != want:
    sys.exit(f"eval tokens = {rec['tokens']}, expected {want} (target tokens without BOS): {lines[0]}")
for key in ("nll", "loss"):
    if not isinstance(rec[key], (int, float)) or not math.isfinite(rec[key]) or rec[key] <= 0:
        sys.exit(f"eval {key} = {rec[key]!r}, expected a finite number > 0: {lines[0]}")
PY
}

run_ok eval1 "$MH" eval --weights "$T/w.safetensors" --pairs "$T/p.pairs"
check_eval_line "$T/eval1.out"
[ ! -s "$T/eval1.err" ] || fail "eval wrote to stderr: $(cat "$T/eval1.err")"

# Determinism: the same weights on the same pairs give byte-identical output.
run_ok eval2 "$MH" eval --weights "$T/w.safetensors" --pairs "$T/p.pairs"
cmp -s "$T/eval1.out" "$T/eval2.out" ||
  fail "eval of the same weights twice differs: '$(cat "$T/eval1.out")' vs '$(cat "$T/eval2.out")'"

# The run's saved config is equivalent to the embedded default for eval.
run_ok eval_cfg "$MH" eval --config "$T/run/config.yaml" --weights "$T/w.safetensors" --pairs "$T/p.pairs"
cmp -s "$T/eval1.out" "$T/eval_cfg.out" ||
  fail "eval with --config run/config.yaml differs: '$(cat "$T/eval1.out")' vs '$(cat "$T/eval_cfg.out")'"

# Reload: train 0 steps from the checkpoint (train.init_from) and save again; the re-saved
# weights must evaluate exactly as the original.
run_ok reload "$MH" train --set train.steps=0 --set "train.init_from=$T/w.safetensors" \
  --set "train.out_dir=$T/run0" --set "train.save=$T/w0.safetensors" --set data.toy_valid_size=0
[ -f "$T/w0.safetensors" ] || fail "train with train.steps=0 did not write $T/w0.safetensors"
run_ok eval_reload "$MH" eval --weights "$T/w0.safetensors" --pairs "$T/p.pairs"
cmp -s "$T/eval1.out" "$T/eval_reload.out" ||
  fail "weights re-saved via train.init_from evaluate differently: '$(cat "$T/eval1.out")' vs '$(cat "$T/eval_reload.out")'"

echo "PASS train_eval_roundtrip: $(cat "$T/eval1.out")"
