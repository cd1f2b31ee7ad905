#!/usr/bin/env bash
# Launch a data-parallel multihead job with mpirun, choosing ranks, threads and binding for you.
#
#   launch/mpirun.sh -np 2 -- train --config configs/toy.yaml --set train.steps=500
#   launch/mpirun.sh --hostfile hosts.txt -- train --config configs/paper-base.yaml
#   launch/mpirun.sh -np 4 --threads 1 --dry-run train       # print the mpirun command only
#
# Run `launch/mpirun.sh --help` for the options. What it picks:
#   ranks per node   one per GPU when nvidia-smi lists GPUs; on CPUs, one per NUMA node (or per
#                    socket, whichever is more): ranks then never share a memory controller.
#   ranks (-np)      given, or ranks per node × the nodes of the hostfile (1 node without one).
#   threads per rank physical cores of the node / ranks on the node (at least 1), or --threads;
#                    exported as OMP_NUM_THREADS and OPENBLAS_NUM_THREADS (forwarded with -x) and
#                    passed to `multihead train` as --set train.threads=T.
#   binding          --bind-to core --map-by slot:PE=T (each rank pinned to its own T cores) when
#                    ranks × T fit the cores; otherwise --bind-to none --oversubscribe.
# Environment: MULTIHEAD (the executable; default: build/multihead next to this script's
# directory), MPIRUN (default: mpirun), MH_MPIRUN_ARGS (extra mpirun options, word-split).
set -euo pipefail

prog=launch/mpirun.sh
die() {
  echo "$prog: error: $*" >&2
  exit 2
}

usage() {
  cat <<'EOF'
usage: launch/mpirun.sh [-np N] [--hostfile FILE] [--threads T] [--dry-run] [--] COMMAND [ARGS...]

Runs `multihead COMMAND ARGS...` on N MPI ranks (data parallelism), e.g.
  launch/mpirun.sh -np 2 -- train --config configs/toy.yaml --set train.steps=500

options:
  -np N, -n N        number of ranks (default: ranks per node × nodes; ranks per node is the
                     number of GPUs, else the number of NUMA nodes or sockets)
  --hostfile FILE    multi-node: an Open MPI hostfile ("node1 slots=8" per line); every node
                     needs the same build at the same path (a shared file system)
  --threads T        BLAS/OpenMP threads per rank (default: physical cores per node / ranks on
                     the node, at least 1)
  --dry-run          print the mpirun command (with its environment) and exit
  -h, --help         this help

Arguments after the options (with or without `--`) go to multihead. For `train`, the launcher
adds `--set train.threads=T` right after `train`; a `--set train.threads=X` of yours wins and
becomes T.

environment:
  MULTIHEAD          the multihead executable (default: build/multihead beside launch/)
  MPIRUN             the mpirun to use (default: mpirun)
  MH_MPIRUN_ARGS     extra mpirun options, e.g. "--mca btl_tcp_if_include eth0"
EOF
}

# --- arguments --------------------------------------------------------------------------------
np="" hostfile="" threads="" dry_run=0
args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -np | -n | --np)
      [ "$#" -ge 2 ] || die "$1 needs a value"
      np=$2
      shift 2
      ;;
    -np=* | --np=*) np=${1#*=}; shift ;;
    --hostfile | -hostfile | --machinefile)
      [ "$#" -ge 2 ] || die "$1 needs a value"
      hostfile=$2
      shift 2
      ;;
    --hostfile=*) hostfile=${1#*=}; shift ;;
    --threads)
      [ "$#" -ge 2 ] || die "$1 needs a value"
      threads=$2
      shift 2
      ;;
    --threads=*) threads=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; args=("$@"); break ;;
    -*) die "unknown option '$1' (multihead's own options go after the command, e.g. '-- train --config C'; see --help)" ;;
    *) args=("$@"); break ;;  # the multihead command starts here (no `--`)
  esac
done
[ "${#args[@]}" -gt 0 ] || die "missing the multihead command, e.g. '-- train --config configs/toy.yaml' (see --help)"
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
[ -z "$np" ] || is_count "$np" || die "-np: expected a positive integer, got '$np'"
[ -z "$threads" ] || is_count "$threads" || die "--threads: expected a positive integer, got '$threads'"
if [ -n "$hostfile" ]; then
  [ -r "$hostfile" ] || die "--hostfile '$hostfile': cannot read file"
fi

# A `--set train.threads=X` of the user's fixes the threads per rank, unless --threads also did.
user_threads=""
for ((i = 0; i < ${#args[@]}; i++)); do
  a=${args[i]}
  [ "$a" = --set ] && [ $((i + 1)) -lt ${#args[@]} ] && a=${args[i + 1]}
  case "$a" in
    train.threads=* | --set=train.threads=*) user_threads=${a##*=} ;;
  esac
done
if [ -n "$user_threads" ]; then
  if [ -z "$threads" ]; then
    is_count "$user_threads" || die "train.threads=$user_threads: give a positive count (or use --threads)"
    threads=$user_threads
  elif [ "$threads" != "$user_threads" ]; then
    die "--threads $threads disagrees with --set train.threads=$user_threads"
  fi
fi

# --- the executable ---------------------------------------------------------------------------
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exe=${MULTIHEAD:-$here/../build/multihead}
exe=$(realpath -m -- "$exe" 2>/dev/null || echo "$exe")  # absolute: the same on every node
if [ ! -x "$exe" ] && [ "$dry_run" = 0 ]; then
  die "$exe: no multihead executable (build it: ./run.sh, or cmake -S . -B build -G Ninja && ninja -C build; or set MULTIHEAD)"
fi
mpirun=${MPIRUN:-mpirun}
command -v "$mpirun" >/dev/null 2>&1 || [ "$dry_run" = 1 ] ||
  die "$mpirun: not found (install Open MPI, e.g. apt-get install openmpi-bin, or set MPIRUN)"

# --- this node's hardware (assumed the same on every node of a hostfile) ----------------------
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
# Physical cores (not hyperthreads: two BLAS threads on one core only compete), sockets and
# NUMA nodes from lscpu's parsable output; nproc where lscpu is missing.
cores=0 sockets=1 numa=1
if command -v lscpu >/dev/null 2>&1; then
  topo=$(lscpu -p=CORE,SOCKET,NODE 2>/dev/null | grep -v '^#' || true)
  if [ -n "$topo" ]; then
    cores=$(cut -d, -f1,2 <<<"$topo" | sort -u | wc -l)
    sockets=$(cut -d, -f2 <<<"$topo" | sort -u | wc -l)
    numa=$(cut -d, -f3 <<<"$topo" | grep -v '^$' | sort -u | wc -l)
  fi
fi
[ "$numa" -ge 1 ] || numa=1
# A container or cgroup may give this process fewer CPUs than the machine has.
avail=$(nproc 2>/dev/null || echo 1)
if [ "$cores" -lt 1 ] || [ "$avail" -lt "$cores" ]; then cores=$avail; fi

if [ "$gpus" -gt 0 ]; then
  per_node=$gpus  # one rank per GPU (World: device = local rank % GPUs)
else
  per_node=$((numa > sockets ? numa : sockets))
fi

nodes=1
if [ -n "$hostfile" ]; then
  nodes=$(sed -e 's/#.*//' "$hostfile" | awk 'NF { print $1 }' | sort -u | wc -l)
  [ "$nodes" -ge 1 ] || die "--hostfile '$hostfile': no hosts in it"
fi
if [ -z "$np" ]; then
  np=$((per_node * nodes))
else
  per_node=$(((np + nodes - 1) / nodes))  # the ranks land on every node evenly
fi
if [ -z "$threads" ]; then
  threads=$((cores / per_node))
  [ "$threads" -ge 1 ] || threads=1
fi

# --- the mpirun command -----------------------------------------------------------------------
cmd=("$mpirun" -np "$np")
[ -z "$hostfile" ] || cmd+=(--hostfile "$hostfile")
# Open MPI refuses to start as root unless told; containers often run as root.
[ "$(id -u)" != 0 ] || cmd+=(--allow-run-as-root)
if [ $((per_node * threads)) -le "$cores" ]; then
  # Enough cores: each rank gets T cores of its own (PE=T) and its BLAS threads stay on them,
  # so ranks never steal each other's cores or migrate across sockets. With a hostfile, ppr
  # places exactly per_node ranks on each node whatever its slots= say.
  if [ -n "$hostfile" ]; then
    cmd+=(--map-by "ppr:$per_node:node:PE=$threads" --bind-to core)
  else
    cmd+=(--map-by "slot:PE=$threads" --bind-to core)
  fi
else
  # More ranks × threads than cores (e.g. testing 4 ranks on a 2-core machine): binding would
  # pile ranks onto the same cores, or Open MPI refuses to map them at all. Let the kernel
  # schedule them (--bind-to none) and allow more ranks than slots (--oversubscribe). Slower,
  # but correct; Open MPI also switches its progress to yielding when oversubscribed.
  if [ -n "$hostfile" ]; then
    cmd+=(--map-by "ppr:$per_node:node")
  fi
  cmd+=(--bind-to none --oversubscribe)
fi
# No --tag-output: only rank 0 prints to the terminal (the others write
# train.out_dir/logs/rankN.log), so its lines need no "[1,0]<stdout>:" prefixes, and error lines
# already name their rank.
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
cmd+=(-x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)
# multihead re-executes itself with OPENBLAS_CORETYPE on CPUs OpenBLAS does not know; a value
# the user set is forwarded to the other nodes as well.
[ -z "${OPENBLAS_CORETYPE:-}" ] || cmd+=(-x OPENBLAS_CORETYPE)
if [ -n "${MH_MPIRUN_ARGS:-}" ]; then
  read -r -a extra <<<"$MH_MPIRUN_ARGS"
  cmd+=("${extra[@]}")
fi
cmd+=("$exe" "${args[0]}")
if [ "${args[0]}" = train ] && [ -z "$user_threads" ]; then
  cmd+=(--set "train.threads=$threads")
fi
cmd+=("${args[@]:1}")

summary="$np rank(s)"
[ -z "$hostfile" ] || summary+=" on $nodes node(s), $per_node per node"
summary+=", $threads thread(s) each"
[ "$gpus" = 0 ] || summary+=", one per GPU ($gpus GPUs)"
if [ "$dry_run" = 1 ]; then
  echo "# $summary ($cores cores, $sockets socket(s), $numa NUMA node(s) per node)"
  printf 'OMP_NUM_THREADS=%s OPENBLAS_NUM_THREADS=%s' "$threads" "$threads"
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi
echo "$prog: $summary" >&2
exec "${cmd[@]}"
