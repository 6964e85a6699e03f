//! A deterministic discrete-event simulator of many [`Gossip`] nodes in one process.
//!
//! Virtual time (nanoseconds added to one base `Instant` the caller supplies), a seeded RNG,
//! and one priority queue of message deliveries and node wake-ups. Links have a fixed one-way
//! latency drawn per pair from a range; datagrams are lost with a probability; streams are
//! never lost but pay a connection setup and a retransmission timeout per lost packet;
//! partitions drop everything between groups. Same seed, same calls: same results.
//!
//! Messages are handed from node to node as values, not bytes (encoding 10,000 nodes' traffic
//! would dominate the run); `SimConfig::check_datagram_sizes` encodes every datagram to check
//! the 1200-byte limit, and the core's own tests check encoding.

mod metrics;
mod table;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use self::metrics::{Detection, TableTrack, Views};
pub use self::table::SimTable;
use crate::table::Table;

/// The core, its messages and events, as the simulator runs them: spreading a [`SimTable`].
pub type Gossip = crate::Gossip<SimTable>;
pub type Event = crate::Event<SimTable>;
type Message = crate::Message<SimTable>;
type Transmit = crate::Transmit<SimTable>;
pub use self::metrics::{FalseDeath, SimStats};
use super::{GossipConfig, Ident, MAX_DATAGRAM, Roster};
use crate::name::NodeName;

/// A simulated process, by its index.
pub type NodeId = usize;

/// The simulated network and the protocol configuration every node runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// One-way latency of each link, drawn once per pair from this range.
    pub latency: (Duration, Duration),
    /// Probability that a datagram is lost.
    pub loss: f64,
    pub gossip: GossipConfig,
    /// Round trips a stream pays before its first byte (QUIC handshake plus kvnode's auth).
    pub stream_setup_rtts: u32,
    /// Encode every datagram and count those over `MAX_DATAGRAM` (slow; for tests).
    pub check_datagram_sizes: bool,
    /// Keep every event in `Sim::events` (for tests on small clusters).
    pub record_events: bool,
    /// Failure verdicts a node reaches in poor local health are tentative, and withdrawn when
    /// it learns it was the one cut off (the core's default; off to measure without it).
    pub tentative_verdicts: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            latency: (Duration::from_millis(1), Duration::from_millis(10)),
            loss: 0.0,
            gossip: GossipConfig::default(),
            stream_setup_rtts: 2,
            check_datagram_sizes: false,
            record_events: false,
            tentative_verdicts: true,
        }
    }
}

const PORT: u16 = 7946;
/// QUIC's max_ack_delay, part of its probe timeout.
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

struct Node {
    gossip: Gossip,
    up: bool,
    left: bool,
    generation: u64,
    wake: Option<u64>,
}

struct Delivery {
    from: u32,
    to: u32,
    msg: Message,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Job {
    Wake(u32),
    Deliver(u32),
}

pub struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: u64,
    rng: SmallRng,
    nodes: Vec<Node>,
    owners: HashMap<NodeName, NodeId>,
    queue: BinaryHeap<Reverse<(u64, u64, Job)>>,
    deliveries: Vec<Option<Delivery>>,
    free: Vec<u32>,
    next_job: u64,
    groups: Option<Vec<u32>>,
    views: Views,
    table: Option<TableTrack>,
    detections: Vec<Detection>,
    false_deaths: Vec<FalseDeath>,
    stats: SimStats,
    suspected: HashSet<(NodeId, u64)>,
    /// Every event, with when and where, if `record_events` is set.
    pub events: Vec<(Duration, NodeId, Event)>,
}

/// The address of process `id`: 10.x.y.z, one per process.
pub fn addr_of(id: NodeId) -> SocketAddr {
    let [_, a, b, c] = (id as u32).to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, a, b, c), PORT))
}

/// The conventional name of process `id` in converged clusters.
pub fn name_of(id: NodeId) -> NodeName {
    NodeName::new(format!("n{id}")).unwrap_or_else(|_| unreachable!("n<digits> is a valid name"))
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finalizer: a cheap, well-spread hash for per-link latencies and seeds.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Sim {
    /// An empty network; add processes with [`Sim::spawn`].
    pub fn new(cfg: SimConfig, base: Instant) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(mix(cfg.seed)),
            cfg,
            base,
            now: 0,
            nodes: Vec::new(),
            owners: HashMap::new(),
            queue: BinaryHeap::new(),
            deliveries: Vec::new(),
            free: Vec::new(),
            next_job: 0,
            groups: None,
            views: Views::default(),
            table: None,
            detections: Vec::new(),
            false_deaths: Vec::new(),
            stats: SimStats::default(),
            suspected: HashSet::new(),
            events: Vec::new(),
        }
    }

    /// `n` processes named `n0..n{n-1}` that already know each other (no joining), sharing
    /// one routing table at version 1.
    pub fn converged(cfg: SimConfig, base: Instant, n: usize) -> Self {
        let mut sim = Self::new(cfg, base);
        let ids: Vec<Ident> = (0..n).map(|i| Ident::new(name_of(i), addr_of(i), 1)).collect();
        let roster = Roster::new(ids);
        sim.views.resize(n);
        for i in 0..n {
            let id = sim.add(name_of(i), 1);
            let now = sim.instant();
            sim.nodes[id].gossip.adopt_roster(now, &roster);
            sim.schedule(id);
        }
        sim.views.set_all();
        sim
    }

    fn initial_table() -> SimTable {
        SimTable::owned_by("n0", 1)
    }

    fn add(&mut self, name: NodeName, generation: u64) -> NodeId {
        let id = self.nodes.len();
        let seed = mix(self.cfg.seed ^ mix(id as u64) ^ generation.rotate_left(32));
        let mut gossip = Gossip::new(
            name.clone(),
            addr_of(id),
            generation,
            Self::initial_table(),
            self.cfg.gossip.clone(),
            seed,
            self.instant(),
        );
        gossip.set_tentative_verdicts(self.cfg.tentative_verdicts);
        self.nodes.push(Node {
            gossip,
            up: true,
            left: false,
            generation,
            wake: None,
        });
        self.owners.insert(name, id);
        self.views.resize(self.nodes.len());
        self.views.set_live(id, true);
        id
    }

    /// A new process named `name` at a new address; it knows nobody until it joins.
    pub fn spawn(&mut self, name: &str) -> NodeId {
        let name = NodeName::new(name).unwrap_or_else(|e| panic!("simulated node name: {e}"));
        let id = self.add(name, 1);
        self.schedule(id);
        id
    }

    /// A new process claiming `name` with `generation` (a restart elsewhere, or an impostor).
    pub fn spawn_generation(&mut self, name: &str, generation: u64) -> NodeId {
        let name = NodeName::new(name).unwrap_or_else(|e| panic!("simulated node name: {e}"));
        let id = self.add(name, generation);
        self.schedule(id);
        id
    }

    /// Restarts a killed process at the same address with the next generation.
    pub fn restart(&mut self, id: NodeId) {
        let node = &self.nodes[id];
        let (name, generation) = (node.gossip.identity().name.clone(), node.generation + 1);
        let seed = mix(self.cfg.seed ^ mix(id as u64) ^ generation.rotate_left(32));
        let mut gossip = Gossip::new(
            name.clone(),
            addr_of(id),
            generation,
            Self::initial_table(),
            self.cfg.gossip.clone(),
            seed,
            self.instant(),
        );
        gossip.set_tentative_verdicts(self.cfg.tentative_verdicts);
        self.nodes[id] = Node {
            gossip,
            up: true,
            left: false,
            generation,
            wake: None,
        };
        self.owners.insert(name, id);
        self.views.clear_row(id);
        self.views.set_live(id, true);
        self.detections.retain(|d| d.subject != id);
        self.schedule(id);
    }

    pub fn join(&mut self, id: NodeId, via: NodeId) {
        let now = self.instant();
        self.nodes[id].gossip.join(now, addr_of(via));
        self.after_input(id);
    }

    /// Stops a process dead: nothing more is delivered to or from it, its timers stop.
    pub fn kill(&mut self, id: NodeId) {
        self.nodes[id].up = false;
        self.nodes[id].wake = None;
        self.views.set_live(id, false);
        self.detections.push(Detection {
            subject: id,
            killed_at: self.now,
            marked: vec![None; self.nodes.len()],
        });
    }

    pub fn leave(&mut self, id: NodeId) {
        let now = self.instant();
        self.nodes[id].gossip.leave(now);
        self.nodes[id].left = true;
        self.views.set_live(id, false);
        self.after_input(id);
    }

    /// Sets a table on one node and starts tracking how it spreads.
    pub fn set_table(&mut self, id: NodeId, table: SimTable) {
        self.table = Some(TableTrack {
            version: table.version(),
            started: self.now,
            adopted: vec![None; self.nodes.len()],
        });
        let now = self.instant();
        self.nodes[id].gossip.set_table(now, table);
        self.after_input(id);
    }

    /// Cuts the network into `groups`; processes in no group form one more group.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        let mut of = vec![0u32; self.nodes.len()];
        for (g, members) in groups.iter().enumerate() {
            for &id in members {
                of[id] = g as u32 + 1;
            }
        }
        self.groups = Some(of);
    }

    pub fn heal(&mut self) {
        self.groups = None;
    }

    pub fn node(&self, id: NodeId) -> &Gossip {
        &self.nodes[id].gossip
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn live(&self, id: NodeId) -> bool {
        self.nodes[id].up && !self.nodes[id].left
    }

    /// Runs until virtual time `t`.
    pub fn run_until(&mut self, t: Duration) {
        let end = t.as_nanos() as u64;
        while let Some(&Reverse((time, _, job))) = self.queue.peek() {
            if time > end {
                break;
            }
            self.queue.pop();
            self.now = time;
            match job {
                Job::Wake(id) => self.wake(id as usize, time),
                Job::Deliver(slot) => self.deliver(slot),
            }
        }
        self.now = self.now.max(end);
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now() + d);
    }

    /// Runs in `step`s until `done` holds or `limit` virtual time has passed; returns the
    /// virtual time at which it held.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let end = self.now() + limit;
        loop {
            if done(self) {
                return Some(self.now());
            }
            if self.now() >= end {
                return None;
            }
            self.run_until((self.now() + step).min(end));
        }
    }

    fn wake(&mut self, id: NodeId, time: u64) {
        let node = &mut self.nodes[id];
        if !node.up || node.wake != Some(time) {
            return; // a stale wake-up, superseded by an earlier or later one
        }
        node.wake = None;
        let now = self.instant();
        self.nodes[id].gossip.handle_timeout(now);
        self.after_input(id);
        if self.nodes[id].wake == Some(time) {
            // The core asked to be woken again at the same instant: a timer that does not
            // advance. Count it (tests require zero) and move on rather than spin forever.
            self.stats.stuck_timers += 1;
            let later = time + Duration::from_millis(1).as_nanos() as u64;
            self.nodes[id].wake = Some(later);
            self.push(later, Job::Wake(id as u32));
        }
    }

    fn deliver(&mut self, slot: u32) {
        let Some(d) = self.deliveries[slot as usize].take() else {
            return;
        };
        self.free.push(slot);
        let (from, to) = (d.from as usize, d.to as usize);
        if !self.nodes[to].up || !self.nodes[from].up {
            self.stats.to_or_from_down += 1;
            return;
        }
        let now = self.instant();
        self.nodes[to].gossip.handle_message(now, addr_of(from), d.msg);
        self.after_input(to);
    }

    /// Drains a node's outputs after any input and re-arms its one timer.
    fn after_input(&mut self, id: NodeId) {
        while let Some(t) = self.nodes[id].gossip.poll_transmit() {
            self.route(id, t);
        }
        while let Some(ev) = self.nodes[id].gossip.poll_event() {
            self.observe(id, &ev);
            if self.cfg.record_events {
                self.events.push((self.now(), id, ev));
            }
        }
        self.schedule(id);
    }

    fn schedule(&mut self, id: NodeId) {
        if !self.nodes[id].up {
            return;
        }
        let Some(t) = self.nodes[id].gossip.poll_timeout() else {
            return;
        };
        // Due already: run it right after the current input (time never goes backwards).
        let at = (t.saturating_duration_since(self.base).as_nanos() as u64).max(self.now);
        if self.nodes[id].wake != Some(at) {
            self.nodes[id].wake = Some(at);
            self.push(at, Job::Wake(id as u32));
        }
    }

    fn push(&mut self, at: u64, job: Job) {
        self.next_job += 1;
        self.queue.push(Reverse((at, self.next_job, job)));
    }

    fn index_of(&self, addr: SocketAddr) -> Option<NodeId> {
        let SocketAddr::V4(v4) = addr else { return None };
        let [ten, a, b, c] = v4.ip().octets();
        let id = u32::from_be_bytes([0, a, b, c]) as usize;
        (ten == 10 && v4.port() == PORT && id < self.nodes.len()).then_some(id)
    }

    fn latency(&self, a: NodeId, b: NodeId) -> u64 {
        let (lo, hi) = (
            self.cfg.latency.0.as_nanos() as u64,
            self.cfg.latency.1.as_nanos() as u64,
        );
        let pair = (a.min(b) as u64) << 32 | a.max(b) as u64;
        lo + mix(self.cfg.seed ^ mix(pair)) % (hi.saturating_sub(lo) + 1)
    }

    fn route(&mut self, from: NodeId, t: Transmit) {
        let Some(to) = self.index_of(t.to) else {
            self.stats.to_or_from_down += 1;
            return;
        };
        if t.reliable {
            self.stats.streams += 1;
        } else {
            self.stats.datagrams += 1;
            if self.cfg.check_datagram_sizes && t.msg.encoded_len() > MAX_DATAGRAM {
                self.stats.oversized_datagrams += 1;
            }
        }
        if !self.nodes[to].up {
            self.stats.to_or_from_down += 1;
            return;
        }
        if let Some(groups) = &self.groups
            && groups[from] != groups[to]
        {
            self.stats.cut_by_partition += 1;
            return;
        }
        let lat = self.latency(from, to);
        let delay = if t.reliable {
            // Setup round trips, then QUIC's probe timeout (doubling) for each lost packet.
            let mut delay = lat + 2 * lat * u64::from(self.cfg.stream_setup_rtts);
            let mut pto = 2 * lat + MAX_ACK_DELAY.as_nanos() as u64;
            while self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
                delay += pto;
                pto = (pto * 2).min(Duration::from_secs(2).as_nanos() as u64);
            }
            delay
        } else {
            if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
                self.stats.lost += 1;
                return;
            }
            lat
        };
        let d = Delivery {
            from: from as u32,
            to: to as u32,
            msg: t.msg,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.deliveries[s as usize] = Some(d);
                s
            }
            None => {
                self.deliveries.push(Some(d));
                (self.deliveries.len() - 1) as u32
            }
        };
        self.push(self.now + delay, Job::Deliver(slot));
    }
}
