//! Random faults from a seeded schedule (kills, restarts, isolations, loss) while puts go to
//! every range; then heal and check that nothing acknowledged was lost or acknowledged twice.

use std::collections::BTreeMap;

use rand::RngExt;

use super::sim::{STEPS_PER_TICK, Sim, four_ranges, unique_put};
use crate::{Command, ProposalId};

/// Runs one seeded schedule; returns (proposals taken, proposals acknowledged).
fn run(seed: u64) -> (usize, usize) {
    let mut sim = Sim::new(seed, 3, &four_ranges());
    sim.loss = 0.02;
    // Rounds take a step to sync, so kills land between a round and its sync.
    sim.sync_steps = 1;
    let mut acked: BTreeMap<ProposalId, Command> = BTreeMap::new();
    let mut proposed: BTreeMap<ProposalId, (usize, Command)> = BTreeMap::new();
    let mut n = 0;
    for _ in 0..600 {
        match sim.rng.random_range(0..100) {
            0..3 => {
                let i = sim.rng.random_range(0..3);
                // At most one node down at a time, so a majority can always make progress.
                if (0..3).all(|j| sim.alive(j)) {
                    sim.kill(i);
                }
            }
            3..8 => {
                for i in (0..3).filter(|&i| !sim.alive(i)).collect::<Vec<_>>() {
                    sim.start(i);
                }
            }
            8..10 => {
                let i = sim.rng.random_range(0..3);
                sim.isolate(i);
            }
            10..16 => sim.heal(),
            _ => {
                let range = sim.ranges[sim.rng.random_range(0..4)];
                if let Some(l) = sim.leader(range) {
                    let cmd = unique_put(range, n);
                    n += 1;
                    if let Ok(id) = sim.propose(l, range, &cmd) {
                        proposed.insert(id, (l, cmd));
                    }
                }
            }
        }
        sim.run(STEPS_PER_TICK);
    }
    for i in 0..3 {
        if !sim.alive(i) {
            sim.start(i);
        }
    }
    sim.heal();
    sim.loss = 0.0;
    sim.run(200 * STEPS_PER_TICK);
    let proposed_count = proposed.len();
    for (id, (node, cmd)) in proposed {
        if sim.nodes[node].acked.contains(&id) {
            acked.insert(id, cmd);
        }
    }
    assert!(!acked.is_empty(), "seed {seed}: some puts were acknowledged");
    sim.check(&acked);
    (proposed_count, acked.len())
}

#[test]
fn random_faults_lose_no_acknowledged_write() {
    let (mut taken, mut acked) = (0, 0);
    for seed in 0..12 {
        let (t, a) = run(seed);
        taken += t;
        acked += a;
    }
    println!("random faults, 12 seeds: {taken} proposals taken, {acked} acknowledged, none lost");
}
