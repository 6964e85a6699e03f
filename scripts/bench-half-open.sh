#!/bin/sh
# Honest gets served while one socket holds 300 connections past TLS that never prove the
# secret (issue 22, point 6). Each round: a fresh node, one put, the flood (examples/auth_flood
# --half-open 300), then 20 sequential `kvnode get`s (fresh processes, each on its own port)
# once every one of the flood's 300 connections has been tried (held, or refused) once.
# Prints the gets served per round and the median. BIN=path/to/kvnode measures another binary
# (say, an older one) with the same flood. FLOOD_FLAGS=--new-port-each-time makes every flood
# connection come from a new port; --from 127.0.0.2 floods from another address than the gets'.
#   scripts/bench-half-open.sh [ROUNDS]
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-5}
if [ -n "${BIN:-}" ]; then
    cargo build --release --quiet --example auth_flood
else
    cargo build --release --quiet --bin kvnode --example auth_flood
fi
bin=${BIN:-target/release/kvnode}
flood=target/release/examples/auth_flood
served_all=""
for round in $(seq "$rounds"); do
    export KVNODE_HOME="$(mktemp -d)"
    $bin start --name foo --in-memory >/dev/null 2>"$KVNODE_HOME/node.log" & node=$!
    until $bin ping foo >/dev/null 2>&1; do sleep 0.1; done
    addr=$(sed -n 's/^addr=//p' "$KVNODE_HOME/nodes/foo")
    $bin put b k v
    $flood "$addr" --half-open 300 --seconds 15 ${FLOOD_FLAGS:-} > "$KVNODE_HOME/flood.out" & f=$!
    until grep -qs flooding "$KVNODE_HOME/flood.out"; do sleep 0.05; done
    served=0
    for i in $(seq 20); do
        if [ "$($bin get b k 2>/dev/null)" = v ]; then served=$((served + 1)); fi
    done
    kill $f 2>/dev/null; wait $f 2>/dev/null || true
    kill $node; wait $node 2>/dev/null || true
    echo "round $round: $served of 20 gets served"
    served_all="$served_all $served"
    rm -rf "$KVNODE_HOME"
done
echo "$served_all" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print "median:", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), "of 20"}'
