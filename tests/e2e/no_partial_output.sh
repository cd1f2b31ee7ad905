#!/usr/bin/env bash
# e2e.no_partial_output: `multihead train` that fails on bad input leaves nothing behind: no
# train.out_dir when the data or init checkpoint cannot be read (src/train/train_run.cpp validates
# before writing), and no half-written or *.tmp checkpoint when train.save cannot be written.
#   no_partial_output.sh MULTIHEAD [WORKDIR]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
e2e_init no_partial_output "$@"

E="multihead: error:"

assert_no_out_dir() {  # LABEL DIR
  [ ! -e "$2" ] || fail "$1: train failed but left $2 behind: $(ls -A "$2" | tr '\n' ' ')"
}

# Missing training pairs file: exit 2 before out_dir is created.
expect_error 2 "$E $T/missing.pairs: cannot read file" missing_train_pairs \
  "$MH" train --set "train.out_dir=$T/out" --set data.task=pairs --set "data.train_pairs=$T/missing.pairs"
assert_no_out_dir missing_train_pairs "$T/out"

# A bad line in the training pairs file, and a missing validation pairs file: the same.
printf '5 6 7\t7 6 5\n5 6 7 7 6 5\n' >"$T/bad.pairs"
expect_error 2 "$E $T/bad.pairs:2: " bad_train_pairs \
  "$MH" train --set "train.out_dir=$T/out" --set data.task=pairs --set "data.train_pairs=$T/bad.pairs"
assert_no_out_dir bad_train_pairs "$T/out"

printf '5 6 7\t7 6 5\n' >"$T/good.pairs"
expect_error 2 "$E $T/missing_valid.pairs: cannot read file" missing_valid_pairs \
  "$MH" train --set "train.out_dir=$T/out" --set data.task=pairs --set "data.train_pairs=$T/good.pairs" \
  --set "data.valid_pairs=$T/missing_valid.pairs"
assert_no_out_dir missing_valid_pairs "$T/out"

# A missing train.init_from checkpoint: the same.
expect_error 2 "$E $T/missing.safetensors: cannot read file" missing_init_from \
  "$MH" train --set "train.out_dir=$T/out" --set "train.init_from=$T/missing.safetensors"
assert_no_out_dir missing_init_from "$T/out"

# train.save into a directory that does not exist: exit 2 with a message naming the path, no
# checkpoint, no *.tmp left behind, and the directory not created.
# The save path is checked before training starts, so nothing is written at all.
expect_error 2 "$E train.save '$T/nodir/w.safetensors': directory" save_nodir \
  "$MH" train --set "train.out_dir=$T/out_save" --set "train.save=$T/nodir/w.safetensors" \
  --set train.steps=2 --set data.toy_valid_size=0
[ ! -e "$T/nodir" ] || fail "save_nodir: train created $T/nodir"
[ ! -e "$T/out_save" ] || fail "save_nodir: train created its out_dir before failing"
leftovers=$(find "$T" -name '*.tmp')
[ -z "$leftovers" ] || fail "save_nodir: temporary files left behind: $leftovers"

# train.save naming an existing directory: exit 2, no *.tmp left behind.
mkdir "$T/isdir"
expect_error 2 "$E train.save '$T/isdir': is a directory" save_isdir \
  "$MH" train --set "train.out_dir=$T/out_save" --set "train.save=$T/isdir" \
  --set train.steps=1 --set data.toy_valid_size=0
leftovers=$(find "$T" -name '*.tmp')
[ -z "$leftovers" ] || fail "save_isdir: temporary files left behind: $leftovers"

echo "PASS no_partial_output"
