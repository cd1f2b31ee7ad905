#!/usr/bin/env bash
# Data-parallel weak scaling on this machine: the small config (configs/bench-small.yaml) with the
# same per-rank batch (64 x 32/32 tokens) on 1 rank x 1 thread and on N ranks x 1 thread, with
# gradient all-reduce overlapped with backward (parallel.overlap true) and not (false).
#
# Two things make a single measurement misleading on a small shared machine, so this runs every
# configuration `reps` times, interleaved (one of each per round, so a slow spell of the host hits
# all of them), and reports the median of each column:
#   - run-to-run noise of +-10% or more, which moves the 1-rank baseline as much as the result;
#   - the cores slowing each other down (shared caches, memory bandwidth, the host's scheduling of
#     virtual CPUs), which no data-parallel implementation can avoid. The row "N independent"
#     measures it: N single-rank processes pinned to N cores at the same time, without MPI and
#     without any communication. Its tokens/s is the ceiling for N ranks here; the last column
#     compares the data-parallel rows with it.
# The efficiencies are medians of per-round ratios (each round's N-rank tokens/s over N x that
# round's 1-rank tokens/s), the other columns medians of the rounds. "progress-thread CPU ms" is
# the CPU time per step of the MPI progress threads (bench train's progress_cpu_ms), which on a
# CPU is taken from the compute thread on the same core: the price of overlapping.
# Prints a Markdown table for docs/perf/ddp.md.
# Usage: tools/bench/ddp_scaling.sh [build/multihead] [ranks=2] [steps=10] [reps=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
mh=${1:-build/multihead}
ranks=${2:-2}
steps=${3:-10}
reps=${4:-3}
[ -x "$mh" ] || { echo "ddp_scaling.sh: $mh not built" >&2; exit 2; }
[[ "$ranks" =~ ^[1-9][0-9]*$ && "$steps" =~ ^[1-9][0-9]*$ && "$reps" =~ ^[1-9][0-9]*$ ]] ||
  { echo "ddp_scaling.sh: ranks, steps and reps must be positive integers" >&2; exit 2; }
root=(); [ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
over=(); [ "$ranks" -gt "$(nproc)" ] && over=(--oversubscribe)
bench=(bench train --config configs/bench-small.yaml --threads 1 --steps "$steps" --warmup 2 --json)
export OPENBLAS_NUM_THREADS=1
pin() { if command -v taskset >/dev/null && [ "$1" -lt "$(nproc)" ]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
field() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
load_before=$(cut -d' ' -f1 /proc/loadavg)

# Per configuration, one line per round:
#   step_ms compute_ms comm_ms exposed_ms tokens_per_s progress_cpu_ms
record() {  # name json...
  local name=$1; shift
  local ms=0 c=0 a=0 e=0 t=0 p=0 j
  for j in "$@"; do  # several jsons (independent processes): mean times, summed tokens/s
    ms=$(echo "$ms + $(echo "$j" | field step_ms)" | bc -l)
    c=$(echo "$c + $(echo "$j" | field compute_ms)" | bc -l)
    a=$(echo "$a + $(echo "$j" | field comm_ms)" | bc -l)
    e=$(echo "$e + $(echo "$j" | field exposed_comm_ms)" | bc -l)
    t=$(echo "$t + $(echo "$j" | field tokens_per_s)" | bc -l)
    p=$(echo "$p + $(echo "$j" | field progress_cpu_ms)" | bc -l)
  done
  echo "$(echo "$ms / $#; $c / $#; $a / $#; $e / $#; $t; $p / $#" | bc -l | tr '\n' ' ')" >> "$tmp/$name"
}
for ((r = 1; r <= reps; ++r)); do
  echo "ddp_scaling.sh: round $r of $reps" >&2
  record solo "$(pin 0 "$mh" "${bench[@]}")"
  pids=()
  for ((i = 0; i < ranks; ++i)); do pin "$i" "$mh" "${bench[@]}" > "$tmp/indep.$i" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  jsons=(); for ((i = 0; i < ranks; ++i)); do jsons+=("$(cat "$tmp/indep.$i")"); done
  record indep "${jsons[@]}"
  record on "$(mpirun "${root[@]}" "${over[@]}" -np "$ranks" -x OPENBLAS_NUM_THREADS "$mh" "${bench[@]}")"
  record off "$(mpirun "${root[@]}" "${over[@]}" -np "$ranks" -x OPENBLAS_NUM_THREADS "$mh" "${bench[@]}" --set parallel.overlap=false)"
done

# Median of column $2 (1-based) of file $1.
median() { awk -v c="$2" '{print $c}' "$tmp/$1" | med; }
# Median of the numbers on stdin.
med() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
# Median over rounds of 100 x tokens/s of $1 / ($3 x tokens/s of $2) in the same round: the rounds
# are interleaved, so a slow spell of the host hits both sides of each ratio.
ratio() { paste -d' ' "$tmp/$1" "$tmp/$2" | awk -v n="$3" '{k = NF / 2; print 100 * $5 / (n * $(k + 5))}' | med; }
echo "$(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load average before: $load_before; median of $reps interleaved rounds of $steps steps"
echo
echo "| ranks x threads | overlap | ms/step | compute ms | all-reduce ms | exposed ms (% of step) | progress-thread CPU ms | tokens/s | weak-scaling efficiency | vs $ranks independent |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
row() {  # label overlap name n
  local ms c a e t p
  ms=$(median "$3" 1); c=$(median "$3" 2); a=$(median "$3" 3); e=$(median "$3" 4); t=$(median "$3" 5)
  p=$(median "$3" 6)
  printf '| %s | %s | %.0f | %.0f | %.1f | %.1f (%.1f%%) | %.1f | %.0f | %.1f%% | %s |\n' "$1" "$2" "$ms" "$c" \
    "$a" "$e" "$(echo "100 * $e / $ms" | bc -l)" "$p" "$t" "$(ratio "$3" solo "$4")" \
    "$([ "$3" = solo ] && echo - || printf '%.1f%%' "$(ratio "$3" indep 1)")"
}
row "1 x 1" "-" solo 1
row "$ranks independent, no MPI" "-" indep "$ranks"
row "$ranks x 1" "on" on "$ranks"
row "$ranks x 1" "off" off "$ranks"
echo
echo "Per round (tokens/s): 1 x 1: $(awk '{printf "%.0f ", $5}' "$tmp/solo")| independent: $(awk '{printf "%.0f ", $5}' "$tmp/indep")| on: $(awk '{printf "%.0f ", $5}' "$tmp/on")| off: $(awk '{printf "%.0f ", $5}' "$tmp/off")"
