#!/bin/sh
# Single-node put and get throughput of two kvnode binaries, before (A) and after (B) a change,
# on a durable and an --in-memory node at 50 clients (`kvnode bench -c 50`), alternating A and
# B (the order swapped every round) so a loaded machine's drift hits both alike. Prints every
# run and, per row, the medians and B/A. Issue 25 asks single-node ranges not to get slower.
#   scripts/bench-ab.sh BIN_A BIN_B [ROUNDS] [REQUESTS]
# KVNODE_HOME is made under $TMPDIR: keep that on a real disk, or fsync costs nothing.
set -eu
a=$1 b=$2 rounds=${3:-5} n=${4:-100000}
export KVNODE_HOME="$(mktemp -d)"
pids=""
trap 'kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$KVNODE_HOME"' EXIT INT TERM
ops() { sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/'; }
median() { echo "$@" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# One binary's four rows, each node fresh: prints "dur-put dur-get mem-put mem-get".
run() {
    bin=$1
    rm -rf "$KVNODE_HOME"/nodes "$KVNODE_HOME"/dur "$KVNODE_HOME"/mem
    $bin start --name dur -q >/dev/null 2>&1 & p1=$!
    $bin start --name mem --in-memory -q >/dev/null 2>&1 & p2=$!
    pids="$p1 $p2"
    until $bin ping dur >/dev/null 2>&1 && $bin ping mem >/dev/null 2>&1; do sleep 0.1; done
    row=""
    for node in dur mem; do
        for t in put get; do
            row="$row $($bin bench --via $node -t $t -c 50 -n "$n" --keyspace 10000 --json | grep ops_per_sec | ops)"
        done
    done
    kill $p1 $p2 2>/dev/null; wait $p1 $p2 2>/dev/null || true
    pids=""
    echo $row
}

names="durable-put durable-get in-memory-put in-memory-get"
all_a="" all_b=""
for i in $(seq "$rounds"); do
    if [ $((i % 2)) = 1 ]; then ra=$(run "$a"); rb=$(run "$b"); else rb=$(run "$b"); ra=$(run "$a"); fi
    echo "round $i: A $ra | B $rb"
    all_a="$all_a;$ra" all_b="$all_b;$rb"
done
col=1
for name in $names; do
    va=$(echo "$all_a" | tr ';' '\n' | grep . | awk -v c=$col '{print $c}')
    vb=$(echo "$all_b" | tr ';' '\n' | grep . | awk -v c=$col '{print $c}')
    awk -v n="$name" -v a="$(median $va)" -v b="$(median $vb)" \
        'BEGIN { printf "%-14s A %8.0f/s  B %8.0f/s  B/A %.3f\n", n, a, b, b/a }'
    col=$((col + 1))
done
