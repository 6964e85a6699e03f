//! A deterministic simulator: N nodes, each a [`Replicas`] on in-memory stores, over a virtual
//! network the test drives (latency, loss, cut links, kills, restarts on the node's "disk").
//! One step is 10 ms of virtual time; the groups tick every 5 steps (50 ms, the design's tick).
//! Frames cross the network encoded, so every message goes through the postcard mirror.

use super::GEN;
use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::{
    Applied, Command, Effect, Failure, Frame, MemGroupStore, ProposalId, ProposeError, RangeId, ReplicaConfig,
    Replicas, Role, node_id,
};

/// Steps per tick: 5 × 10 ms = 50 ms.
pub const STEPS_PER_TICK: u64 = 5;
/// Virtual milliseconds per step.
pub const STEP_MS: u64 = 10;

/// One simulated node: its core while alive, and its "disk" (the stores), which a kill keeps.
pub struct SimNode {
    pub name: String,
    pub id: u64,
    pub core: Option<Replicas<MemGroupStore>>,
    pub disk: BTreeMap<RangeId, MemGroupStore>,
    starts: u64,
    /// Everything applied here, per range and index (survives restarts: it is what the node
    /// did, for the checks).
    pub applied: BTreeMap<RangeId, BTreeMap<u64, Applied>>,
    pub acked: Vec<ProposalId>,
    /// What each acknowledged proposal did.
    pub effects: BTreeMap<ProposalId, Effect>,
    pub failed: Vec<(ProposalId, Failure)>,
    pub reads: Vec<(RangeId, u64)>,
    pub failed_reads: Vec<(RangeId, u64)>,
    pub installed: Vec<(RangeId, u64)>,
    /// Ranges this node left (a move took it out of the group).
    pub left: Vec<RangeId>,
    /// The round being "synced" and the step its sync completes at.
    syncing: Option<(u64, u64)>,
}

impl SimNode {
    /// A node not started yet, with `disk`, having done nothing.
    fn new(name: String, id: u64, disk: BTreeMap<RangeId, MemGroupStore>) -> Self {
        SimNode {
            name,
            id,
            core: None,
            disk,
            starts: 0,
            applied: BTreeMap::new(),
            acked: vec![],
            effects: BTreeMap::new(),
            failed: vec![],
            reads: vec![],
            failed_reads: vec![],
            installed: vec![],
            left: vec![],
            syncing: None,
        }
    }
}

struct InFlight {
    at: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// The cluster and its network.
pub struct Sim {
    pub rng: SmallRng,
    pub nodes: Vec<SimNode>,
    pub ranges: Vec<RangeId>,
    net: Vec<InFlight>,
    /// Virtual time in steps.
    pub now: u64,
    /// Directed links that drop everything.
    cut: BTreeSet<(usize, usize)>,
    /// Chance that a frame is lost.
    pub loss: f64,
    /// Steps a round's sync takes: 0 makes it durable at once; more lets a kill land between
    /// a round and its sync, losing the round as a disk would.
    pub sync_steps: u64,
    seed: u64,
    /// Frames, messages and bytes sent so far (for the batching figures).
    pub sent: (u64, u64, u64),
    /// Leader changes seen, `(step, node, range, leader, term)`: the run's trace.
    pub trace: Vec<(u64, usize, RangeId, Option<u64>, u64)>,
}

impl Sim {
    /// `n` nodes holding every one of `ranges`, bootstrapped alike.
    pub fn new(seed: u64, n: usize, ranges: &[RangeId]) -> Self {
        let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
        let ids: Vec<u64> = names.iter().map(|n| node_id(n)).collect();
        let nodes = names
            .into_iter()
            .zip(&ids)
            .map(|(name, &id)| {
                // Nothing stored: the lost-state rule finds every range new and bootstraps it.
                let disk = ranges.iter().map(|&r| (r, MemGroupStore::uninitialised())).collect();
                SimNode::new(name, id, disk)
            })
            .collect();
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            nodes,
            ranges: ranges.to_vec(),
            net: vec![],
            now: 0,
            cut: BTreeSet::new(),
            loss: 0.0,
            sync_steps: 0,
            sent: (0, 0, 0),
            seed,
            trace: vec![],
        };
        for i in 0..n {
            sim.start(i);
        }
        // Each replica asks the others, finds the ranges new and bootstraps them.
        let ranges = sim.ranges.clone();
        sim.run_until(100 * STEPS_PER_TICK, |s| {
            s.nodes.iter().all(|n| {
                let core = n.core.as_ref().expect("started");
                ranges.iter().all(|&r| core.initialised(r) == Some(true))
            })
        })
        .expect("every replica bootstraps its ranges");
        sim
    }

    /// Starts (or restarts) node `i` on its disk, as a new incarnation.
    pub fn start(&mut self, i: usize) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        let node = &mut self.nodes[i];
        node.starts += 1;
        let seed = self.seed.wrapping_mul(1_000_003) ^ (i as u64) << 32 ^ node.starts;
        let incarnation = (i as u64) << 32 | node.starts;
        let mut core = Replicas::new(ReplicaConfig::new(node.id, seed, incarnation));
        for (&range, store) in &node.disk {
            core.add_group(range, GEN, store.clone(), &ids)
                .expect("a fresh core holds no group");
        }
        node.core = Some(core);
    }

    /// A node joining the cluster, holding no range: a move may add it (it takes a range's
    /// group when the range's leader first writes to it). Its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let name = format!("node{}", i + 1);
        let id = node_id(&name);
        self.nodes.push(SimNode::new(name, id, BTreeMap::new()));
        self.start(i);
        i
    }

    /// Node `i` drops its group of `range` and the range's data (a move it is not part of
    /// any more is done).
    pub fn drop_range(&mut self, i: usize, range: RangeId) {
        let node = &mut self.nodes[i];
        if let Some(core) = node.core.as_mut() {
            core.remove_group(range);
        }
        if node.disk.remove(&range).is_some() {
            node.left.push(range);
        }
    }

    /// Whether node `i` holds a group of `range` that knows its configuration.
    pub fn holds(&self, i: usize, range: RangeId) -> bool {
        self.nodes[i].core.as_ref().and_then(|c| c.initialised(range)) == Some(true)
    }

    /// kill -9: the core and its unpersisted round are gone; the disk stays.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].syncing = None;
    }

    /// kill -9 and a wiped disk (or an in-memory node): it comes back knowing nothing.
    pub fn wipe(&mut self, i: usize) {
        self.kill(i);
        for store in self.nodes[i].disk.values_mut() {
            *store = MemGroupStore::uninitialised();
        }
        // What it applied before is gone with its disk; the checks compare what it applies next.
        self.nodes[i].applied.clear();
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    /// Cuts node `i` off from every other node (both ways).
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.cut.insert((i, j));
                self.cut.insert((j, i));
            }
        }
    }

    /// Drops everything `from` sends `to` (one way) until [`Sim::heal`].
    pub fn cut_link(&mut self, from: usize, to: usize) {
        self.cut.insert((from, to));
    }

    /// Lets `from` reach `to` again (one way).
    pub fn mend_link(&mut self, from: usize, to: usize) {
        self.cut.remove(&(from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The live node that leads `range` in the highest term, if any.
    pub fn leader(&self, range: RangeId) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let (role, term) = self.nodes[i].core.as_ref()?.role(range)?;
                (role == Role::Leader).then_some((term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    pub fn role(&self, i: usize, range: RangeId) -> Option<Role> {
        Some(self.nodes[i].core.as_ref()?.role(range)?.0)
    }

    /// The term node `i`'s replica of `range` is at.
    pub fn term(&self, i: usize, range: RangeId) -> Option<u64> {
        Some(self.nodes[i].core.as_ref()?.role(range)?.1)
    }

    /// Node `i`'s view of its replica of `range` ([`Replicas::describe`]).
    pub fn describe(&self, i: usize, range: RangeId) -> String {
        let core = self.nodes[i].core.as_ref();
        core.and_then(|c| c.describe(range))
            .unwrap_or_else(|| "not held".into())
    }

    pub fn core(&mut self, i: usize) -> &mut Replicas<MemGroupStore> {
        self.nodes[i].core.as_mut().expect("node is alive")
    }

    pub fn propose(&mut self, i: usize, range: RangeId, command: &Command) -> Result<ProposalId, ProposeError> {
        self.core(i).propose(range, command)
    }

    /// One step: deliver what is due, tick if due, drain every live node's rounds.
    pub fn step(&mut self) {
        self.now += 1;
        let due: Vec<InFlight>;
        (due, self.net) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|f| f.at <= self.now);
        for f in due {
            self.deliver(f);
        }
        let tick = self.now.is_multiple_of(STEPS_PER_TICK);
        for i in 0..self.nodes.len() {
            if tick && let Some(core) = self.nodes[i].core.as_mut() {
                core.handle_tick();
            }
            self.drain(i);
        }
    }

    /// Runs until `done` holds (the steps it took) or `limit` steps pass.
    pub fn run_until(&mut self, limit: u64, mut done: impl FnMut(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now - start < limit {
            self.step();
            if done(self) {
                return Some(self.now - start);
            }
        }
        None
    }

    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step();
        }
    }

    fn deliver(&mut self, f: InFlight) {
        let lost = self.cut.contains(&(f.from, f.to)) || !self.alive(f.to);
        let frame = Frame::decode(&f.bytes).expect("the simulator sends only frames the core encoded");
        if lost {
            // The transport tells the sender a snapshot did not arrive, as step 4's will.
            if let Some(core) = self.nodes[f.from].core.as_mut() {
                for (range, _, m) in &frame.msgs {
                    if m.snapshot.is_some() {
                        core.report_snapshot(*range, m.to, false);
                    }
                }
            }
            return;
        }
        let from = self.nodes[f.from].id;
        let snapshots: Vec<(RangeId, u64)> = frame
            .msgs
            .iter()
            .filter(|(_, _, m)| m.snapshot.is_some())
            .map(|(r, _, m)| (*r, m.to))
            .collect();
        if let Some(core) = self.nodes[f.to].core.as_mut() {
            core.handle_frame(from, frame);
        }
        // ... and that one did, as the node's snapshot streams report.
        if let Some(core) = self.nodes[f.from].core.as_mut() {
            for (range, to) in snapshots {
                core.report_snapshot(range, to, true);
            }
        }
    }

    fn send(&mut self, from: usize, frames: Vec<(u64, Frame)>) {
        for (to, frame) in frames {
            let Some(to) = self.index_of(to) else { continue };
            if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                // A lost snapshot is reported, as a node's snapshot stream reports it.
                if let Some(core) = self.nodes[from].core.as_mut() {
                    for (range, _, m) in frame.msgs.iter().filter(|(_, _, m)| m.snapshot.is_some()) {
                        core.report_snapshot(*range, m.to, false);
                    }
                }
                continue;
            }
            let at = self.now + 1 + u64::from(self.rng.random_bool(0.3));
            let bytes = frame.encode();
            self.sent.0 += 1;
            self.sent.1 += frame.msgs.len() as u64;
            self.sent.2 += bytes.len() as u64;
            self.net.push(InFlight { at, from, to, bytes });
        }
    }

    /// The node's driver: rounds until none is left; each is "durable" at once.
    fn drain(&mut self, i: usize) {
        for _ in 0..16 {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let Some(persist) = core.poll_round() else { return };
            let out = core
                .handle_persisted(persist.round)
                .expect("in-memory stores take every round");
            self.send(i, persist.send_early);
            self.send(i, out.frames);
            let node = &mut self.nodes[i];
            for a in out.applied {
                let prev = node.applied.entry(a.range).or_default().insert(a.index, a.clone());
                // A restarted node applies again only what it had not applied.
                assert!(
                    prev.is_none_or(|p| p == a),
                    "node {i} applied index {} twice differently",
                    a.index
                );
            }
            for (id, effect) in out.acked {
                node.acked.push(id);
                node.effects.insert(id, effect);
            }
            node.failed.extend(out.failed);
            node.reads.extend(out.reads);
            node.failed_reads
                .extend(out.failed_reads.into_iter().map(|(r, id, _)| (r, id)));
            node.installed.extend(out.installed);
            for (range, leader, term) in out.leaders {
                self.trace.push((self.now, i, range, leader, term));
            }
            // A range's leader writing to this node: a move adds it. It takes the group,
            // uninitialised, and is made whole by a snapshot.
            let node = &mut self.nodes[i];
            for (range, _) in out.unknown {
                if node.disk.contains_key(&range) || node.left.contains(&range) {
                    continue;
                }
                let store = MemGroupStore::uninitialised();
                node.disk.insert(range, store.clone());
                if let Some(core) = node.core.as_mut() {
                    core.add_group(range, GEN, store, &[]).expect("not held");
                }
            }
        }
    }

    /// The checks every scenario ends with: no index applied differently on two nodes, no
    /// proposal acknowledged twice, and every acknowledged put in every live replica's state.
    pub fn check(&self, acked_puts: &BTreeMap<ProposalId, Command>) {
        for &range in &self.ranges {
            let mut seen: BTreeMap<u64, &Applied> = BTreeMap::new();
            for node in &self.nodes {
                for (index, a) in node.applied.get(&range).into_iter().flatten() {
                    let first = *seen.entry(*index).or_insert(a);
                    assert_eq!(first, a, "range {range} index {index} applied differently");
                }
            }
        }
        let mut all = BTreeSet::new();
        for node in &self.nodes {
            for id in &node.acked {
                assert!(all.insert(*id), "proposal {id:?} acknowledged twice");
            }
        }
        for cmd in acked_puts.values() {
            let Command::Put { bucket, key, value } = cmd else {
                continue;
            };
            let range = self.range_of(bucket);
            let holders = (0..self.nodes.len()).filter(|&i| self.holds(i, range));
            for node in holders.map(|i| &self.nodes[i]) {
                let data = node.disk[&range].data();
                let got = data.get(bucket).and_then(|b| b.get(key));
                assert_eq!(got, Some(value), "{}: acknowledged put of {key:?} lost", node.name);
            }
        }
    }

    pub fn range_of(&self, bucket: &[u8]) -> RangeId {
        let first = bucket.first().copied().unwrap_or(0);
        *self
            .ranges
            .iter()
            .find(|r| r.first <= first && first <= r.last)
            .expect("a range per bucket")
    }
}

/// The four ranges of the tests: `a-f`, `g-m`, `n-s`, `t-z`.
pub fn four_ranges() -> Vec<RangeId> {
    [(b'a', b'f'), (b'g', b'm'), (b'n', b's'), (b't', b'z')]
        .into_iter()
        .map(|(first, last)| RangeId { first, last })
        .collect()
}

/// A put of a key no other put writes, in `range`.
pub fn unique_put(range: RangeId, n: u64) -> Command {
    Command::Put {
        bucket: vec![range.first, b'x'],
        key: format!("k{n}").into_bytes(),
        value: format!("v{n}").into_bytes(),
    }
}
