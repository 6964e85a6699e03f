#!/bin/bash
# Issue 28, point 2: how long six nodes started back to back (each `--join`ing the one started
# just before it, none waited for) take to be one cluster: every member's `members` shows all
# six alive. Polls every 20 ms. ROUNDS runs (default 10); with REF_BIN set, that binary's runs
# alternate with this build's, and both medians are printed.
#   scripts/bench-cluster-start.sh                 # this build
#   REF_BIN=/tmp/kvnode-old ROUNDS=5 scripts/bench-cluster-start.sh
set -eu
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-10}
cargo build --release --quiet
bin=${KVNODE_BIN:-target/release/kvnode}

# One run: prints the seconds until all six are alive in every member's view (or "timeout").
run() {
    local b=$1 home pids="" t0 i c ok
    home=$(mktemp -d)
    t0=$(date +%s%N)
    KVNODE_HOME=$home $b start --name n1 --in-memory -q >/dev/null 2>&1 & pids="$pids $!"
    for i in 2 3 4 5 6; do
        KVNODE_HOME=$home $b start --name "n$i" --in-memory --join "n$((i - 1))" -q >/dev/null 2>&1 & pids="$pids $!"
    done
    while :; do
        ok=1
        for i in 1 2 3 4 5 6; do
            c=$(KVNODE_HOME=$home $b members --via "n$i" --json 2>/dev/null | grep -c '"state":"alive"' || true)
            [ "$c" = 6 ] || { ok=0; break; }
        done
        [ $ok = 1 ] && break
        if [ $(( $(date +%s%N) - t0 )) -gt 30000000000 ]; then echo timeout; kill $pids; wait 2>/dev/null; rm -rf "$home"; return; fi
        sleep 0.02
    done
    awk -v ns=$(( $(date +%s%N) - t0 )) 'BEGIN { printf "%.3f\n", ns / 1e9 }'
    kill $pids; wait 2>/dev/null || true
    rm -rf "$home"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mine=""; ref=""
for r in $(seq "$rounds"); do
    if [ -n "${REF_BIN:-}" ]; then t=$(run "$REF_BIN"); ref="$ref $t"; echo "round $r: reference $t s"; fi
    t=$(run "$bin"); mine="$mine $t"; echo "round $r: this build $t s"
done
echo "median: this build $(echo $mine | median) s (max $(echo $mine | tr ' ' '\n' | sort -g | tail -1) s)"
[ -n "${REF_BIN:-}" ] && echo "median: reference $(echo $ref | median) s (max $(echo $ref | tr ' ' '\n' | sort -g | tail -1) s)"
exit 0
