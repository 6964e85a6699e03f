#!/bin/sh
# Throughput of `get` through one forwarding hop versus straight to the owner (issue 3).
# Two release nodes, foo and bar, with a-m=foo,n-z=bar; the bucket "world" lives on bar.
# The two runs alternate ROUNDS times in one invocation; medians and the ratio are printed.
#   scripts/bench-hop.sh [ROUNDS] [extra kvnode bench flags...]
# THREADS=N runs both nodes with `--threads N` (default: one worker thread per core).
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-5}; [ $# -gt 0 ] && shift
cargo build --release --quiet
bin=${KVNODE_BIN:-target/release/kvnode}
export KVNODE_HOME="$(mktemp -d)"
pids=""
threads=${THREADS:+--threads $THREADS}
trap 'kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$KVNODE_HOME"' EXIT INT TERM
$bin start --name foo --in-memory --table 'a-m=foo,n-z=bar' $threads -q >/dev/null & pids="$pids $!"
$bin start --name bar --in-memory --table 'a-m=foo,n-z=bar' $threads -q >/dev/null & pids="$pids $!"
until $bin ping foo >/dev/null 2>&1 && $bin ping bar >/dev/null 2>&1; do sleep 0.1; done
direct=""; hop=""
for i in $(seq "$rounds"); do
    d=$($bin bench --via bar --bucket world -t get --json "$@" | sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/')
    h=$($bin bench --via foo --bucket world -t get --json "$@" | sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/')
    echo "round $i: direct $d ops/s, one hop $h ops/s"
    direct="$direct $d"; hop="$hop $h"
done
median() { echo "$@" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
md=$(median $direct); mh=$(median $hop)
awk -v d="$md" -v h="$mh" 'BEGIN { printf "median: direct %.0f ops/s, one hop %.0f ops/s; the hop costs %.1f%% of direct throughput\n", d, h, (1 - h/d) * 100 }'
