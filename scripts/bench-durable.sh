#!/bin/sh
# Put throughput of a durable node (the default) versus an --in-memory node, at 1 and 50
# clients, through `kvnode bench` (issue 6). Runs alternate ROUNDS times; medians printed.
# KVNODE_HOME is made under $TMPDIR: keep that on a real disk, or fsync costs nothing.
#   scripts/bench-durable.sh [ROUNDS]
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --quiet
bin=${KVNODE_BIN:-target/release/kvnode}
export KVNODE_HOME="$(mktemp -d)"
pids=""
trap 'kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$KVNODE_HOME"' EXIT INT TERM
$bin start --name dur -q >/dev/null & pids="$pids $!"
$bin start --name mem --in-memory -q >/dev/null & pids="$pids $!"
until $bin ping dur >/dev/null 2>&1 && $bin ping mem >/dev/null 2>&1; do sleep 0.1; done
ops() { sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/'; }
median() { echo "$@" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for c in 1 50; do
    n=$([ "$c" = 1 ] && echo 5000 || echo 100000)
    d_all=""; m_all=""
    for i in $(seq "$rounds"); do
        d=$($bin bench --via dur -t put -c "$c" -n "$n" --json | ops)
        m=$($bin bench --via mem -t put -c "$c" -n "$n" --json | ops)
        echo "clients $c round $i: durable $d puts/s, in-memory $m puts/s"
        d_all="$d_all $d"; m_all="$m_all $m"
    done
    awk -v c="$c" -v d="$(median $d_all)" -v m="$(median $m_all)" \
        'BEGIN { printf "median at %d clients: durable %.0f puts/s, in-memory %.0f puts/s (durable = %.2fx in-memory)\n", c, d, m, d/m }'
done
