#!/usr/bin/env bash
# e2e.bad_pairs: `multihead eval` on bad input (pairs files, missing files, weights of another
# model shape) exits 2 with one stderr line naming the file (and the line, for pairs errors), and
# prints no JSON line on stdout.
#   bad_pairs.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init bad_pairs "$@"

E="multihead: error:"

# Weights of the default (toy) model and of a narrower one: 1 step each, no held-out decoding.
run_ok train64 "$MH" train --set train.steps=1 --set "train.out_dir=$T/run64" \
  --set "train.save=$T/w.safetensors" --set data.toy_valid_size=0
run_ok train32 "$MH" train --set train.steps=1 --set model.d_model=32 --set model.heads=4 \
  --set "train.out_dir=$T/run32" --set "train.save=$T/w32.safetensors" --set data.toy_valid_size=0
[ -f "$T/w.safetensors" ] && [ -f "$T/w32.safetensors" ] || fail "train did not save the weights"

# A good pairs file first, so that the failures below are the bad input's and nothing else's.
printf '5 6 7 2\t1 7 6 5 2\n8 9 10\t10 9 8\n' >"$T/good.pairs"
run_ok good "$MH" eval --weights "$T/w.safetensors" --pairs "$T/good.pairs"

# Each bad pairs file has its fault on line 2 (line 1 is good), so the line number is checked.
good_line=$'5 6 7 2\t1 7 6 5 2'
printf '%s\n%s\n' "$good_line" $'8 9 10\t10 32 8' >"$T/vocab.pairs"  # 32 == toy vocab_size
expect_error 2 "$E $T/vocab.pairs:2: token id 32 >= model.vocab_size (32)" vocab \
  "$MH" eval --weights "$T/w.safetensors" --pairs "$T/vocab.pairs"

printf '%s\n%s\n' "$good_line" '8 9 10 10 9 8' >"$T/notab.pairs"
expect_error 2 "$E $T/notab.pairs:2: " notab \
  "$MH" eval --weights "$T/w.safetensors" --pairs "$T/notab.pairs"
grep -qi 'tab' "$T/notab.err" || fail "notab: the message does not mention the missing tab: $(cat "$T/notab.err")"

printf '%s\n%s\n' "$good_line" $'8 x 10\t10 9 8' >"$T/nonint.pairs"
expect_error 2 "$E $T/nonint.pairs:2: " nonint \
  "$MH" eval --weights "$T/w.safetensors" --pairs "$T/nonint.pairs"
grep -qF "'x'" "$T/nonint.err" || fail "nonint: the message does not quote the bad token 'x': $(cat "$T/nonint.err")"

printf '%s\n%s\n' "$good_line" $'8 9 10\t10 9.5 8' >"$T/float.pairs"
expect_error 2 "$E $T/float.pairs:2: " float \
  "$MH" eval --weights "$T/w.safetensors" --pairs "$T/float.pairs"

# Missing files.
expect_error 2 "$E $T/missing.pairs: cannot read file" missing_pairs \
  "$MH" eval --weights "$T/w.safetensors" --pairs "$T/missing.pairs"
expect_error 2 "$E $T/missing.safetensors: cannot read file" missing_weights \
  "$MH" eval --weights "$T/missing.safetensors" --pairs "$T/good.pairs"

# Weights of another model shape (d_model 32) evaluated with the default config (d_model 64).
expect_error 2 "$E $T/w32.safetensors: " other_shape \
  "$MH" eval --weights "$T/w32.safetensors" --pairs "$T/good.pairs"
grep -qF 'shape' "$T/other_shape.err" ||
  fail "other_shape: the message does not mention the shape mismatch: $(cat "$T/other_shape.err")"

# Not a safetensors file at all (a pairs file given as weights).
expect_error 2 "$E $T/good.pairs: " not_safetensors \
  "$MH" eval --weights "$T/good.pairs" --pairs "$T/good.pairs"

echo "PASS bad_pairs"
