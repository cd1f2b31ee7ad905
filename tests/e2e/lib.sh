# Shared helpers of the end-to-end tests (tests/e2e/*.sh, registered by tests/e2e.cmake).
# Sourced, not run. A test script calls:
#   e2e_init NAME "$@"     parses "MULTIHEAD [WORKDIR]", sets $MH (the executable) and $T (a fresh
#                          directory: WORKDIR if given, else mktemp -d), removed on exit unless
#                          MH_E2E_KEEP=1 (then its path is printed on failure).
#   fail MESSAGE...        prints "FAIL <name>: MESSAGE" on stderr and exits 1.
#   run_ok LABEL CMD...    runs CMD with stdout/stderr captured to $T/LABEL.out / $T/LABEL.err;
#                          fails (showing both) unless it exits 0.
#   expect_error CODE PATTERN LABEL CMD...
#                          runs CMD like run_ok and checks how it ended: exit CODE, exactly one line
#                          on stderr containing PATTERN (a fixed string), and nothing on stdout.
#                          Use expect_error_any_stdout where a command legitimately prints before
#                          failing (e.g. train's progress lines).
#   py                     the Python 3 interpreter ($MH_PYTHON, else python3).

e2e_init() {
  E2E_NAME=$1
  shift
  if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
    echo "usage: $E2E_NAME.sh MULTIHEAD [WORKDIR]" >&2
    exit 64
  fi
  MH=$1
  [ -x "$MH" ] || { echo "FAIL $E2E_NAME: $MH is not an executable" >&2; exit 1; }
  if [ "$#" -eq 2 ]; then
    T=$2
    mkdir -p "$T"
    if [ -n "$(ls -A "$T")" ]; then
      echo "FAIL $E2E_NAME: work directory $T is not empty" >&2
      exit 1
    fi
  else
    T=$(mktemp -d "${TMPDIR:-/tmp}/mh-e2e-$E2E_NAME.XXXXXX")
  fi
  T=$(cd "$T" && pwd)
  trap e2e_cleanup EXIT
}

e2e_cleanup() {
  local rc=$?
  if [ "${MH_E2E_KEEP:-0}" = 1 ]; then
    echo "(kept work directory $T)" >&2
  else
    rm -rf "$T"
  fi
  exit "$rc"
}

fail() {
  echo "FAIL $E2E_NAME: $*" >&2
  exit 1
}

py() {
  "${MH_PYTHON:-python3}" "$@"
}

show_output() {  # LABEL
  echo "--- stdout ($1):" >&2
  tail -n 40 "$T/$1.out" >&2
  echo "--- stderr ($1):" >&2
  cat "$T/$1.err" >&2
}

run_ok() {
  local label=$1
  shift
  local rc=0
  "$@" >"$T/$label.out" 2>"$T/$label.err" || rc=$?
  if [ "$rc" != 0 ]; then
    show_output "$label"
    fail "$label: exit code $rc, expected 0: $*"
  fi
}

_expect_error() {
  local check_stdout=$1 want=$2 pattern=$3 label=$4
  shift 4
  local rc=0 problems=""
  "$@" >"$T/$label.out" 2>"$T/$label.err" || rc=$?
  [ "$rc" = "$want" ] || problems+="exit code $rc, expected $want; "
  [ "$(wc -l <"$T/$label.err")" -eq 1 ] ||
    problems+="stderr is $(wc -l <"$T/$label.err") lines, expected exactly one; "
  grep -qF -- "$pattern" "$T/$label.err" || problems+="stderr lacks '$pattern'; "
  if [ "$check_stdout" = 1 ] && [ -s "$T/$label.out" ]; then
    problems+="stdout is not empty; "
  fi
  if [ -n "$problems" ]; then
    show_output "$label"
    fail "$label: ${problems%; } (command: $*)"
  fi
}

expect_error() { _expect_error 1 "$@"; }
expect_error_any_stdout() { _expect_error 0 "$@"; }

# target_tokens FILE: target tokens of a pairs file as the model sees them minus BOS, i.e. the
# tokens the loss is computed on (pairs.h: BOS prepended / EOS appended where missing).
target_tokens() {
  awk -F'\t' -v bos="${2:-1}" -v eos="${3:-2}" '
    { n = split($2, t, " "); m = n + (t[1] != bos); if (t[n] != eos || m == 1) m++; total += m - 1 }
    END { print total + 0 }' "$1"
}
