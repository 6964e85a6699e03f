#!/bin/sh
# How much a flood of wrong-secret connection attempts slows authenticated clients (issue 6).
# Each round runs `kvnode bench -t get` twice against one node: once alone, once with
# examples/auth_flood started as soon as the bench's clients have authenticated (so the flood
# meets established, authenticated connections). Rounds alternate; medians are printed.
#   scripts/bench-auth-flood.sh [ROUNDS] [extra kvnode bench flags...]
# FLOOD_FLAGS=--new-port-each-time makes the attacker use a new port for every attempt.
# A third run per round puts a plain busy loop beside the bench instead of the flood: the
# control for how much of the slowdown is only an attacker taking CPU on this same machine.
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-3}; [ $# -gt 0 ] && shift
cargo build --release --quiet --bin kvnode --example auth_flood
bin=target/release/kvnode
export KVNODE_HOME="$(mktemp -d)"
log="$KVNODE_HOME/node.log"
pids=""
trap 'kill $pids 2>/dev/null; wait 2>/dev/null; rm -rf "$KVNODE_HOME"' EXIT INT TERM
$bin start --name foo --in-memory -v >/dev/null 2>"$log" & pids="$pids $!"
until $bin ping foo >/dev/null 2>&1; do sleep 0.1; done
addr=$(sed -n 's/^addr=//p' "$KVNODE_HOME/nodes/foo")
clients=50
ops() { sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/'; }
median() { echo "$@" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
authenticated() { grep -c 'authenticated.*role=Client' "$log" || true; }
# bench WITH_FLOOD: run the bench; with a flood once its clients are all connected.
bench() {
    # After a flood this host is slowed down for a moment (its address bucket refills, the
    # flood's half-open handshakes run out their deadline): wait until it may open all its
    # connections again.
    until $bin bench --via foo -t get -c $clients -n $clients --json >/dev/null 2>&1; do sleep 0.5; done
    before=$(authenticated)
    $bin bench --via foo -t get -c $clients -n 200000 --json "$@" > "$KVNODE_HOME/bench.out" & b=$!
    until [ "$(authenticated)" -ge $((before + clients)) ] || ! kill -0 $b 2>/dev/null; do sleep 0.01; done
    case "$with_flood" in
        yes) target/release/examples/auth_flood "$addr" --seconds 60 ${FLOOD_FLAGS:-} > /dev/null & f=$! ;;
        burn) sh -c 'while :; do :; done' & f=$! ;;
        *) f="" ;;
    esac
    # bench runs in a subshell: if it stops early (set -e), it stops the flood or loop too.
    [ -n "$f" ] && trap 'kill $f 2>/dev/null || true' EXIT
    wait $b
    [ -n "$f" ] && { kill $f 2>/dev/null; wait $f 2>/dev/null || true; }
    # After the flood, this host's address has spent its tokens and the flood's half-open
    # handshakes run out their deadline (see BENCHMARKS.md); the next run starts after that.
    [ "$with_flood" = yes ] && sleep 10
    ops < "$KVNODE_HOME/bench.out"
}
quiet=""; flooded=""; burnt=""
for i in $(seq "$rounds"); do
    with_flood=no; q=$(bench "$@")
    with_flood=yes; f=$(bench "$@")
    with_flood=burn; c=$(bench "$@")
    echo "round $i: alone $q gets/s, during the flood $f gets/s, beside a busy loop $c gets/s"
    quiet="$quiet $q"; flooded="$flooded $f"; burnt="$burnt $c"
done
awk -v q="$(median $quiet)" -v f="$(median $flooded)" -v c="$(median $burnt)" \
    'BEGIN { printf "median: alone %.0f gets/s, during a wrong-secret flood %.0f gets/s: %.2fx slower (beside a plain busy loop: %.0f gets/s, %.2fx slower)\n", q, f, q/f, c, q/c }'
echo "node log: $(grep -c 'secret differs' "$log") first-refusal warnings, $(grep -c 'being slowed down' "$log") summaries"
