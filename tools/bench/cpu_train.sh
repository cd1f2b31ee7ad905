#!/usr/bin/env bash
# Training throughput on the CPU, multihead beside PyTorch, one thread each, same model and batch
# (the small config: d_model 256, 4 heads, d_ff 1024, 3+3 layers, vocab 8000, 64 x 32/32 tokens).
# Prints a Markdown table for docs/perf/cpu.md. Rows:
#   multihead            as users run it (it picks OpenBLAS's AVX kernels itself, see
#                        src/backend/cpu/blas_kernels.h)
#   PyTorch              as users run it (Debian's torch on the same OpenBLAS, its own kernel choice)
#   PyTorch, same BLAS   PyTorch with OPENBLAS_CORETYPE set to the kernels multihead chose: the
#                        like-for-like comparison of everything but the GEMM kernels
# Usage: tools/bench/cpu_train.sh [build/multihead] [steps]
set -euo pipefail
cd "$(dirname "$0")/../.."
mh=${1:-build/multihead}
steps=${2:-10}
py=/usr/bin/python3
[ -x "$mh" ] || { echo "cpu_train.sh: $mh not built (run ./run.sh or cmake --build build)" >&2; exit 2; }

core=$("$mh" info | sed -n 's/.*(kernels: \([A-Za-z0-9]*\)).*/\1/p')
field() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p"; }

mh_json=$("$mh" bench train --config configs/bench-small.yaml --threads 1 --steps "$steps" --warmup 2 --json)
torch_json=$($py tools/bench/torch_peer.py --steps "$steps" --warmup-steps 2 --threads 1 --json 2>/dev/null | tail -1)
torch_same_json=$(OPENBLAS_CORETYPE=$core $py tools/bench/torch_peer.py --steps "$steps" --warmup-steps 2 --threads 1 --json 2>/dev/null | tail -1)

mh_tps=$(echo "$mh_json" | field tokens_per_s)
row() {  # name json
  local tps ms
  tps=$(echo "$2" | sed -n 's/.*"tokens_per_s": *\([0-9.]*\).*/\1/p')
  ms=$(echo "$2" | sed -n 's/.*"step_ms": *\([0-9.]*\).*/\1/p')
  printf '| %s | %.0f | %.0f | %.2f |\n' "$1" "$ms" "$tps" "$(echo "$mh_tps / $tps" | bc -l)"
}
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), 1 thread; OpenBLAS kernels chosen by multihead: $core; $(date -u +%Y-%m-%d)"
echo
echo "| implementation | ms/step | tokens/s (src+tgt) | multihead ÷ this |"
echo "| --- | ---: | ---: | ---: |"
row "multihead (CPU backend)" "$mh_json"
row "PyTorch $($py -c 'import torch; print(torch.__version__)') eager, as installed" "$torch_json"
row "PyTorch eager, OPENBLAS_CORETYPE=$core" "$torch_same_json"
