//! The node's figures (issue 27): counted in atomics as things happen (no lock on the request
//! path), read into a [`Snapshot`] that `/metrics` encodes as OpenMetrics text ([`encode`]) and
//! `kvnode stats` receives over QUIC, so the two always show the same figures. Knows no QUIC
//! and no node: `node::stats` adds what it reads from the node's state (members, table, store).
//!
//! The counters are one set per process (a static): a process runs one node, and the store,
//! the transport and gossip count into them without being handed anything.

mod encode;
mod hist;
pub mod http;
pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use encode::encode;
pub use hist::{Hist, Histogram};

use crate::wire::{BucketOp, RemoteError, Reply};

/// A bucket request's command, as labelled (`command="get"`).
pub const COMMANDS: [&str; 9] = [
    "put",
    "get",
    "delete",
    "keys",
    "route",
    "create",
    "put_existing",
    "put_reporting",
    // A watch's long polls: each waits for changes, so its latency is the wait.
    "watch",
];

/// How a request ended, by its exit code of SPEC §1 (`outcome="not_found"`).
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "not_found",
    "invalid",
    "unavailable",
    "auth_refused",
    "no_route",
    "internal",
];

/// Where a request was answered: applied here, or sent on to its owner.
pub const PATHS: [&str; 2] = ["local", "forwarded"];

/// Why a connection was turned away before or during its handshake.
pub const REFUSALS: [&str; 5] = [
    "too_many_connections",
    "handshakes_full",
    "slowed_down",
    "wrong_secret",
    "handshake_timeout",
];

/// A reason a connection is refused (an index into [`REFUSALS`]).
#[derive(Clone, Copy, Debug)]
pub enum Refusal {
    TooManyConnections,
    HandshakesFull,
    SlowedDown,
    WrongSecret,
    HandshakeTimeout,
}

/// The membership changes counted (`to="suspect"`).
pub const TRANSITIONS: [&str; 2] = ["suspect", "dead"];

/// A member's change counted in [`TRANSITIONS`].
#[derive(Clone, Copy, Debug)]
pub enum Transition {
    Suspect,
    Dead,
}

const C: usize = COMMANDS.len();
const O: usize = OUTCOMES.len();

struct Counters {
    requests: [[AtomicU64; O]; C],
    latency: [[Histogram; 2]; C],
    forwarded: AtomicU64,
    hops: Histogram,
    refused: [AtomicU64; REFUSALS.len()],
    transitions: [AtomicU64; TRANSITIONS.len()],
    commit_batch: Histogram,
    commit_ns: Histogram,
    gossip_sent: AtomicU64,
    gossip_received: AtomicU64,
    watches_waiting: AtomicU64,
}

static COUNTERS: Counters = Counters {
    requests: [const { [const { AtomicU64::new(0) }; O] }; C],
    latency: [const { [const { Histogram::new(hist::LATENCY_NS) }; 2] }; C],
    forwarded: AtomicU64::new(0),
    hops: Histogram::new(hist::HOPS),
    refused: [const { AtomicU64::new(0) }; REFUSALS.len()],
    transitions: [const { AtomicU64::new(0) }; TRANSITIONS.len()],
    commit_batch: Histogram::new(hist::BATCH),
    commit_ns: Histogram::new(hist::LATENCY_NS),
    gossip_sent: AtomicU64::new(0),
    gossip_received: AtomicU64::new(0),
    watches_waiting: AtomicU64::new(0),
};

fn command_of(op: &BucketOp) -> usize {
    match op {
        BucketOp::Put { .. } => 0,
        BucketOp::Get { .. } => 1,
        BucketOp::Delete { .. } => 2,
        BucketOp::Keys { .. } => 3,
        BucketOp::Route => 4,
        BucketOp::Create => 5,
        BucketOp::PutExisting { .. } => 6,
        BucketOp::PutReporting { .. } => 7,
        BucketOp::Watch { .. } => 8,
    }
}

fn outcome_of(answer: &Result<Reply, RemoteError>) -> usize {
    match answer {
        Ok(_) => 0,
        // Exit codes 1 to 6 name the outcomes after "ok", in order.
        Err(e) => (e.exit_code() as usize).clamp(1, O - 1),
    }
}

/// Times one bucket request from when it was taken in to its answer.
#[derive(Debug)]
pub struct RequestTimer {
    command: usize,
    forwarded: bool,
    started: Instant,
}

impl RequestTimer {
    pub fn start(op: &BucketOp, hops: usize) -> Self {
        COUNTERS.hops.observe(hops as u64);
        Self {
            command: command_of(op),
            forwarded: false,
            started: Instant::now(),
        }
    }

    /// The request is sent on to its owner rather than applied here.
    pub fn forwarded(&mut self) {
        if !self.forwarded {
            self.forwarded = true;
            COUNTERS.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn done(self, answer: &Result<Reply, RemoteError>) {
        let ns = self.started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        COUNTERS.requests[self.command][outcome_of(answer)].fetch_add(1, Ordering::Relaxed);
        COUNTERS.latency[self.command][self.forwarded as usize].observe(ns);
    }
}

pub fn refused(cause: Refusal) {
    COUNTERS.refused[cause as usize].fetch_add(1, Ordering::Relaxed);
}

pub fn transition(to: Transition) {
    COUNTERS.transitions[to as usize].fetch_add(1, Ordering::Relaxed);
}

/// One group commit: `writes` sharing one sync that took `took`.
pub fn commit(writes: usize, took: Duration) {
    COUNTERS.commit_batch.observe(writes as u64);
    COUNTERS.commit_ns.observe(took.as_nanos().min(u64::MAX as u128) as u64);
}

/// A watch's poll waiting at this node, the bucket's owner, for a change: counted while it
/// lives (`kvnode_watches_waiting`).
#[derive(Debug)]
pub struct WatchWaiting(());

impl WatchWaiting {
    pub fn start() -> Self {
        COUNTERS.watches_waiting.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for WatchWaiting {
    fn drop(&mut self) {
        COUNTERS.watches_waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn gossip_sent(bytes: usize) {
    COUNTERS.gossip_sent.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub fn gossip_received(bytes: usize) {
    COUNTERS.gossip_received.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// A count with its label's value (`state="alive"`, `cause="wrong_secret"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labelled {
    pub label: String,
    pub count: u64,
}

/// Requests of one command that ended one way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCount {
    pub command: String,
    pub outcome: String,
    pub count: u64,
}

/// The latencies of one command, answered here or forwarded, in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub command: String,
    pub path: String,
    pub nanos: Hist,
}

/// Every figure of a node at one moment: what `/metrics` and `kvnode stats` show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub node: String,
    /// Since the node started, in milliseconds.
    pub uptime_ms: u64,
    /// Only the (command, outcome) pairs that occurred.
    pub requests: Vec<RequestCount>,
    /// Only the (command, path) pairs that occurred.
    pub latency: Vec<Latency>,
    /// Bucket requests this node sent on to their owner.
    pub forwarded: u64,
    /// For each bucket request taken in, the nodes it had crossed before this one.
    pub hops: Hist,
    /// Authenticated QUIC connections open (clients' and other nodes').
    pub connections_open: u64,
    /// Watches waiting here, at the owner of their bucket, for a change (a watch is a
    /// sequence of polls: one between two polls is not counted).
    pub watches_waiting: u64,
    /// By cause, every cause listed.
    pub handshakes_refused: Vec<Labelled>,
    /// Members this node knows (itself included), by state, every state listed.
    pub members: Vec<Labelled>,
    /// Members this node saw become suspect or dead.
    pub transitions: Vec<Labelled>,
    pub table_version: u64,
    /// Replicated ranges this node holds, by its role in each: `leader`, `follower` (both
    /// listed), as its driver last saw them.
    pub ranges: Vec<Labelled>,
    /// Writes per group commit (on disk only).
    pub commit_batch: Hist,
    /// How long each group commit's write and sync took, in nanoseconds.
    pub commit_nanos: Hist,
    /// The data directory's size; `None` in memory.
    pub store_disk_bytes: Option<u64>,
    /// The keys stored; `None` on disk (see `Store::key_count`).
    pub store_keys: Option<u64>,
    pub gossip_sent_bytes: u64,
    pub gossip_received_bytes: u64,
    pub process: process::Process,
}

/// When this process's counting began (the node's start, near enough).
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Marks the node's start, for `uptime_ms`.
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

impl Snapshot {
    /// The counted figures now; the node fills in the ones read from its state.
    pub fn counted(node: &str) -> Self {
        let c = &COUNTERS;
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for (ci, command) in COMMANDS.iter().enumerate() {
            for (oi, outcome) in OUTCOMES.iter().enumerate() {
                let count = c.requests[ci][oi].load(Ordering::Relaxed);
                if count > 0 {
                    requests.push(RequestCount {
                        command: command.to_string(),
                        outcome: outcome.to_string(),
                        count,
                    });
                }
            }
            for (pi, path) in PATHS.iter().enumerate() {
                let nanos = c.latency[ci][pi].read();
                if nanos.count() > 0 {
                    latency.push(Latency {
                        command: command.to_string(),
                        path: path.to_string(),
                        nanos,
                    });
                }
            }
        }
        let labelled = |names: &[&str], counts: &[AtomicU64]| {
            names
                .iter()
                .zip(counts)
                .map(|(n, c)| Labelled {
                    label: n.to_string(),
                    count: c.load(Ordering::Relaxed),
                })
                .collect()
        };
        Snapshot {
            node: node.to_string(),
            uptime_ms: STARTED.get().map_or(0, |s| s.elapsed().as_millis() as u64),
            requests,
            latency,
            forwarded: c.forwarded.load(Ordering::Relaxed),
            hops: c.hops.read(),
            handshakes_refused: labelled(&REFUSALS, &c.refused),
            transitions: labelled(&TRANSITIONS, &c.transitions),
            commit_batch: c.commit_batch.read(),
            commit_nanos: c.commit_ns.read(),
            gossip_sent_bytes: c.gossip_sent.load(Ordering::Relaxed),
            gossip_received_bytes: c.gossip_received.load(Ordering::Relaxed),
            watches_waiting: c.watches_waiting.load(Ordering::Relaxed),
            process: process::Process::read(),
            ..Snapshot::default()
        }
    }

    /// The count of `command` requests that ended as `outcome`.
    pub fn requests_of(&self, command: &str, outcome: &str) -> u64 {
        self.requests
            .iter()
            .find(|r| r.command == command && r.outcome == outcome)
            .map_or(0, |r| r.count)
    }
}

/// What `kvnode stats` is answered: the figures now, and the counted ones about 10 s ago
/// (kept by the node, so one question gives rates; none yet in a node's first second).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub now: Snapshot,
    pub earlier: Option<Earlier>,
}

/// The counted figures of an earlier moment, and how long before `now` it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Earlier {
    pub ms_before: u64,
    pub counted: Snapshot,
}

/// The window rates and quantiles are taken over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Counted figures taken once a second over the last [`WINDOW`].
static RECENT: Mutex<std::collections::VecDeque<(Instant, Snapshot)>> = Mutex::new(std::collections::VecDeque::new());

/// Keeps a reading for [`earlier`]; called once a second by the node.
pub fn sample(node: &str) {
    let now = Instant::now();
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    recent.push_back((now, Snapshot::counted(node)));
    // Keep the newest reading at least WINDOW old, and none older.
    while recent.len() > 1 && now.duration_since(recent[1].0) >= WINDOW {
        recent.pop_front();
    }
}

/// The oldest reading kept (about [`WINDOW`] ago), to subtract from the figures now.
pub fn earlier() -> Option<Earlier> {
    let recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    let (at, counted) = recent.front()?;
    Some(Earlier {
        ms_before: at.elapsed().as_millis() as u64,
        counted: counted.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_exit_codes() {
        assert_eq!(OUTCOMES[outcome_of(&Ok(Reply::Done))], "ok");
        let missing = RemoteError::BucketNotFound {
            bucket: b"b".to_vec().into(),
        };
        assert_eq!(OUTCOMES[outcome_of(&Err(missing))], "not_found");
        assert_eq!(OUTCOMES[outcome_of(&Err(RemoteError::invalid("x")))], "invalid");
        let internal = RemoteError::Internal {
            node: "a".into(),
            reason: "r".into(),
        };
        assert_eq!(OUTCOMES[outcome_of(&Err(internal))], "internal");
    }

    #[test]
    fn a_timed_request_is_counted_by_command_outcome_and_path() {
        let before = Snapshot::counted("n");
        let mut t = RequestTimer::start(&BucketOp::Route, 2);
        t.forwarded();
        t.forwarded();
        t.done(&Ok(Reply::Done));
        let after = Snapshot::counted("n");
        assert_eq!(after.requests_of("route", "ok") - before.requests_of("route", "ok"), 1);
        assert_eq!(after.forwarded - before.forwarded, 1);
        let forwarded = |s: &Snapshot| {
            s.latency
                .iter()
                .find(|l| l.command == "route" && l.path == "forwarded")
                .map_or(0, |l| l.nanos.count())
        };
        assert_eq!(forwarded(&after) - forwarded(&before), 1);
    }
}
