#!/usr/bin/env bash
# Data-parallel weak scaling on this machine: the small config (configs/bench-small.yaml) with the
# same per-rank batch (64 x 32/32 tokens) on 1 rank x 1 thread and on N ranks x 1 thread, with
# gradient all-reduce overlapped with backward (parallel.overlap true) and not (false).
# Prints a Markdown table for docs/perf/ddp.md.
# Usage: tools/bench/ddp_scaling.sh [build/multihead] [ranks=2] [steps=10]
set -euo pipefail
cd "$(dirname "$0")/../.."
mh=${1:-build/multihead}
ranks=${2:-2}
steps=${3:-10}
[ -x "$mh" ] || { echo "ddp_scaling.sh: $mh not built" >&2; exit 2; }
root=(); [ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
over=(); [ "$ranks" -gt "$(nproc)" ] && over=(--oversubscribe)
bench=(bench train --config configs/bench-small.yaml --threads 1 --steps "$steps" --warmup 2 --json)
field() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p"; }

one=$(OPENBLAS_NUM_THREADS=1 "$mh" "${bench[@]}")
many=$(mpirun "${root[@]}" "${over[@]}" -np "$ranks" -x OPENBLAS_NUM_THREADS=1 "$mh" "${bench[@]}")
many_off=$(mpirun "${root[@]}" "${over[@]}" -np "$ranks" -x OPENBLAS_NUM_THREADS=1 "$mh" "${bench[@]}" --set parallel.overlap=false)

t1=$(echo "$one" | field tokens_per_s)
echo "$(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load average before: $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| ranks x threads | overlap | ms/step | compute ms | all-reduce ms | exposed ms (% of step) | tokens/s | weak-scaling efficiency |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
row() {  # label overlap json n
  local ms c a e t
  ms=$(echo "$3" | field step_ms); c=$(echo "$3" | field compute_ms); a=$(echo "$3" | field comm_ms)
  e=$(echo "$3" | field exposed_comm_ms); t=$(echo "$3" | field tokens_per_s)
  printf '| %s | %s | %.0f | %.0f | %.1f | %.1f (%.1f%%) | %.0f | %.1f%% |\n' "$1" "$2" "$ms" "$c" "$a" \
    "$e" "$(echo "100 * $e / $ms" | bc -l)" "$t" "$(echo "100 * $t / ($4 * $t1)" | bc -l)"
}
row "1 x 1" "-" "$one" 1
row "$ranks x 1" "on" "$many" "$ranks"
row "$ranks x 1" "off" "$many_off" "$ranks"
