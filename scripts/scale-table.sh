#!/usr/bin/env bash
# The scaling table: one load run per cell of shards (1, 2, 4) × parallelization (1, 4) ×
# command-intake instances (1, 4), release build, same workload; prints a markdown table of
# accepted commands/s, command → view latency, the emulator's share of the CPU and the audit.
#
#   scripts/with-emulator.sh scripts/scale-table.sh [COMMANDS] [THINGS] [CLIENTS]
#
# SHARDS, PARALLELIZATION and INSTANCES (space-separated lists) pick a part of the table, e.g.
# `SHARDS=4 scripts/with-emulator.sh scripts/scale-table.sh` runs the four-shard rows only.
#
# Each cell is a fresh stack on the same emulator. Per-entity order is checked in every cell by
# the load run's audit (versions without gaps, every view as its commands imply).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
commands=${1:-160}
things=${2:-40}
clients=${3:-8}
cargo=${CARGO:-cargo}
"$cargo" build --quiet --release -p local-stack --manifest-path "$root/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$root/target}/release/local-stack"
logs="$root/target/scale-table"
mkdir -p "$logs"
echo "| shards | parallelization | intake instances | accepted/s | command → view p50 | p99 | emulator CPU | functions CPU | audit |"
echo "|---|---|---|---|---|---|---|---|---|"
for shards in ${SHARDS:-1 2 4}; do
  for pf in ${PARALLELIZATION:-1 4}; do
    for instances in ${INSTANCES:-1 4}; do
      log="$logs/s$shards-p$pf-i$instances.log"
      status=OK
      (cd "$root" && "$bin" load --release --commands "$commands" --things "$things" \
        --clients "$clients" --shards "$shards" --parallelization "$pf" \
        --instances "$instances" --wait 300) >"$log" 2>&1 || status=FAILED
      figures=$(grep -m1 'commands/s: sent' "$log" || true)
      latency=$(grep -m1 'its view: p50' "$log" || true)
      cpu=$(grep -m1 'CPU during the run' "$log" || true)
      accepted=$(sed -n 's/.*accepted \([0-9.]*\),.*/\1/p' <<<"$figures")
      p50=$(sed -n 's/.*p50 \([0-9]* ms\).*/\1/p' <<<"$latency")
      p99=$(sed -n 's/.*p99 \([0-9]* ms\).*/\1/p' <<<"$latency")
      emulator=$(sed -n 's/.*emulator \([0-9]*%\).*/\1/p' <<<"$cpu")
      functions=$(sed -n 's/.*functions \([0-9]*%\).*/\1/p' <<<"$cpu")
      echo "| $shards | $pf | $instances | $accepted | $p50 | $p99 | $emulator | $functions | $status |"
    done
  done
done
