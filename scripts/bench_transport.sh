#!/usr/bin/env bash
# Stage-hop round trips through each transport on this machine (docs/perf.md, "Transport hop"):
# rwkvpp_hop_bench on 2 ranks, one message each way per round trip, at hidden-vector sizes
# (2560 fp32 = 10 KiB: 1, 32 and 256 rows), for
#   ucx        the UCX transport, ranks as plain processes (RWKVPP_TRANSPORT=ucx), peer errors on
#   ucx-none   the same with RWKVPP_UCX_ERRORS=none (UCX 1.13 then also uses shared memory)
#   mpi-ob1    the MPI transport under mpirun, Open MPI's ob1 PML (shared memory: vader)
#   mpi-ucx    the MPI transport under mpirun with Open MPI's UCX PML
# Configurations alternate within each round, so that a noisy machine hits them alike; compare
# ratios within one run. Each rank pair runs at the default spin (200 us, then sleeps) and at a
# GPU rank's 50 ms spin.
#
#   scripts/bench_transport.sh [BUILD_DIR] [ROUNDS] [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rounds=${2:-3}
iters=${3:-2000}
bench=$build/tests/rwkvpp_hop_bench
[ -x "$bench" ] || { echo "no $bench: build the tests first" >&2; exit 1; }
sizes=10240,327680,2621440
mpirun=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2)
ucx_pml=(--mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any)

# Two UCX ranks as plain processes; rank 0's lines on stdout.
ucx_pair() {
  local port=$((20000 + RANDOM % 20000)) out
  out=$(mktemp)
  RWKVPP_TRANSPORT=ucx RWKVPP_RANK=1 RWKVPP_SIZE=2 RWKVPP_RENDEZVOUS=127.0.0.1:$port \
    timeout 600 "$bench" "$@" >/dev/null &
  local peer=$!
  RWKVPP_TRANSPORT=ucx RWKVPP_RANK=0 RWKVPP_SIZE=2 RWKVPP_RENDEZVOUS=127.0.0.1:$port \
    timeout 600 "$bench" "$@" >"$out" || { kill "$peer" 2>/dev/null; rm -f "$out"; return 1; }
  wait "$peer"
  cat "$out"
  rm -f "$out"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
for round in $(seq 1 "$rounds"); do
  for spin in 200 50000; do
    args=(--bytes $sizes --iters "$iters" --warmup 200 --spin-us $spin)
    ucx_pair "${args[@]}" | sed "s/^/round=$round ucx /"
    RWKVPP_UCX_ERRORS=none ucx_pair "${args[@]}" | sed "s/^/round=$round ucx-none /"
    "${mpirun[@]}" "$bench" "${args[@]}" | sed "s/^/round=$round mpi-ob1 /"
    "${mpirun[@]}" "${ucx_pml[@]}" "$bench" "${args[@]}" | sed "s/^/round=$round mpi-ucx /"
  done
done
