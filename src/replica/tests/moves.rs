//! Moves (issue 26) in the simulator: a range's replicas changed under writes, by learners,
//! joint consensus and a hand-over, with kills and loss; nothing acknowledged is lost and
//! every replica applies one history.

use std::collections::BTreeMap;

use super::sim::{STEPS_PER_TICK, Sim, unique_put};
use crate::{Command, ProposalId, RangeId};

const RANGE: RangeId = RangeId {
    first: b'a',
    last: b'z',
};

/// The ids of nodes `indexes`, sorted (as a configuration lists them).
fn ids(sim: &Sim, indexes: &[usize]) -> Vec<u64> {
    let mut ids: Vec<u64> = indexes.iter().map(|&i| sim.nodes[i].id).collect();
    ids.sort_unstable();
    ids
}

/// Proposes at the leader, retrying a refused or failed proposal until one is acknowledged
/// (running the sim meanwhile); `None` if none was within `limit` steps.
fn put(sim: &mut Sim, n: u64, acked: &mut BTreeMap<ProposalId, Command>, limit: u64) -> Option<ProposalId> {
    let cmd = unique_put(RANGE, n);
    let start = sim.now;
    while sim.now - start < limit {
        if let Some(l) = sim.leader(RANGE)
            && let Ok(id) = sim.propose(l, RANGE, &cmd)
        {
            sim.run_until(200, |s| {
                s.nodes[l].acked.contains(&id) || s.nodes[l].failed.iter().any(|f| f.0 == id) || !s.alive(l)
            });
            if sim.nodes[l].acked.contains(&id) {
                acked.insert(id, cmd);
                return Some(id);
            }
        }
        sim.run(STEPS_PER_TICK);
    }
    None
}

/// How many seeds a randomised move test runs: `MOVE_SEEDS`, else `default`.
fn move_seeds(default: u64) -> u64 {
    std::env::var("MOVE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Every live replica named by `target` holds the range with exactly `target` as voters, and
/// no learners.
fn moved(sim: &Sim, target: &[u64]) -> bool {
    (0..sim.nodes.len())
        .filter(|&i| target.contains(&sim.nodes[i].id) && sim.alive(i))
        .all(|i| {
            sim.holds(i, RANGE)
                && sim.nodes[i]
                    .core
                    .as_ref()
                    .and_then(|c| c.conf(RANGE))
                    .is_some_and(|cs| {
                        let mut voters = cs.voters.clone();
                        voters.sort_unstable();
                        voters == target && cs.learners.is_empty() && cs.voters_outgoing.is_empty()
                    })
        })
}

/// Moves the range from nodes 0..3 to `to` (new nodes added as needed) while putting, with
/// `faults` applied at the given put numbers; checks nothing acknowledged was lost.
fn run_move(seed: u64, to: &[usize], loss: f64, kill_leader_at: Option<u64>) {
    let mut sim = Sim::new(seed, 3, &[RANGE]);
    sim.loss = loss;
    while sim.nodes.len() <= *to.iter().max().unwrap() {
        sim.add_node();
    }
    let target = ids(&sim, to);
    let mut acked = BTreeMap::new();
    for n in 0..10 {
        put(&mut sim, n, &mut acked, 4_000).expect("a put before the move");
    }
    for i in 0..sim.nodes.len() {
        if sim.alive(i) && sim.holds(i, RANGE) {
            sim.core(i).set_target(RANGE, Some(target.clone())).unwrap();
        }
    }
    let mut n = 10;
    let mut killed = None;
    while !moved(&sim, &target) {
        if n >= 400 {
            let l = sim.leader(RANGE);
            for i in 0..sim.nodes.len() {
                eprintln!(
                    "node {i} id {} alive {} holds {} conf {:?} installed {:?}",
                    sim.nodes[i].id,
                    sim.alive(i),
                    sim.holds(i, RANGE),
                    sim.nodes[i].core.as_ref().and_then(|c| c.conf(RANGE)),
                    sim.nodes[i].installed
                );
            }
            if let Some(l) = l {
                eprintln!("leader {l} progress {}", sim.core(l).debug_progress(RANGE));
            }
            eprintln!("node 3 {}", sim.core(3).debug_progress(RANGE));
            panic!("seed {seed}: the move did not finish within {n} puts (target {target:?})");
        }
        if kill_leader_at == Some(n)
            && let Some(l) = sim.leader(RANGE)
        {
            sim.kill(l);
            killed = Some((l, sim.now));
        }
        if let Some((k, at)) = killed
            && sim.now > at + 40 * STEPS_PER_TICK
        {
            sim.start(k);
            // Restarted, it is told the target again (the caller's table says it).
            if sim.nodes[k].disk.contains_key(&RANGE) {
                sim.core(k).set_target(RANGE, Some(target.clone())).unwrap();
            }
            killed = None;
        }
        // New replicas learn the target once they hold the group.
        for i in 0..sim.nodes.len() {
            if sim.alive(i)
                && sim.holds(i, RANGE)
                && sim.nodes[i].core.as_ref().is_some_and(|c| c.conf(RANGE).is_some())
            {
                let _ = sim.core(i).set_target(RANGE, Some(target.clone()));
            }
        }
        let _ = put(&mut sim, n, &mut acked, 400);
        n += 1;
    }
    if let Some((k, _)) = killed {
        sim.start(k);
    }
    // The move is confirmed: the nodes it took out drop the range.
    for i in 0..sim.nodes.len() {
        if !target.contains(&sim.nodes[i].id) {
            sim.drop_range(i, RANGE);
        }
    }
    sim.loss = 0.0;
    for m in n..n + 5 {
        put(&mut sim, m, &mut acked, 4_000).expect("a put after the move");
    }
    // Every target replica converges on every acknowledged put.
    let converged = sim.run_until(4_000, |s| {
        let Some(l) = s.leader(RANGE) else { return false };
        let data = s.nodes[l].disk[&RANGE].data();
        to.iter()
            .all(|&i| s.holds(i, RANGE) && s.nodes[i].disk[&RANGE].data() == data)
    });
    assert!(converged.is_some(), "seed {seed}: the target replicas converge");
    sim.check(&acked);
    let leader = sim.leader(RANGE).expect("a leader after the move");
    assert!(to.contains(&leader), "seed {seed}: led by {leader}, outside the target");
}

#[test]
fn a_range_moves_one_replica_to_a_new_node_under_writes() {
    for seed in 0..20 {
        run_move(seed, &[0, 1, 3], 0.0, None);
    }
}

#[test]
fn a_range_moves_to_three_new_nodes_and_its_leader_hands_over() {
    for seed in 0..20 {
        run_move(seed, &[3, 4, 5], 0.0, None);
    }
}

#[test]
fn a_move_survives_loss_and_its_leader_killed_midway() {
    let seeds = move_seeds(30);
    for seed in 0..seeds {
        run_move(seed, &[1, 3, 4], 0.05, Some(12 + seed % 5));
    }
}

#[test]
fn a_move_called_off_before_its_swap_takes_its_learner_out_again() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed, 3, &[RANGE]);
        let new = sim.add_node();
        let (before, target) = (ids(&sim, &[0, 1, 2]), ids(&sim, &[0, 1, new]));
        let mut acked = BTreeMap::new();
        put(&mut sim, 0, &mut acked, 4_000).expect("a put");
        let set = |sim: &mut Sim, t: &[u64]| {
            for i in 0..3 {
                sim.core(i).set_target(RANGE, Some(t.to_vec())).unwrap();
            }
        };
        set(&mut sim, &target);
        // The new node is a learner (and may be catching up): the move is called off.
        let learner = sim.nodes[new].id;
        sim.run_until(2_000, |s| {
            let l = s.leader(RANGE);
            l.and_then(|l| s.nodes[l].core.as_ref()?.conf(RANGE))
                .is_some_and(|cs| cs.learners.contains(&learner))
        })
        .expect("the new node added as a learner");
        set(&mut sim, &before);
        sim.run_until(2_000, |s| moved(s, &before))
            .unwrap_or_else(|| panic!("seed {seed}: back to {before:?}"));
        // Out of the group, it drops the range; the three converge.
        sim.drop_range(new, RANGE);
        put(&mut sim, 1, &mut acked, 4_000).expect("a put after");
        sim.run_until(2_000, |s| {
            let data = s.nodes[0].disk[&RANGE].data();
            (1..3).all(|i| s.nodes[i].disk[&RANGE].data() == data)
        })
        .expect("the three converge");
        sim.check(&acked);
    }
}

/// A move onto one node, the preferred one, from a group led by another: the leader removes
/// the third voter, hands leadership to the target (which may not have applied that change
/// yet, and then cannot campaign), and the target is killed at every step of that and
/// restarted. The move always finishes: the target applies the change on its restart and
/// campaigns, and the other voter's pre-votes (refused while the logs are equal, the target
/// ranking first) never hold it up. (A stall of this shape was seen once in the fault test;
/// the core is not its cause.)
#[test]
fn a_move_onto_its_preferred_node_finishes_though_that_node_is_killed_at_the_hand_over() {
    let seeds = move_seeds(300);
    for seed in 0..seeds {
        let mut sim = Sim::new(seed, 3, &[RANGE]);
        let (first, last) = (sim.nodes[0].id, sim.nodes[2].id);
        // Node 3, ranked last in the group's order, leads.
        sim.run_until(4_000, |s| s.leader(RANGE).is_some()).expect("a leader");
        let l = sim.leader(RANGE).expect("a leader");
        if l != 2 {
            sim.core(l).transfer_leader(RANGE, last).expect("leads");
            sim.run_until(4_000, |s| s.leader(RANGE) == Some(2))
                .expect("node 3 leads");
        }
        let mut acked = BTreeMap::new();
        put(&mut sim, 0, &mut acked, 4_000).expect("a put");
        let target = vec![first];
        for i in 0..3 {
            sim.core(i).set_target(RANGE, Some(target.clone())).unwrap();
        }
        // Unkilled, the move takes 13 steps: killed at each of the first 18, down 0-6 ticks.
        sim.run(seed % 18);
        sim.kill(0);
        sim.run(seed % 7 * STEPS_PER_TICK);
        sim.start(0);
        sim.core(0).set_target(RANGE, Some(target.clone())).unwrap();
        sim.run_until(20_000, |s| moved(s, &target))
            .unwrap_or_else(|| panic!("seed {seed}: the move onto node 1 did not finish"));
        sim.check(&acked);
    }
}
