#!/bin/sh
# Issue 26's split and merge of a replicated range, timed on this machine: each goes by way
# of one node (the range moved onto it, re-cut there, the pieces moved to their nodes), so
# it costs two moves' copies; this says how long that takes, and the longest a write waits.
#   scripts/bench-split.sh [BIN] [MIB] [VALUE_BYTES]
# Three durable nodes hold a-z=foo+bar+baz; MIB MiB (default 256) are loaded, half into
# bucket `apples` (a-m), half into `pears` (n-z). Then `route --set` splits the range into
# a-m=foo+bar+baz,n-z=bar+baz+foo and merges it back into a-z=foo+bar+baz, while one client
# puts into `apricots` (a-m) through bar without pause (`kvnode bench -c 1`). Prints each
# step's time, MB/s of the bytes it re-homed, and that client's slowest put during each.
# KVNODE_HOME is made under $TMPDIR: keep that on a real disk.
set -eu
bin=${1:-target/release/kvnode} mib=${2:-256} size=${3:-65536}
export KVNODE_HOME="$(mktemp -d)"
pids=""
trap 'kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$KVNODE_HOME"' EXIT INT TERM
keys=$((mib * 1048576 / size / 2))
t="--table a-z=foo+bar+baz"
$bin start --name foo $t -q >/dev/null 2>&1 & pids="$!"
$bin start --name bar $t --join foo -q >/dev/null 2>&1 & pids="$pids $!"
$bin start --name baz $t --join foo -q >/dev/null 2>&1 & pids="$pids $!"
until $bin put warmup warm up --via foo --timeout 2s >/dev/null 2>&1; do sleep 0.1; done
until [ "$($bin members --via foo | grep -c ' alive')" -ge 3 ]; do sleep 0.1; done
echo "loading 2 x $keys keys of $size bytes ($mib MiB) into apples and pears" >&2
for b in apples pears; do
    $bin bench --via foo -t put -c 16 -n "$keys" --keyspace "$keys" -d "$size" --bucket "$b" --timeout 30s --json >/dev/null
done
step() { # NAME TABLE
    touch "$KVNODE_HOME/writing"
    (
        while [ -e "$KVNODE_HOME/writing" ]; do
            $bin bench --via bar -t put -c 1 -n 1000 --keyspace 1000 -d 100 --bucket apricots --timeout 30s --json 2>/dev/null || true
        done
    ) >"$KVNODE_HOME/writer-$1.json" &
    w=$!
    sleep 1
    start=$(date +%s.%N)
    $bin route --set "$2" --via foo --wait-for 30m >/dev/null
    end=$(date +%s.%N)
    rm -f "$KVNODE_HOME/writing"
    wait $w 2>/dev/null || true
    slowest=$(sed -n 's/.*"max_ms":\([0-9.]*\).*/\1/p' "$KVNODE_HOME/writer-$1.json" | sort -g | tail -1)
    awk -v s="$start" -v e="$end" -v k="$((keys * 2))" -v z="$size" -v n="$1" -v w="${slowest:-none}" 'BEGIN {
        t = e - s; mb = k * z / 1e6
        printf "%s: %.2f s for %d keys (%.0f MB): %.1f MB/s; slowest put meanwhile %s ms\n", n, t, k, mb, mb / t, w }'
}
step split 'a-m=foo+bar+baz,n-z=bar+baz+foo'
step merge 'a-z=foo+bar+baz'
for b in apples pears; do
    for via in foo bar baz; do
        n=$($bin keys "$b" --via "$via" | wc -l)
        [ "$n" -eq "$keys" ] || { echo "$b through $via: $n keys, not $keys" >&2; exit 1; }
    done
done
echo "every key of apples and pears read back through each node ($keys each)"
