//! The gossip simulator at small size: spread, detection, false deaths, healing, determinism.
//!
//! Sizes are kept small enough for a debug build on two cores; the example
//! `gossip_sim` runs the same scenarios at 10,000 nodes.

use std::time::{Duration, Instant};

use kvnode_gossip::sim::{Event, NodeId, Sim, SimConfig, SimTable};
use kvnode_gossip::{GossipConfig, State};

fn config(seed: u64, loss: f64) -> SimConfig {
    SimConfig {
        seed,
        loss,
        ..SimConfig::default()
    }
}

/// Two ranges, as the tutorial's table has.
fn table(version: u64) -> SimTable {
    let entries = vec![(0x00, 0x7f, "n0".into()), (0x80, 0xff, "n1".into())];
    SimTable::new(version, "n0", entries).expect("a valid table")
}

/// The longest a suspicion can last in a cluster of `n` (no confirmations at all).
fn longest_suspicion(g: &GossipConfig, n: usize) -> Duration {
    let min = g
        .probe_interval
        .mul_f64(f64::from(g.suspicion_mult) * (n as f64).log10().max(1.0));
    min * g.suspicion_max_mult
}

fn assert_healthy(sim: &Sim) {
    assert_eq!(sim.stats().stuck_timers, 0, "a timer did not advance");
    assert_eq!(sim.stats().oversized_datagrams, 0, "a datagram exceeded 1200 bytes");
}

fn table_spreads_to_everyone(loss: f64) -> Duration {
    let mut sim = Sim::converged(config(7, loss), Instant::now(), 200);
    sim.run_until(Duration::from_secs(1));
    sim.set_table(3, table(2));
    let done = sim.run_until_true(Duration::from_secs(10), Duration::from_millis(10), |s| {
        s.table_fraction() >= 1.0
    });
    assert!(done.is_some(), "only {:.3} hold the table", sim.table_fraction());
    assert_healthy(&sim);
    sim.table_time_to(1.0).unwrap()
}

#[test]
fn a_table_change_reaches_every_node() {
    let t = table_spreads_to_everyone(0.0);
    assert!(t <= Duration::from_secs(2), "{t:?}");
}

#[test]
fn a_table_change_reaches_every_node_despite_10_percent_loss() {
    let t = table_spreads_to_everyone(0.1);
    assert!(t <= Duration::from_millis(2300), "{t:?}");
}

/// The epidemic alone passes a rumour on a few times, to random members, so in a small
/// cluster it now and then misses one until the next push-pull (up to 30 s later): the
/// integration test of a six-node cluster saw a table arrive 6 s late about once in 30 runs.
/// The setter sends a new table to every live member, so no seed may miss one.
#[test]
fn a_table_set_in_a_small_cluster_reaches_every_member_within_a_second_whatever_the_seed() {
    for seed in 0..300 {
        let mut sim = Sim::converged(config(seed, 0.0), Instant::now(), 6);
        sim.run_until(Duration::from_secs(1));
        sim.set_table(2, table(2));
        let done = sim.run_until_true(Duration::from_secs(1), Duration::from_millis(10), |s| {
            s.table_fraction() >= 1.0
        });
        assert!(
            done.is_some(),
            "seed {seed}: only {:.3} hold the table after a second",
            sim.table_fraction()
        );
    }
}

#[test]
fn a_killed_node_is_marked_dead_by_every_member_within_5_seconds() {
    for seed in 1..=4 {
        let mut sim = Sim::converged(config(seed, 0.0), Instant::now(), 50);
        sim.run_until(Duration::from_secs(3));
        sim.kill(17);
        sim.run_for(Duration::from_secs(8));
        let t = sim.detection_time(17);
        assert!(
            t.is_some_and(|t| t <= Duration::from_secs(5)),
            "seed {seed}: {t:?}, marked by {}",
            sim.marked_dead_by(17)
        );
        assert!(sim.false_deaths().is_empty(), "{:?}", sim.false_deaths());
        for id in (0..50).filter(|&i| i != 17) {
            assert_eq!(sim.node(id).member("n17").unwrap().state, State::Dead);
        }
        assert_healthy(&sim);
    }
}

#[test]
fn no_false_deaths_over_three_minutes_at_10_percent_loss() {
    let mut sim = Sim::converged(config(11, 0.1), Instant::now(), 200);
    sim.run_until(Duration::from_secs(180));
    assert!(sim.false_deaths().is_empty(), "{:?}", sim.false_deaths());
    assert!(sim.one_membership());
    // The loss is real: datagrams were dropped and probes fell back to streams.
    assert!(sim.stats().lost > sim.stats().datagrams / 20, "{:?}", sim.stats());
    assert_healthy(&sim);
}

#[test]
fn a_partition_longer_than_the_suspicion_timeout_heals_within_30_seconds() {
    let n = 60;
    let mut sim = Sim::converged(config(5, 0.0), Instant::now(), n);
    sim.run_until(Duration::from_secs(2));
    let left: Vec<NodeId> = (0..n / 2).collect();
    sim.partition(&[left]);
    sim.run_for(longest_suspicion(&GossipConfig::default(), n) + Duration::from_secs(5));
    // Each side has given up on the other.
    assert_eq!(sim.alive_seen_by(0), n / 2 - 1);
    assert_eq!(sim.node(0).member("n59").unwrap().state, State::Dead);
    assert_eq!(sim.node(59).member("n0").unwrap().state, State::Dead);
    sim.heal();
    let healed = sim.now();
    let one = sim.run_until_true(Duration::from_secs(30), Duration::from_millis(100), Sim::one_membership);
    assert!(one.is_some(), "node 0 sees {} alive after 30 s", sim.alive_seen_by(0));
    assert!(one.unwrap() - healed <= Duration::from_secs(30));
    // Deaths across the cut were the point; none on one's own side, none after the heal.
    let wrong: Vec<_> = sim
        .false_deaths()
        .iter()
        .filter(|d| (d.observer < n / 2) == (d.subject < n / 2) || d.at >= healed)
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_healthy(&sim);
}

fn scripted_run(seed: u64) -> (Vec<(Duration, usize, Event)>, String) {
    let cfg = SimConfig {
        record_events: true,
        check_datagram_sizes: true,
        ..config(seed, 0.05)
    };
    let mut sim = Sim::converged(cfg, Instant::now(), 40);
    sim.run_until(Duration::from_secs(1));
    sim.set_table(2, table(5));
    sim.run_until(Duration::from_secs(2));
    sim.kill(9);
    sim.partition(&[(0..10).collect()]);
    sim.run_until(Duration::from_secs(20));
    sim.heal();
    sim.run_until(Duration::from_secs(40));
    assert_healthy(&sim);
    let summary = format!(
        "{:?} {:?} {:?}",
        sim.stats(),
        sim.table_adoption_times(),
        sim.false_deaths()
    );
    (std::mem::take(&mut sim.events), summary)
}

#[test]
fn the_same_seed_gives_identical_results() {
    let (a, sa) = scripted_run(3);
    let (b, sb) = scripted_run(3);
    assert!(a.len() > 100, "the scenario produces events: {}", a.len());
    assert_eq!(sa, sb);
    assert!(a == b, "event logs differ");
    let (c, _) = scripted_run(4);
    assert!(a != c, "a different seed should change something");
}

#[test]
fn nodes_joining_one_by_one_converge_to_one_membership() {
    let mut sim = Sim::new(config(9, 0.0), Instant::now());
    let first = sim.spawn("n0");
    for i in 1..30 {
        let id = sim.spawn(&format!("n{i}"));
        // Through any earlier member, not always the first.
        sim.join(id, (i * 7) % i);
        sim.run_for(Duration::from_millis(200));
    }
    let done = sim.run_until_true(Duration::from_secs(20), Duration::from_millis(100), Sim::one_membership);
    assert!(done.is_some(), "n0 sees {} of 29", sim.alive_seen_by(first));
    assert!(sim.false_deaths().is_empty());
    assert_healthy(&sim);
}

#[test]
fn a_restarted_node_rejoins_under_a_new_generation() {
    let mut sim = Sim::converged(config(2, 0.0), Instant::now(), 20);
    sim.run_until(Duration::from_secs(1));
    sim.kill(4);
    sim.run_for(Duration::from_secs(1));
    sim.restart(4);
    sim.join(4, 0);
    let done = sim.run_until_true(Duration::from_secs(10), Duration::from_millis(50), Sim::one_membership);
    assert!(done.is_some());
    for id in (0..20).filter(|&i| i != 4) {
        let m = sim.node(id).member("n4").unwrap();
        assert_eq!((m.state, m.generation), (State::Alive, 2), "seen by n{id}");
    }
    assert_healthy(&sim);
}

#[test]
fn a_leaving_node_is_marked_left_and_never_dead() {
    let cfg = SimConfig {
        record_events: true,
        ..config(6, 0.0)
    };
    let mut sim = Sim::converged(cfg, Instant::now(), 30);
    sim.run_until(Duration::from_secs(1));
    sim.leave(8);
    sim.run_for(Duration::from_secs(20));
    assert!(
        sim.events
            .iter()
            .any(|(_, n, e)| *n == 8 && *e == Event::LeaveAcknowledged)
    );
    for id in (0..30).filter(|&i| i != 8) {
        assert_eq!(sim.node(id).member("n8").unwrap().state, State::Left, "seen by n{id}");
    }
    assert!(
        !sim.events
            .iter()
            .any(|(_, _, e)| matches!(e, Event::MemberDead { name, .. } if name.as_str() == "n8"))
    );
    assert_healthy(&sim);
}

/// Every node but `id` holds `id` alive in `generation`.
fn all_hold_alive(sim: &Sim, id: NodeId, generation: u64) -> bool {
    let name = format!("n{id}");
    (0..sim.len()).filter(|&i| i != id).all(|i| {
        sim.node(i)
            .member(&name)
            .is_some_and(|m| (m.state, m.generation) == (State::Alive, generation))
    })
}

#[test]
fn a_node_that_left_and_rejoins_under_a_new_generation_is_alive_at_once() {
    let mut sim = Sim::converged(config(11, 0.0), Instant::now(), 20);
    sim.run_until(Duration::from_secs(1));
    sim.leave(4);
    sim.run_for(Duration::from_secs(3));
    assert!(
        (0..20)
            .filter(|&i| i != 4)
            .all(|i| sim.node(i).member("n4").unwrap().state == State::Left)
    );
    sim.restart(4);
    sim.join(4, 0);
    let start = sim.now();
    // Not behind its `left`: the seed takes it at once, gossip tells the rest.
    let took = sim
        .run_until_true(Duration::from_secs(10), Duration::from_millis(10), |s| {
            all_hold_alive(s, 4, 2)
        })
        .map(|t| t - start);
    assert!(took.is_some_and(|t| t < Duration::from_secs(2)), "{took:?}");
    assert_healthy(&sim);
}

/// A node that comes back at its address without joining anyone (it knew nobody it could
/// name, or lost what it knew) is found there again by the members that hold it dead or left.
fn restarted_without_joining_is_found_again(gently: bool) {
    let mut sim = Sim::converged(config(12, 0.0), Instant::now(), 20);
    sim.run_until(Duration::from_secs(1));
    if gently {
        sim.leave(4);
    } else {
        sim.kill(4);
    }
    let down = if gently { State::Left } else { State::Dead };
    let held_down = sim.run_until_true(Duration::from_secs(30), Duration::from_millis(100), |s| {
        (0..20)
            .filter(|&i| i != 4)
            .all(|i| s.node(i).member("n4").unwrap().state == down)
    });
    assert!(held_down.is_some());
    sim.restart(4);
    let start = sim.now();
    let reconnect = GossipConfig::default().reconnect_interval;
    let found = sim.run_until_true(3 * reconnect, Duration::from_millis(50), |s| all_hold_alive(s, 4, 2));
    assert!(found.is_some(), "not found again within {:?}", 3 * reconnect);
    println!("found again after {:?}", found.unwrap() - start);
    assert_healthy(&sim);
}

#[test]
fn a_dead_node_restarted_at_its_address_without_joining_is_found_again() {
    restarted_without_joining_is_found_again(false);
}

#[test]
fn a_node_that_left_and_restarted_at_its_address_without_joining_is_found_again() {
    restarted_without_joining_is_found_again(true);
}

/// Issue 28: a small group cut off from a large cluster, longer than any suspicion, then
/// healed. Its verdicts, found while its own probes went unanswered, are tentative and
/// withdrawn once it is told it was written off, and in that poor health it buries no one
/// by its own hand: one membership again within seconds, and no live member marked dead on
/// the way, with or without loss.
#[test]
fn a_small_group_cut_off_and_healed_writes_off_no_one() {
    let n = 300;
    let cut = 6;
    for (seed, loss) in [(1, 0.0), (2, 0.1)] {
        let mut sim = Sim::converged(config(seed, loss), Instant::now(), n);
        sim.run_until(Duration::from_secs(2));
        sim.partition(&[(0..cut).collect()]);
        sim.run_for(longest_suspicion(&GossipConfig::default(), n) * 2);
        // The cut-off group has given members of the majority up (suspect: it buries no
        // one while its own probes go unanswered).
        assert!(
            (cut..n).any(|s| sim.node(0).member(&format!("n{s}")).unwrap().state != State::Alive),
            "seed {seed}: node 0 wrote off no one while cut off"
        );
        sim.heal();
        let healed = sim.now();
        let one = sim.run_until_true(Duration::from_secs(30), Duration::from_millis(100), Sim::one_membership);
        let heal = one.map(|t| t - healed);
        assert!(
            heal.is_some_and(|t| t <= Duration::from_secs(10)),
            "seed {seed}: healed after {heal:?}; node 0 sees {} alive",
            sim.alive_seen_by(0)
        );
        let wrong: Vec<_> = sim
            .false_deaths()
            .iter()
            .filter(|d| (d.observer < cut) == (d.subject < cut) || d.at >= healed)
            .collect();
        // Before tentative verdicts it was dozens; with them but without holding verdicts
        // in poor health, seed 1 had a cut-off node bury a majority member 0.14 s after the
        // heal (its last check had been sent into the cut).
        assert!(wrong.is_empty(), "seed {seed}: {wrong:?}");
        assert_healthy(&sim);
    }
}

/// The same without tentative verdicts, so the test above shows what they change.
#[test]
fn without_tentative_verdicts_a_healed_small_group_takes_long_to_rejoin() {
    let n = 300;
    let cut = 6;
    let cfg = SimConfig {
        tentative_verdicts: false,
        ..config(1, 0.0)
    };
    let mut sim = Sim::converged(cfg, Instant::now(), n);
    sim.run_until(Duration::from_secs(2));
    sim.partition(&[(0..cut).collect()]);
    sim.run_for(longest_suspicion(&GossipConfig::default(), n) * 2);
    sim.heal();
    sim.run_for(Duration::from_secs(10));
    assert!(
        !sim.one_membership(),
        "healed within 10 s even without tentative verdicts"
    );
}
