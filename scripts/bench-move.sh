#!/bin/sh
# Issue 26's figures: how fast a range moves between two durable nodes on this machine, and
# the longest a write waits while it does.
#   scripts/bench-move.sh [BIN] [MIB] [VALUE_BYTES]
# Loads MIB MiB (default 1024) into bucket `apples` on foo (table a-m=foo,n-z=bar), then moves
# a-m to bar with `route --set` while one client puts into the same range through bar without
# pause (`kvnode bench -c 1`; WRITER_VIA=foo writes through foo instead); prints the move's time, MB/s and keys/s, and that client's
# slowest put, and each node's largest resident memory during the move. KVNODE_HOME is made under $TMPDIR: keep that on a real disk.
set -eu
bin=${1:-target/release/kvnode} mib=${2:-1024} size=${3:-65536}
export KVNODE_HOME="$(mktemp -d)"
pids=""
trap 'kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$KVNODE_HOME"' EXIT INT TERM
keys=$((mib * 1048576 / size))
t="--table a-m=foo,n-z=bar"
$bin start --name foo $t -q >/dev/null 2>&1 & foo=$! pids="$!"
$bin start --name bar $t --join foo -q >/dev/null 2>&1 & bar=$! pids="$pids $!"
until $bin put apples warm up --via foo --timeout 2s >/dev/null 2>&1 && $bin ping bar >/dev/null 2>&1; do sleep 0.1; done
until $bin members --via foo | grep -q "^bar .*alive"; do sleep 0.1; done
echo "loading $keys keys of $size bytes ($mib MiB) into apples on foo" >&2
$bin bench --via foo -t put -c 16 -n "$keys" --keyspace "$keys" -d "$size" --bucket apples --timeout 30s --json >/dev/null
loaded=$($bin keys apples --via foo | wc -l)
echo "foo holds $loaded keys in apples; foo's data directory: $(du -sm "$KVNODE_HOME/foo" | cut -f1) MB" >&2
# A writer into the same range for the whole move (apricots: a-m too), through bar: rounds of
# 2,000 puts, one at a time, until the move is done (the gaps between rounds are a process
# start, ~50 ms, during which nothing is measured).
(
    while [ ! -e "$KVNODE_HOME/moved" ]; do
        $bin bench --via "${WRITER_VIA:-bar}" -t put -c 1 -n 2000 --keyspace 1000 -d 100 --bucket apricots --timeout 30s --json 2>/dev/null || true
    done
) >"$KVNODE_HOME/writer.json" & writer=$!
pids="$pids $writer"
# Each node's resident memory, sampled every 0.2 s during the move: its largest (MiB). The
# anonymous part (RssAnon: what the process allocated), not pages of files it read.
rss() { awk '/^RssAnon/ { print int($2 / 1024) }' "/proc/$1/status" 2>/dev/null || echo 0; }
# The load leaves foo flushing and compacting for a while (its memory high meanwhile): the
# move starts once that has settled (foo under 300 MiB, or after 60 s, said), so that the
# figures below are the move's.
sleep 2
waited=0
while [ "$(rss $foo)" -gt 300 ] && [ $waited -lt 120 ]; do sleep 0.5; waited=$((waited + 1)); done
[ $waited -lt 120 ] || echo "foo's memory did not settle under 300 MiB within 60 s; moving anyway" >&2
echo "resident memory (anonymous) before the move: foo $(rss $foo) MiB, bar $(rss $bar) MiB" >&2
(
    f=0 b=0
    while [ ! -e "$KVNODE_HOME/moved" ]; do
        x=$(rss $foo); [ "$x" -gt "$f" ] && f=$x
        x=$(rss $bar); [ "$x" -gt "$b" ] && b=$x
        sleep 0.2
    done
    echo "$f $b" >"$KVNODE_HOME/rss"
) & sampler=$!
start=$(date +%s.%N)
$bin route --set 'a-m=bar,n-z=bar' --via foo --wait-for 30m >/dev/null
end=$(date +%s.%N)
touch "$KVNODE_HOME/moved"
wait $sampler 2>/dev/null || true
read -r peak_foo peak_bar <"$KVNODE_HOME/rss"
echo "largest resident memory (anonymous) during the move: foo $peak_foo MiB, bar $peak_bar MiB"
wait $writer 2>/dev/null || true
moved=$($bin keys apples --via bar | wc -l)
awk -v s="$start" -v e="$end" -v k="$loaded" -v m="$moved" -v z="$size" 'BEGIN {
    t = e - s; mb = k * z / 1e6
    printf "moved %d keys (%.0f MB) from foo to bar in %.2f s: %.1f MB/s, %.0f keys/s\n", m, mb, t, mb / t, k / t }'
rounds=$(grep -c max_ms "$KVNODE_HOME/writer.json" || true)
slowest=$(sed -n 's/.*"max_ms":\([0-9.]*\).*/\1/p' "$KVNODE_HOME/writer.json" | sort -g | tail -1)
echo "slowest of the writer's puts during the move ($rounds rounds of 2,000): ${slowest:-none} ms"
