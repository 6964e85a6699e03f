#!/bin/sh
# kvnode beside Redis on this machine (issue 7): the same clients, requests, value size and
# pipeline depth, kvnode and Redis alternating in one invocation, ROUNDS times; medians and
# the ratio kvnode/Redis per row. The table also goes into BENCHMARKS.md (between markers).
#
#   scripts/bench-vs-redis.sh            # ROUNDS=3 N=100000 by default
#   ROUNDS=5 N=200000 scripts/bench-vs-redis.sh
#   RESP_ONLY=1 scripts/bench-vs-redis.sh  # only the RESP rows (issue 24): redis-benchmark on
#                                          # both sides, into their own table
#
# Needs redis-server, redis-benchmark and redis-cli (Debian/Ubuntu: apt-get install
# redis-server redis-tools). Without them it says so and exits 0.
set -eu
cd "$(dirname "$0")/.."
for tool in redis-server redis-benchmark redis-cli; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "notice: $tool is not installed, so there is nothing to compare with."
        echo "        install Redis first: sudo apt-get install redis-server redis-tools"
        exit 0
    fi
done
ROUNDS=${ROUNDS:-3}
N=${N:-100000}
cargo build --release --quiet --bin kvnode
bin=target/release/kvnode
work=$(mktemp -d)
export KVNODE_HOME="$work/home"
pids=""
cleanup() { kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# kvnode: an in-memory node, a durable node, and two nodes for the hop (bucket "world" on bar).
# mem and dur serve RESP too, for redis-benchmark (issue 24).
kp=$(free_port); kd=$(free_port)
$bin start --name mem --in-memory --resp-listen "127.0.0.1:$kp" -q >/dev/null & pids="$pids $!"
$bin start --name dur --resp-listen "127.0.0.1:$kd" -q >/dev/null & pids="$pids $!"
$bin start --name foo --in-memory --table 'a-m=foo,n-z=bar' -q >/dev/null & pids="$pids $!"
$bin start --name bar --in-memory --table 'a-m=foo,n-z=bar' -q >/dev/null & pids="$pids $!"
for n in mem dur foo bar; do until $bin ping $n >/dev/null 2>&1; do sleep 0.1; done; done
# Redis: one plain, one with every write fsynced before the reply.
rp=$(free_port); ra=$(free_port); mkdir -p "$work/aof"
redis-server --port "$rp" --save '' --appendonly no --daemonize no --logfile "$work/redis.log" & pids="$pids $!"
redis-server --port "$ra" --save '' --appendonly yes --appendfsync always --dir "$work/aof" --daemonize no --logfile "$work/redis-aof.log" & pids="$pids $!"
until redis-cli -p "$rp" ping >/dev/null 2>&1 && redis-cli -p "$ra" ping >/dev/null 2>&1; do sleep 0.1; done

kv() { $bin bench --json "$@" | sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/'; }
rd() { redis-benchmark --csv "$@" | tail -1 | cut -d, -f2 | tr -d '"'; }
median() { echo "$@" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# One-shot: the mean wall time per call of $2 runs of a command, in ms.
per_call() {
    runs=$1; shift
    start=$(date +%s%N)
    i=0; while [ $i -lt "$runs" ]; do "$@" >/dev/null; i=$((i + 1)); done
    echo "$start $(date +%s%N) $runs" | awk '{ printf "%.3f", ($2 - $1) / 1e6 / $3 }'
}
# The same keys exist for both before the get rows.
$bin put bench key:000000000000 xxx --via mem
$bin put world key:000000000000 xxx --via foo
redis-cli -p "$rp" hset myhash element:__rand_int__ xxx >/dev/null
redis-cli -p "$rp" hset b k xxx >/dev/null

# The RESP rows (issue 24): redis-benchmark against kvnode's RESP port and against Redis, the
# same flags, alternating; each gives SET, GET and HSET.
secret=$(cat "$KVNODE_HOME/secret")
rb() { redis-benchmark --csv "$@" 2>/dev/null | awk -F, 'NR > 1 { gsub(/"/, ""); printf "%s %s ", tolower($1), $2 }'; }
resp_rows="c50 p16 c1 durable"
for r in $resp_rows; do for t in set get hset; do eval "rk_${r}_$t=''; rr_${r}_$t=''"; done; done
resp_add() { # side row "test rps test rps ..."
    side=$1 row=$2
    set -- $3
    while [ $# -ge 2 ]; do eval "${side}_${row}_$1=\"\$${side}_${row}_$1 $2\""; shift 2; done
}
resp_round() {
    resp_add rk c50 "$(rb -p "$kp" -a "$secret" -c 50 -n "$N" -t set,get,hset)"
    resp_add rr c50 "$(rb -p "$rp" -c 50 -n "$N" -t set,get,hset)"
    resp_add rk p16 "$(rb -p "$kp" -a "$secret" -c 50 -n $((N * 5)) -P 16 -t set,get,hset)"
    resp_add rr p16 "$(rb -p "$rp" -c 50 -n $((N * 5)) -P 16 -t set,get,hset)"
    resp_add rk c1 "$(rb -p "$kp" -a "$secret" -c 1 -n $((N / 5)) -t set,get,hset)"
    resp_add rr c1 "$(rb -p "$rp" -c 1 -n $((N / 5)) -t set,get,hset)"
    resp_add rk durable "$(rb -p "$kd" -a "$secret" -c 50 -n "$N" -t set,get,hset)"
    resp_add rr durable "$(rb -p "$ra" -c 50 -n "$N" -t set,get,hset)"
}
resp_table() {
    cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($cpu), kvnode $($bin --version | cut -d' ' -f2) against $(redis-server --version | cut -d' ' -f3 | tr -d 'v='), redis-benchmark on both sides with the same flags (kvnode's RESP port with \`-a SECRET\`), $ROUNDS alternating rounds, medians of ops/s; N=$N. Regenerate with \`RESP_ONLY=1 scripts/bench-vs-redis.sh\`."
    echo
    echo "| redis-benchmark flags | command | kvnode | Redis | kvnode/Redis | target |"
    echo "|---|---|---:|---:|---:|---:|"
    for r in $resp_rows; do
        case $r in
            c50) flags="-c 50 -n $N (in memory)"; target="≥ 1.0" ;;
            p16) flags="-c 50 -P 16 -n $((N * 5)) (in memory)"; target="≥ 0.8" ;;
            c1) flags="-c 1 -n $((N / 5)) (in memory)"; target="≥ 0.9" ;;
            durable) flags="-c 50 -n $N, durable node / appendfsync always"; target="≥ 1.0" ;;
        esac
        for t in set get hset; do
            k=$(eval "median \$rk_${r}_$t"); rr=$(eval "median \$rr_${r}_$t")
            ratio=$(awk -v a="$k" -v b="$rr" 'BEGIN { printf "%.2f", a / b }')
            printf '| %s | %s | %.0f | %.0f | %s | %s |\n' "$flags" "$(echo $t | tr a-z A-Z)" "$k" "$rr" "$ratio" "$target"
        done
    done
}
# Replaces the section between the markers $1 in BENCHMARKS.md with the file $2.
put_table() {
    [ -f BENCHMARKS.md ] || printf '# Benchmarks\n' > BENCHMARKS.md
    if ! grep -q "<!-- $1:start -->" BENCHMARKS.md; then
        printf '\n## %s\n\n<!-- %s:start -->\n<!-- %s:end -->\n' "$3" "$1" "$1" >> BENCHMARKS.md
    fi
    awk -v table="$2" -v start="<!-- $1:start -->" -v end="<!-- $1:end -->" '
        $0 == start { print; while ((getline line < table) > 0) print line; skip = 1; next }
        $0 == end { skip = 0 }
        !skip { print }
    ' BENCHMARKS.md > "$work/BENCHMARKS.md" && cp "$work/BENCHMARKS.md" BENCHMARKS.md
}
if [ -n "${RESP_ONLY:-}" ]; then
    for round in $(seq "$ROUNDS"); do
        echo "RESP round $round of $ROUNDS" >&2
        resp_round
    done
    resp_table | tee "$work/resp-table"
    put_table bench-resp "$work/resp-table" "kvnode's RESP port beside Redis, redis-benchmark on both (issue 24)"
    exit 0
fi

rows="put50 get50 putmux getmux putp16 getp16 put1 get1 oneshot hop durable50 durable1"
for r in $rows; do eval "k_$r=''; r_$r=''"; done
add() { eval "$1_$2=\"\$$1_$2 $3\""; }
for round in $(seq "$ROUNDS"); do
    echo "round $round of $ROUNDS" >&2
    add k put50 "$(kv --via mem -t put -c 50 -n "$N" -d 3)";                add r put50 "$(rd -p "$rp" -c 50 -n "$N" -d 3 -t hset)"
    add k get50 "$(kv --via mem -t get -c 50 -n "$N" -d 3)";                add r get50 "$(rd -p "$rp" -c 50 -n "$N" hget myhash element:__rand_int__)"
    add k putmux "$(kv --via mem -t put -c 50 -n "$N" -d 3 --connections 2)"
    add k getmux "$(kv --via mem -t get -c 50 -n "$N" -d 3 --connections 2)"
    add k putp16 "$(kv --via mem -t put -c 50 -n $((N * 5)) -d 3 --pipeline 16)"; add r putp16 "$(rd -p "$rp" -c 50 -n $((N * 5)) -d 3 -P 16 -t hset)"
    add k getp16 "$(kv --via mem -t get -c 50 -n $((N * 5)) -d 3 --pipeline 16)"; add r getp16 "$(rd -p "$rp" -c 50 -n $((N * 5)) -P 16 hget myhash element:__rand_int__)"
    add k put1 "$(kv --via mem -t put -c 1 -n $((N / 5)) -d 3)";            add r put1 "$(rd -p "$rp" -c 1 -n $((N / 5)) -d 3 -t hset)"
    add k get1 "$(kv --via mem -t get -c 1 -n $((N / 5)) -d 3)";            add r get1 "$(rd -p "$rp" -c 1 -n $((N / 5)) hget myhash element:__rand_int__)"
    for chunk in 1 2 3 4; do
        add k oneshot "$(per_call 50 $bin get bench key:000000000000 --via mem)"
        add r oneshot "$(per_call 50 redis-cli -p "$rp" hget b k)"
    done
    add k hop "$(kv --via foo --bucket world -t get -c 50 -n "$N")";        add r hop "$(kv --via bar --bucket world -t get -c 50 -n "$N")"
    add k durable50 "$(kv --via dur -t put -c 50 -n "$N" -d 3)";            add r durable50 "$(rd -p "$ra" -c 50 -n "$N" -d 3 -t hset)"
    add k durable1 "$(kv --via dur -t put -c 1 -n $((N / 10)) -d 3)";       add r durable1 "$(rd -p "$ra" -c 1 -n $((N / 10)) -d 3 -t hset)"
    resp_round
done

rss() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
pid_of() { sed -n 's/^pid=//p' "$KVNODE_HOME/nodes/$1"; }
$bin start --name idle --in-memory -q >/dev/null & pids="$pids $!"
$bin start --name idledur -q >/dev/null & pids="$pids $!"
until $bin ping idle >/dev/null 2>&1 && $bin ping idledur >/dev/null 2>&1; do sleep 0.1; done
idle_mem=$(rss "$(pid_of idle)"); idle_dur=$(rss "$(pid_of idledur)")
$bin bench --via idle -t put -c 50 -n 1000000 --keyspace 1000000 -d 64 --bucket m --json >/dev/null
$bin bench --via idledur -t put -c 50 -n 1000000 --keyspace 1000000 -d 64 --bucket m --json >/dev/null
full_mem=$(rss "$(pid_of idle)"); full_dur=$(rss "$(pid_of idledur)")

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
table=$(
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($cpu), kvnode $($bin --version | cut -d' ' -f2) against $(redis-server --version | cut -d' ' -f3 | tr -d 'v='), $ROUNDS alternating rounds, medians; N=$N, 3-byte values unless said. Regenerate with \`scripts/bench-vs-redis.sh\`."
    echo
    echo "| row | kvnode | Redis | kvnode/Redis |"
    echo "|---|---:|---:|---:|"
    line() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }
    for r in $rows; do
        k=$(eval "median \$k_$r"); rr=$(eval "median \$r_$r")
        case $r in
            put50) label="1. 50 clients, no pipelining: put (HSET), one connection per client" ;;
            get50) label="1. 50 clients, no pipelining: get (HGET), one connection per client" ;;
            putmux) label="1. 50 clients, put, multiplexed on 2 connections (Redis: one per client)"; rr=$(eval "median \$r_put50") ;;
            getmux) label="1. 50 clients, get, multiplexed on 2 connections (Redis: one per client)"; rr=$(eval "median \$r_get50") ;;
            putp16) label="2. 50 clients, pipeline 16: put" ;;
            getp16) label="2. 50 clients, pipeline 16: get" ;;
            put1) label="3. 1 client, sequential: put" ;;
            get1) label="3. 1 client, sequential: get" ;;
            oneshot) label="4. one-shot CLI, ms per call (kvnode get / redis-cli hget), 200 calls" ;;
            hop) label="5. get through one forwarding hop / straight to the owner (both kvnode)" ;;
            durable50) label="6. durable put, 50 clients (Redis appendfsync always)" ;;
            durable1) label="6. durable put, 1 client (Redis appendfsync always)" ;;
        esac
        unit="ops/s"; [ "$r" = oneshot ] && unit="ms"
        ratio=$(awk -v a="$k" -v b="$rr" 'BEGIN { printf "%.2f", a / b }')
        if [ "$unit" = ms ]; then line "$label" "$k ms" "$rr ms" "$ratio"; else line "$label" "$(printf %.0f "$k")" "$(printf %.0f "$rr")" "$ratio"; fi
    done
    echo
    echo "Memory (RSS): idle node ${idle_mem} MB in memory, ${idle_dur} MB durable; after 1,000,000 keys of 16 B with 64-byte values: ${full_mem} MB in memory, ${full_dur} MB durable."
)
echo "$table"
# Replace the section between the markers in BENCHMARKS.md (created if missing).
[ -f BENCHMARKS.md ] || printf '# Benchmarks\n' > BENCHMARKS.md
if ! grep -q '<!-- bench-vs-redis:start -->' BENCHMARKS.md; then
    printf '\n## kvnode beside Redis\n\n<!-- bench-vs-redis:start -->\n<!-- bench-vs-redis:end -->\n' >> BENCHMARKS.md
fi
printf '%s\n' "$table" > "$work/table"
awk -v table="$work/table" '
    /<!-- bench-vs-redis:start -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
    /<!-- bench-vs-redis:end -->/ { skip = 0 }
    !skip { print }
' BENCHMARKS.md > "$work/BENCHMARKS.md" && cp "$work/BENCHMARKS.md" BENCHMARKS.md
resp_table > "$work/resp-table"
cat "$work/resp-table"
put_table bench-resp "$work/resp-table" "kvnode's RESP port beside Redis, redis-benchmark on both (issue 24)"
