#!/bin/sh
# Runs a command and checks how it ended, for the CLI tests (tests/cli.cmake).
#   expect_exit.sh CODE PATTERN COMMAND [ARGS...]
# Passes when COMMAND exits with CODE and its stderr contains PATTERN (a fixed string; "" matches
# anything). For a nonzero CODE, stderr must also be exactly one line: errors are one line.
set -u
if [ "$#" -lt 3 ]; then
  echo "usage: expect_exit.sh CODE PATTERN COMMAND [ARGS...]" >&2
  exit 64
fi
want=$1
pattern=$2
shift 2
err=$(mktemp)
trap 'rm -f "$err"' EXIT
"$@" 2>"$err"
got=$?
status=0
if [ "$got" != "$want" ]; then
  echo "FAIL: exit code $got, expected $want: $*" >&2
  status=1
fi
if [ -n "$pattern" ] && ! grep -qF -- "$pattern" "$err"; then
  echo "FAIL: stderr lacks: $pattern" >&2
  status=1
fi
if [ "$want" != 0 ] && [ "$(wc -l <"$err")" -ne 1 ]; then
  echo "FAIL: stderr is not one line" >&2
  status=1
fi
if [ "$status" != 0 ]; then
  echo "--- stderr:" >&2
  cat "$err" >&2
fi
exit "$status"
