#!/bin/sh
# The gossip targets of issue 4, measured in the simulator (release build), one line each.
#   scripts/gossip-sim-figures.sh [SEEDS]      # SEEDS=3 by default
#   scripts/gossip-sim-figures.sh --quick      # issue 28's small-group heal at 2,000 nodes only
#   scripts/gossip-sim-figures.sh --heal10k    # issue 28's figures: 10,000 nodes, 100 cut off,
#                                              # seeds 1-5, loss 0 and 10 % (2-6 min each here)
# Every run writes its CSVs and plot under target/gossip-sim/<run>/.
set -eu
cd "$(dirname "$0")/.."
heal() { # nodes cut-fraction seeds
    for loss in 0 0.1; do
        for s in $(seq "$3"); do
            run="heal-$1-$loss-$s"
            mkdir -p "$out/$run"
            # The peak RSS too, where GNU time is installed.
            if [ -x /usr/bin/time ]; then
                /usr/bin/time -f %M -o "$out/$run/peak_rss_kb" \
                    $sim --nodes "$1" --cut "$2" --loss "$loss" --seed "$s" --scenarios partition --out "$out/$run" >/dev/null
            else
                $sim --nodes "$1" --cut "$2" --loss "$loss" --seed "$s" --scenarios partition --out "$out/$run" >/dev/null
            fi
            echo "  $1 nodes, $(metric $run cut_off_nodes) cut off $(metric $run hold_s)s, loss $loss seed $s: one membership $(metric $run heal_s)s after the heal, live members marked dead $(metric $run falsely_dead_members) ($(metric $run false_deaths_same_side_or_after_heal) verdicts), wall $(metric $run wall_s)s$(rss $run)"
        done
    done
}
rss() { [ -f "$out/$1/peak_rss_kb" ] && echo ", peak RSS $(($(cat "$out/$1/peak_rss_kb") / 1024)) MiB" || true; }
sim=${CARGO_TARGET_DIR:-target}/release/examples/gossip_sim
out=target/gossip-sim
metric() { grep "^[a-z]*,$2," "$out/$1/summary.csv" | cut -d, -f3; }
case "${1:-}" in
--quick)
    cargo build --release --quiet --example gossip_sim
    echo "a small group cut off and healed (issue 28), 2,000 nodes, 20 cut off"
    heal 2000 0.01 2
    exit 0 ;;
--heal10k)
    cargo build --release --quiet --example gossip_sim
    echo "a small group cut off and healed (issue 28), 10,000 nodes, 100 cut off"
    heal 10000 0.01 5
    exit 0 ;;
esac
seeds=${1:-3}
cargo build --release --quiet --example gossip_sim
max() { tr ' ' '\n' | grep . | sort -g | tail -1; }

echo "table change, time until 100 % of nodes hold it (max over seeds 1..$seeds; 99.9 % in brackets)"
for n in 1000 10000; do
    for loss in 0 0.1; do
        for mode in "" --no-hot-rumor; do
            all=""; p999=""
            for s in $(seq "$seeds"); do
                run="table-$n-$loss-$s$mode"
                $sim --nodes "$n" --loss "$loss" --seed "$s" --scenarios table $mode --out "$out/$run" >/dev/null
                all="$all $(metric "$run" time_to_100pct_s)"; p999="$p999 $(metric "$run" 'time_to_99.9pct_s')"
            done
            printf '  %5s nodes, loss %-3s %-15s 100 %%: %ss (%s)  [99.9 %%: %s]\n' "$n" "$loss" "${mode:-hot rumor}" \
                "$(echo $all | max)" "$all" "$(echo $p999 | max)"
        done
    done
done

echo "a killed node marked dead by every member, 50 nodes, 300 seeds"
for loss in 0 0.1; do
    run="kill-50-$loss"
    $sim --nodes 50 --loss "$loss" --seconds 20 --repeat 300 --scenarios kill --out "$out/$run" >/dev/null
    echo "  loss $loss: p50 $(metric $run detection_p50_s)s p99 $(metric $run detection_p99_s)s max $(metric $run detection_max_s)s; false deaths $(metric $run false_deaths_all_runs)"
done

echo "false deaths over 10 virtual minutes, 1,000 nodes, 10 % loss, $seeds seeds"
run="false-1000"
$sim --nodes 1000 --loss 0.1 --seconds 600 --repeat "$seeds" --scenarios kill --out "$out/$run" >/dev/null
echo "  false deaths $(metric $run false_deaths_all_runs), false suspicions (refuted) $(metric $run false_suspicion_episodes_all_runs)"

echo "a partition longer than the suspicion timeout, then healed (1,000 nodes, half cut off)"
for loss in 0 0.1; do
    for s in $(seq "$seeds"); do
        run="partition-1000-$loss-$s"
        $sim --nodes 1000 --loss "$loss" --seed "$s" --scenarios partition --out "$out/$run" >/dev/null
        echo "  loss $loss seed $s: cut $(metric $run hold_s)s, one membership again $(metric $run heal_s)s after the heal, false deaths $(metric $run false_deaths_same_side_or_after_heal)"
    done
done

echo "10,000 nodes x 60 virtual seconds, 10 % loss"
run="perf-10000"
$sim --nodes 10000 --loss 0.1 --seconds 60 --scenarios kill --out "$out/$run" >/dev/null
echo "  wall time $(metric $run wall_s)s (plus $(metric $run setup_wall_s)s building the converged cluster); detection $(metric $run detection_all_s)s, false deaths $(metric $run false_deaths)"
