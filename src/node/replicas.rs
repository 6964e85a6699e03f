//! The node's Raft driver (issue 25, step 4 of `docs/design/replication.md`): one task owns
//! every group this node holds ([`kvnode_replica::Replicas`]), ticks them all from one 50 ms
//! timer, takes frames, proposals, reads and table changes from one inbox, and runs one round
//! at a time: `poll_round` → send the early frames → persist → `handle_persisted` → send the
//! rest, answer proposals and reads, publish leaders.
//!
//! Knows no quinn: frames leave through [`Outbox`] (`node::raft_link` in a node, channels in
//! the tests here). Groups come from the routing table: each entry of two or more nodes that
//! names this node, and each range on the move that names it (issue 26): the driver tells
//! the group the move's nodes, publishes the moves it led to completion for the node to
//! finish in the table, and drops a group once the table no longer names this node in it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kvnode_replica::{
    Command, Effect, Failure, Frame, Generation, GroupStore, LeaseStanding, NodeIds, Output, ProposalId, ProposeError,
    RaftMsg, RangeId, ReplicaConfig, Replicas, Role, node_id,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::lease::Leases;
use crate::names::NodeName;
use crate::routing::{Entry, RoutingTable};
use crate::store::{Ended, NodeGroupStore, Store};

/// The driver's tick: elections after 10–20 silent ticks (0.5–1 s), heartbeats every 2.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// How often (in ticks) a leader may hand a range back to its preferred leader: once per
/// longest election timeout (20 ticks, 1 s), so a transfer that failed has timed out first.
const HAND_BACK_TICKS: u32 = 20;

/// How long a range held here may have no leader before the driver warns of it (and again
/// as long again): 10 s at the design's tick.
const LEADERLESS_TICKS: u64 = 200;

/// The applied entries a group's log keeps before the older half is dropped: memory and disk
/// stay bounded under any number of writes.
const LOG_KEEP: u64 = 10_000;

/// How many inputs the inbox holds; a frame offered to a full inbox is dropped (Raft resends).
const INBOX: usize = 4096;

/// How often (in ticks) groups the table no longer names this node in are looked at again
/// (one whose drop had to wait for its log to be applied).
const SETTLE_TICKS: u64 = 10;

/// The store under each group: the range's data in the node's store, its log and state
/// written in the same group commit as plain puts (`store::group`).
pub(crate) type GroupStoreImpl = NodeGroupStore;

/// Where frames go: one per peer per round.
pub(crate) trait Outbox: Send + Sync + 'static {
    /// Sends `frame` to node `to` (dropping it when it cannot: Raft resends what matters).
    fn send(&self, to: &NodeName, frame: Frame);

    /// Sends a snapshot to node `to` on a stream of its own, then tells the driver whether it
    /// arrived ([`Input::SnapshotSent`]): until told, raft-rs holds that replica in snapshot
    /// state, and a snapshot asked for is sent again at every heartbeat. By default, in a
    /// frame (the driver's tests).
    fn send_snapshot(&self, to: &NodeName, range: RangeId, generation: Generation, msg: RaftMsg) {
        self.send(
            to,
            Frame {
                msgs: vec![(range, generation, msg)],
                ..Frame::default()
            },
        );
    }
}

/// Why a proposal or read was not served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Another replica leads (if known): ask it.
    #[error("not the leader of range {range}")]
    NotLeader { range: RangeId, leader: Option<NodeName> },
    /// Not taken into the log, or another entry committed at its index: it never took effect.
    #[error("range {0}: the write was dropped by a change of leader; it did not take effect, retry it")]
    Dropped(RangeId),
    /// The write may or may not have taken effect.
    #[error("range {0}: the write's outcome is unknown (a snapshot covered it); read before retrying")]
    Unknown(RangeId),
    /// This node holds no group for the range (the table changed, or it is not a replica).
    #[error("range {0} has no replica group on this node")]
    NoGroup(RangeId),
    /// The driver stopped (the node is stopping, or it is being restarted after a failure).
    #[error("the replica driver stopped; the outcome is unknown")]
    Stopped,
}

/// One input to the driver.
pub(crate) enum Input {
    /// A peer's raft frame; `from` is the name the connection authenticated.
    Frame { from: NodeName, frame: Frame },
    /// A write to a range this node leads; answered once applied here.
    Propose {
        range: RangeId,
        command: Command,
        done: oneshot::Sender<Result<Effect, Refused>>,
    },
    /// A linearizable read: answered once the leader's applied state covers it.
    Read {
        range: RangeId,
        done: oneshot::Sender<Result<(), Refused>>,
    },
    /// A snapshot sent on a stream of its own reached `to` whole, or did not.
    SnapshotSent {
        range: RangeId,
        to: NodeName,
        delivered: bool,
    },
    /// A streamed snapshot of `range` from `from` began to arrive: `Ok` when the group takes
    /// it, and is held still until [`Input::Installed`] or [`Input::InstallFailed`]; only
    /// then may its data be written (`node::raft_link`).
    BeginInstall {
        from: NodeName,
        range: RangeId,
        generation: Generation,
        msg: RaftMsg,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// The streamed snapshot's data is in the store: the group takes the message.
    Installed {
        from: NodeName,
        range: RangeId,
        msg: RaftMsg,
    },
    /// The streamed snapshot did not arrive whole, and the group was cleared
    /// (`Store::wipe_group`): it starts again empty.
    InstallFailed { range: RangeId },
}

/// What this node knows of one range's leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaderView {
    pub leader: Option<NodeName>,
    pub term: u64,
}

/// A move this node's group completed, for the node to finish in the table
/// (`Node::finish_move`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finished {
    /// The range's entry as its group now holds it.
    pub entry: Entry,
    /// The move ends the group (`entry` is this node alone): the history sealed here
    /// (`store::ended`), which may be finished whatever move the table holds of the range.
    pub ended: Option<Generation>,
}

/// Every range this node is a replica of, and its leader as last seen.
pub(crate) type Leaders = BTreeMap<RangeId, LeaderView>;

/// The node's side of the driver: its inbox and the leaders it publishes. The receiving end
/// outlives a restart of the driver part (a panic in raft-rs): a new run takes it over.
pub(crate) struct ReplicasHandle {
    inbox: mpsc::Sender<Input>,
    taken: Arc<tokio::sync::Mutex<mpsc::Receiver<Input>>>,
    leaders: watch::Sender<Leaders>,
    /// The routing table the groups follow (set by the node whenever it installs one).
    table: watch::Sender<Option<Arc<RoutingTable>>>,
    /// The moves this node led to completion, for the node to finish in the table
    /// (`Node::finish_move`).
    finished: watch::Sender<Vec<Finished>>,
    /// The applied entries a group's log keeps ([`LOG_KEEP`]; less in tests).
    log_keep: u64,
    /// The ranges whose streamed snapshot is being written (from `Input::BeginInstall` to
    /// `Input::Installed` or `InstallFailed`): kept across runs, so that a run started while
    /// one is written holds its group still too.
    installing: Arc<std::sync::Mutex<BTreeSet<RangeId>>>,
    /// The read leases of the ranges this node leads ([`super::lease`]).
    leases: Arc<Leases>,
    /// Groups on this node's disk with entries they have not applied, until the driver has
    /// followed its first table of a run (and started those it replays: then in `leaders`).
    /// A request for bytes the table gives this node alone waits meanwhile
    /// (`Node::ending_here`): such a group may yet apply older writes over them.
    unapplied: std::sync::Mutex<BTreeSet<RangeId>>,
}

/// Hands `table` to the driver's watch unless the driver has one that supersedes it.
pub(crate) fn follow_table(tx: &watch::Sender<Option<Arc<RoutingTable>>>, table: Arc<RoutingTable>) {
    tx.send_if_modified(|held| {
        let newer = held.as_ref().is_none_or(|h| table.supersedes(h) || **h == *table);
        if newer {
            *held = Some(table);
        }
        newer
    });
}

impl ReplicasHandle {
    pub(crate) fn new() -> Self {
        let (inbox, rx) = mpsc::channel(INBOX);
        ReplicasHandle {
            inbox,
            taken: Arc::new(tokio::sync::Mutex::new(rx)),
            leaders: watch::Sender::new(Leaders::new()),
            table: watch::Sender::new(None),
            finished: watch::Sender::new(Vec::new()),
            log_keep: LOG_KEEP,
            installing: Arc::default(),
            leases: Arc::default(),
            unapplied: Default::default(),
        }
    }

    /// Notes the groups on `store` with entries they have not applied (see `unapplied`):
    /// before the node serves, and at the start of each run of the driver.
    pub(crate) fn hold_unapplied(&self, store: &Store) {
        let held: BTreeSet<RangeId> = store
            .groups()
            .unwrap_or_default()
            .into_iter()
            .filter(|&range| {
                store
                    .group(range, Generation::LEGACY, None)
                    .is_ok_and(|group| GroupStore::applied(&group) < raft::Storage::last_index(&group).unwrap_or(0))
            })
            .collect();
        *self.unapplied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = held;
    }

    /// Whether a group this node runs covers `byte` (as published in `leaders`), or one on
    /// disk with unapplied entries does while the driver has not yet followed its first
    /// table (see `unapplied`). Cheap: a read of the published map and a mutex, no subscribe.
    pub(crate) fn covers(&self, byte: u8) -> bool {
        let within = |r: &RangeId| r.first <= byte && byte <= r.last;
        self.leaders.borrow().keys().any(within)
            || self
                .unapplied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .any(within)
    }

    /// The driver has followed its first table: what it replays is in `leaders` now.
    fn release_unapplied(&self) {
        let had = std::mem::take(&mut *self.unapplied.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !had.is_empty() {
            // Wakes the requests waiting on `leaders` to look again.
            self.leaders.send_modify(|_| {});
        }
    }

    /// Whether this node leads `range` with a read lease that holds now: a read may then be
    /// served from its applied state without a read-index round. Asked again after the read
    /// ([`super::lease`]).
    pub(crate) fn leased(&self, range: RangeId) -> bool {
        self.leases.holds(range, super::lease::now())
    }

    /// Hands the driver `table` now (the tests' way; a node's goes through the save).
    #[cfg(test)]
    pub(crate) fn set_table(&self, table: Arc<RoutingTable>) {
        follow_table(&self.table, table);
    }

    /// Where the routing tables for the driver go (it starts, moves and drops groups to
    /// follow them), by [`follow_table`]: handed in by the task that saved each
    /// (`Node::save_table`).
    pub(crate) fn table_sender(&self) -> watch::Sender<Option<Arc<RoutingTable>>> {
        self.table.clone()
    }

    /// The moves this node's groups have completed, as published.
    pub(crate) fn finished(&self) -> watch::Receiver<Vec<Finished>> {
        self.finished.subscribe()
    }

    /// Offers an input without waiting; a full inbox drops it (a frame: Raft resends).
    pub(crate) fn offer(&self, input: Input) -> bool {
        self.inbox.try_send(input).is_ok()
    }

    /// Sends an input, waiting for room.
    pub(crate) async fn send(&self, input: Input) -> Result<(), Refused> {
        self.inbox.send(input).await.map_err(|_| Refused::Stopped)
    }

    /// Proposes `command`; resolves once applied here, with what it did, or refused.
    pub(crate) async fn propose(&self, range: RangeId, command: Command) -> Result<Effect, Refused> {
        let (done, answer) = oneshot::channel();
        self.send(Input::Propose { range, command, done }).await?;
        answer.await.unwrap_or(Err(Refused::Stopped))
    }

    /// Asks for a read-index round; resolves once the range's applied state may be read here.
    pub(crate) async fn read(&self, range: RangeId) -> Result<(), Refused> {
        let (done, answer) = oneshot::channel();
        self.send(Input::Read { range, done }).await?;
        answer.await.unwrap_or(Err(Refused::Stopped))
    }

    /// The leaders as last published, and a way to wait for the next change.
    pub(crate) fn leaders(&self) -> watch::Receiver<Leaders> {
        self.leaders.subscribe()
    }

    /// One run of the driver, until `stop`; an `Err` (or a panic) is a failure for the
    /// supervisor, which starts a new run on the same inbox. A new run rebuilds its groups
    /// from the table (and, with the node's store, from what that store holds); proposals and
    /// reads the failed run held are answered `Stopped` (their waiters see the channel close).
    pub(crate) async fn run(
        &self,
        me: NodeName,
        store: Store,
        outbox: Arc<dyn Outbox>,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let mut inbox = self.taken.lock().await;
        self.hold_unapplied(&store);
        let mut tables = self.table.subscribe();
        let mut driver = Driver::new(me, store, outbox, self.leaders.clone());
        driver.note_ended()?;
        driver.log_keep = self.log_keep;
        driver.finished = self.finished.clone();
        driver.installing = Arc::clone(&self.installing);
        // A lease of an earlier run is not this run's to keep.
        self.leases.clear();
        driver.leases = Arc::clone(&self.leases);
        let first = tables.borrow_and_update().clone();
        let followed = first.is_some();
        if let Some(table) = first {
            driver.table(table);
            driver.recover_installs().await;
            driver.resume_stored();
        }
        driver.settle().await?;
        if followed {
            self.release_unapplied();
        }
        driver.round().await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    driver.replicas.handle_tick();
                    driver.hand_back();
                    driver.warn_leaderless();
                    driver.publish_finished();
                    if driver.ticks.is_multiple_of(SETTLE_TICKS) {
                        driver.settle().await?;
                    }
                }
                Ok(()) = tables.changed() => {
                    let table = tables.borrow_and_update().clone();
                    if let Some(table) = table {
                        driver.table(table);
                        driver.recover_installs().await;
                        driver.resume_stored();
                    }
                    driver.settle().await?;
                    self.release_unapplied();
                }
                input = inbox.recv() => match input {
                    Some(input) => driver.take(input).await,
                    None => return Ok(()),
                },
            }
            // Everything queued meanwhile joins this round (bounded, so ticks are not starved).
            for _ in 0..1024 {
                match inbox.try_recv() {
                    Ok(input) => driver.take(input).await,
                    Err(_) => break,
                }
            }
            driver.round().await?;
        }
    }
}

/// The driver's state within one run.
struct Driver {
    me: NodeName,
    store: Store,
    replicas: Replicas<GroupStoreImpl>,
    outbox: Arc<dyn Outbox>,
    /// Every node named in a replicated entry, by Raft id.
    names: HashMap<u64, NodeName>,
    proposals: HashMap<ProposalId, (RangeId, oneshot::Sender<Result<Effect, Refused>>)>,
    reads: HashMap<(RangeId, u64), WaitingRead>,
    leaders: watch::Sender<Leaders>,
    /// Each range's preferred leader (the first named), by Raft id.
    first: BTreeMap<RangeId, u64>,
    /// Ticks of this run, and the tick each range was last handed back at.
    ticks: u64,
    handed_back: BTreeMap<RangeId, u64>,
    /// The tick each range held here was last seen to have no leader from
    /// ([`Driver::warn_leaderless`]).
    leaderless: BTreeMap<RangeId, u64>,
    log_keep: u64,
    /// The table the groups follow (none before the node sets one).
    table: Option<Arc<RoutingTable>>,
    /// The moves under way of ranges this node is in the group of: where each goes.
    moves: BTreeMap<RangeId, Entry>,
    finished: watch::Sender<Vec<Finished>>,
    /// The histories sealed onto this node (`store::ended`) of the ranges whose group the
    /// table runs: each group takes no target (it never changes its configuration again),
    /// and each is published as finished onto this node.
    sealed: BTreeMap<RangeId, Generation>,
    /// Ranges whose group the table runs, of a history that ended and that this node
    /// dropped: started only to take a live leader's snapshot, or (sealed here) not at all
    /// (said once each).
    ended_kept: BTreeSet<RangeId>,
    /// Groups kept although the table names this node in none (said once each).
    kept_voting: BTreeSet<RangeId>,
    /// Ranges whose group here (running, or on disk) is of another history than the one the
    /// table gives the range ([`Generation`]): retired by `settle` ([`Driver::retire`]),
    /// then the table's group starts.
    stale: BTreeSet<RangeId>,
    /// Of those, the ones `retire` keeps for now (said once each).
    stale_kept: BTreeSet<RangeId>,
    /// Groups a voter of said its configuration leaves this node out, while this node held
    /// nothing past it (`Output::removed`), with the last index this node's log held when the
    /// core checked: not kept for voting while the log is still that (a log that grew since
    /// may hold a configuration that counts this node again).
    removed: BTreeMap<RangeId, u64>,
    /// Ranges whose entry has named this node in a table of this run.
    named: BTreeSet<RangeId>,
    /// Ranges whose group the table starts here, waiting for this node's group of a range
    /// that overlaps it with other bounds to go first (a split or merge: see
    /// [`Driver::overlapped`]).
    blocked: BTreeSet<RangeId>,
    /// Groups on disk (not running) of ranges that overlap a group the table starts here,
    /// whose history ended while this node was away: `settle` drops their records, keeping
    /// the data, before that group starts ([`Driver::overlapped`]).
    orphans: BTreeMap<RangeId, Generation>,
    /// The handle's ranges whose streamed snapshot is being written.
    installing: Arc<std::sync::Mutex<BTreeSet<RangeId>>>,
    leases: Arc<Leases>,
    /// How long a lease lasts from the read-index round that renews it.
    lease: Duration,
    /// The ranges of the store's fence: the groups running here ([`Driver::fence`]).
    fenced: BTreeSet<RangeId>,
}

/// A read waiting for its read-index round: answered through `done`; `asked` and `standing`
/// (where the leader stood when it came) renew the range's lease once it is confirmed.
struct WaitingRead {
    done: oneshot::Sender<Result<(), Refused>>,
    asked: Option<Duration>,
    standing: Option<LeaseStanding>,
}

impl Driver {
    fn new(me: NodeName, store: Store, outbox: Arc<dyn Outbox>, leaders: watch::Sender<Leaders>) -> Self {
        // A new incarnation at every run, so a proposal of an earlier run is never taken for
        // one of this run; random, as a restarted node has no counter of its own in memory.
        let incarnation = rand::random::<u64>();
        let mut config = ReplicaConfig::new(node_id(me.as_str()), rand::random::<u64>(), incarnation);
        config.logger = slog::Logger::root(TracingDrain, slog::o!());
        let lease = TICK * u32::try_from(config.lease()).unwrap_or(0);
        leaders.send_modify(Leaders::clear);
        // No group runs yet: plain writes go anywhere the table sends them.
        store.set_fences([]);
        Driver {
            me,
            store,
            replicas: Replicas::new(config),
            outbox,
            names: HashMap::new(),
            proposals: HashMap::new(),
            reads: HashMap::new(),
            leaders,
            first: BTreeMap::new(),
            ticks: 0,
            handed_back: BTreeMap::new(),
            leaderless: BTreeMap::new(),
            log_keep: LOG_KEEP,
            table: None,
            moves: BTreeMap::new(),
            finished: watch::Sender::new(Vec::new()),
            sealed: BTreeMap::new(),
            ended_kept: BTreeSet::new(),
            kept_voting: BTreeSet::new(),
            stale: BTreeSet::new(),
            stale_kept: BTreeSet::new(),
            removed: BTreeMap::new(),
            named: BTreeSet::new(),
            blocked: BTreeSet::new(),
            orphans: BTreeMap::new(),
            installing: Arc::default(),
            leases: Arc::default(),
            lease,
            fenced: BTreeSet::new(),
        }
    }

    /// Tells the core every history that ended here (`store::ended`), whose probes it must
    /// never answer "nothing held".
    fn note_ended(&mut self) -> Result<(), String> {
        let ended = self
            .store
            .ended_all()
            .map_err(|e| format!("the ranges' ended histories could not be read: {e}"))?;
        for (range, list) in ended {
            match list {
                Some(list) => {
                    for e in list.iter().rev() {
                        self.replicas.note_ended(range, Some(e.generation));
                    }
                }
                None => {
                    tracing::error!(%range, "range {range}'s ended record is damaged: no lost-state probe of the range is answered while this node holds nothing of it");
                    self.replicas.note_ended(range, None);
                }
            }
        }
        Ok(())
    }

    /// Fences the store to the groups running here (`store::fence`): plain writes of their
    /// bytes are refused. Called before each round is written, so a group born over a single
    /// owner's data (a move's start) writes nothing, and takes no snapshot, before every
    /// plain write of its bytes is in the store or refused; and when a group is forgotten,
    /// before requests stop waiting for it, so the bytes' single owner writes them again.
    /// Both sets are in order, so the check at every round allocates nothing.
    fn fence(&mut self) {
        if self.replicas.ranges().eq(self.fenced.iter().copied()) {
            return;
        }
        self.fenced = self.replicas.ranges().collect();
        self.store.set_fences(self.fenced.iter().map(|r| (r.first, r.last)));
    }

    async fn take(&mut self, input: Input) {
        match input {
            Input::Frame { from, frame } => {
                // A node no entry names can still be answered (a replica a move removed
                // while it was away, asking for votes: `Frame::removed` tells it).
                let id = node_id(from.as_str());
                self.names.entry(id).or_insert_with(|| from.clone());
                let dropped = self.replicas.handle_frame(id, frame);
                if dropped > 0 {
                    tracing::trace!(%from, dropped, "raft messages dropped (not for a group held here, or not from their sender)");
                }
            }
            Input::Propose { range, command, done } => match self.replicas.propose(range, &command) {
                Ok(id) => {
                    self.proposals.insert(id, (range, done));
                }
                Err(e) => {
                    let _ = done.send(Err(self.refused(e)));
                }
            },
            Input::Read { range, done } => match self.replicas.read_index(range) {
                Ok(id) => {
                    let waiting = WaitingRead {
                        done,
                        asked: super::lease::now(),
                        standing: self.replicas.lease_standing(range),
                    };
                    self.reads.insert((range, id), waiting);
                }
                Err(e) => {
                    let _ = done.send(Err(self.refused(e)));
                }
            },
            Input::SnapshotSent { range, to, delivered } => {
                if !delivered {
                    tracing::info!(%range, %to, "a snapshot of range {range} did not reach {to}; it is sent again");
                }
                self.replicas.report_snapshot(range, node_id(to.as_str()), delivered);
            }
            Input::BeginInstall {
                from,
                range,
                generation,
                msg,
                done,
            } => {
                let taken = self
                    .replicas
                    .begin_install(range, generation, node_id(from.as_str()), &msg);
                if taken.is_ok() {
                    self.installs().insert(range);
                    tracing::info!(%range, %from, index = msg.snapshot.as_ref().map_or(0, |s| s.index), "taking a snapshot of range {range} from {from}, streamed");
                }
                let _ = done.send(taken.map_err(|e| e.to_string()));
            }
            Input::Installed { from, range, msg } => {
                self.installs().remove(&range);
                if !self.replicas.end_install(range, node_id(from.as_str()), &msg) {
                    // Ruled out by `begin_install`'s check; were it to happen, the range's
                    // data is the snapshot's and the log is not: start the group again empty.
                    tracing::error!(%range, %from, "range {range}'s group did not take the snapshot whose data it wrote; clearing it");
                    if let Err(e) = self.store.wipe_group(range).await {
                        tracing::error!(%range, error = %e, "range {range}'s group could not be cleared; it is cleared at the next start");
                    }
                    self.restart_group(range);
                }
            }
            Input::InstallFailed { range } => {
                self.installs().remove(&range);
                self.restart_group(range);
            }
        }
    }

    /// The ranges whose groups run, not held still for a streamed snapshot: those settling,
    /// compaction and the recovery of installs look at.
    fn ranges_going_on(&self) -> Vec<RangeId> {
        self.replicas
            .ranges()
            .filter(|&r| !self.replicas.installing(r))
            .collect()
    }

    fn installs(&self) -> std::sync::MutexGuard<'_, BTreeSet<RangeId>> {
        self.installing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `range`'s group again from what the store holds (after it was cleared), as the
    /// table says, if this node holds it; else forgets it as `settle` does.
    fn restart_group(&mut self, range: RangeId) {
        self.replicas.abort_install(range);
        if self.replicas.remove_group(range).is_none() {
            return;
        }
        self.leases.end(range);
        if let Some(table) = self.table.clone() {
            self.table(table);
        }
        if !self.replicas.ranges().any(|r| r == range) {
            self.forget(range);
        } else {
            // The core's record of them went with the group it removed.
            self.answer_waiting(range);
        }
    }

    /// After this run started groups: one whose streamed snapshot is still being written (by
    /// a stream taken before the run began) is held still; one whose data is marked as being
    /// replaced with no stream writing it (the run before stopped between the last part and
    /// the snapshot's round) is cleared and started again empty.
    async fn recover_installs(&mut self) {
        let held = self.ranges_going_on();
        for range in held {
            if self.installs().contains(&range) {
                self.replicas.hold(range);
            } else if self.store.install_marked(range) {
                tracing::warn!(%range, "range {range} was left part way through taking a snapshot; clearing it");
                if let Err(e) = self.store.wipe_group(range).await {
                    tracing::error!(%range, error = %e, "range {range}'s group could not be cleared; it is cleared at the next start");
                }
                self.restart_group(range);
            }
        }
    }

    fn refused(&self, e: ProposeError) -> Refused {
        match e {
            ProposeError::UnknownRange(range) => Refused::NoGroup(range),
            ProposeError::NotLeader { range, leader } => Refused::NotLeader {
                range,
                leader: leader.and_then(|id| self.names.get(&id).cloned()),
            },
            // Not in the log: it did not take effect.
            ProposeError::Dropped(range) => Refused::Dropped(range),
        }
    }

    /// Follows the table: starts a group for every range whose group names this node (a
    /// replicated entry, or a range on the move) and has none here yet, and tells each group
    /// where it is to be held (a move's nodes; none when not moving). Groups the table no
    /// longer names this node in are dropped by [`Driver::settle`].
    fn table(&mut self, table: Arc<RoutingTable>) {
        self.moves.clear();
        self.sealed.clear();
        let was_blocked = std::mem::take(&mut self.blocked);
        for entry in table.entries() {
            let Some(nodes) = table.group_of(entry) else { continue };
            let range = RangeId {
                first: entry.first,
                last: entry.last,
            };
            let mut unreadable = false;
            let generation = table.generation_of(range.first, range.last);
            match self.store.sealed(range, generation) {
                // Claimed while this node runs no other history of the range (its bytes
                // are the sealed history's: a seal is given up when another starts here).
                Ok(true) if self.replicas.generation(range).is_none_or(|g| g == generation) => {
                    self.sealed.insert(range, generation);
                }
                Ok(_) => {}
                Err(e) => {
                    // Perhaps sealed: the group takes no target (and no seal is claimed).
                    tracing::error!(%range, error = %e, "range {range}'s ended record could not be read; its group here takes no part in moves");
                    unreadable = true;
                }
            }
            let ids = match NodeIds::new(nodes.iter().map(NodeName::as_str)) {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(%range, error = %e, "cannot start the range's group: two of its replicas' names hash alike; rename one");
                    continue;
                }
            };
            for id in ids.ids() {
                if let Some(name) = ids.name_of(id).and_then(|n| n.parse().ok()) {
                    self.names.insert(id, name);
                }
            }
            if !nodes.contains(&self.me) {
                continue;
            }
            if entry.replicas().contains(&self.me) {
                self.named.insert(range);
            }
            let moving = table.move_of(entry.first, entry.last);
            // During a move, leadership is handed to the first of the move's nodes.
            let preferred = moving.map_or(entry.preferred_leader(), Entry::preferred_leader);
            self.first.insert(range, node_id(preferred.as_str()));
            let generation = table.generation_of(entry.first, entry.last);
            match self.replicas.generation(range) {
                Some(held) if held != generation => {
                    self.stale.insert(range);
                    continue;
                }
                Some(_) => {}
                None if self.overlapped(&table, range) => {
                    if !was_blocked.contains(&range) {
                        tracing::info!(%range, "range {range}'s group waits for this node's group of an overlapping range (cut differently before) to apply its log and end");
                    }
                    self.blocked.insert(range);
                    continue;
                }
                None if !self.start_group(range, generation, entry, moving.is_some()) => continue,
                None => {}
            }
            if self.sealed.contains_key(&range) || unreadable {
                // Sealed here: its configuration never changes again (whatever move the table
                // holds: another coordinator's table may have re-aimed it after the seal).
                let _ = self.replicas.set_target(range, None);
                continue;
            }
            let target = moving.map(|m| m.replicas().iter().map(|n| node_id(n.as_str())).collect());
            if let Some(m) = moving {
                if !self.moves.contains_key(&range) {
                    tracing::info!(%range, to = %m, "range {range} is moving to {m}");
                }
                self.moves.insert(range, m.clone());
            }
            let _ = self.replicas.set_target(range, target);
        }
        self.review_seals(&table);
        self.table = Some(table);
        self.publish_finished();
    }

    /// Gives up the seals made here whose group is gone and whose bytes this node may no
    /// longer hold alone: the table neither runs that history (when this node says where its
    /// data is) nor names this node the range's single owner. The range's bytes may leave
    /// this node from there (moved, re-cut, born into a new group), so "the history ended
    /// onto this node" would no longer say where its data is.
    fn review_seals(&mut self, table: &RoutingTable) {
        let records = match self.store.ended_all() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "the ranges' ended histories could not be read");
                return;
            }
        };
        let held = match self.store.groups() {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(error = %e, "the groups on this node's store could not be listed");
                return;
            }
        };
        let seals = records
            .into_iter()
            .filter_map(|(range, list)| Some((range, list?.into_iter().find(|e| e.here)?)));
        for (range, e) in seals {
            // The sealed group itself, still here (running, or on disk).
            let running = self.replicas.generation(range);
            let stored = || {
                held.contains(&range)
                    && self
                        .store
                        .group(range, e.generation, None)
                        .is_ok_and(|g| g.generation() == e.generation)
            };
            if running == Some(e.generation) || (running.is_none() && stored()) {
                continue;
            }
            let entry = table.entry_for(range.first, range.last);
            let runs = entry.is_some_and(|x| table.group_of(x).is_some())
                && table.generation_of(range.first, range.last) == e.generation;
            let alone =
                entry.is_some_and(|x| x.replicas() == std::slice::from_ref(&self.me) && table.group_of(x).is_none());
            if runs || alone {
                continue;
            }
            let given_up = Ended {
                generation: e.generation,
                here: false,
            };
            match self.store.mark_ended(range, given_up) {
                Ok(()) => {
                    tracing::info!(%range, generation = %e.generation, "range {range}'s history {} was sealed here, and the table gives its bytes to others now: this node no longer says where its data is", e.generation)
                }
                Err(err) => tracing::error!(%range, error = %err, "range {range}'s ended record could not be written"),
            }
        }
    }

    /// With each table: starts each group the store holds (and none runs of) that the table
    /// does not name this node in, when the configuration stored with it counts this node as
    /// a voter, the table runs a group of its range of the same history (generation), and no
    /// range this node holds by the table overlaps it. A voter the range was
    /// moved off while it was down (killed, and restarted since) so learns from the group's
    /// other voters that they no longer count it (`Output::removed`), and [`Driver::settle`]
    /// then drops the group and its data; until then it keeps them, as any voter the table
    /// does not name ("kept voting"). Without this, its group's records and data would stay
    /// on disk, unserved, for good.
    fn resume_stored(&mut self) {
        let Some(table) = self.table.clone() else { return };
        let stored = match self.store.groups() {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "the groups on this node's store could not be listed");
                return;
            }
        };
        let my_id = node_id(self.me.as_str());
        for range in stored {
            if self.replicas.ranges().any(|r| r == range) {
                continue;
            }
            if table.entry_for(range.first, range.last).is_none() && self.carries_on(&table, range) {
                // Cut differently since it ended onto this node (a split or merge gathered
                // here): replayed alone if it has entries it has not applied.
                self.replay_alone(range);
                continue;
            }
            if self.holds_overlapping(&table, range) {
                continue;
            }
            let entry = table.entry_for(range.first, range.last);
            let Some(nodes) = entry.and_then(|e| table.group_of(e)) else {
                if entry.is_some_and(|e| e.replicas() == std::slice::from_ref(&self.me)) {
                    self.replay_alone(range);
                }
                continue;
            };
            if nodes.contains(&self.me) {
                // `Driver::table` starts it, or `Driver::retire` retires it.
                continue;
            }
            let generation = table.generation_of(range.first, range.last);
            let Ok(store) = self.store.group(range, generation, None) else {
                continue;
            };
            if store.generation() != generation {
                continue;
            }
            let Ok(state) = raft::Storage::initial_state(&store) else {
                continue;
            };
            let conf = &state.conf_state;
            if !conf.voters.contains(&my_id) && !conf.voters_outgoing.contains(&my_id) {
                continue;
            }
            let voters = conf.voters.clone();
            match self.replicas.add_group(range, generation, store, &voters) {
                Ok(()) => {
                    // It asks for votes only to be told it was removed: never for real ones,
                    // so it can never lead (a history from before generations, one id for
                    // several, might otherwise win the newer one's votes).
                    self.replicas.mute(range);
                    tracing::info!(%range, "range {range}'s group is on this node's disk with this node a voter, though the table names other nodes: started, to learn from its voters whether they still count this node")
                }
                Err(e) => {
                    tracing::warn!(%range, error = %e, "range {range}'s group on this node's disk could not be started")
                }
            }
        }
    }

    /// Runs again a group found on disk of a range the table names this node alone for (the
    /// group ended here, a move finished onto this node, and the node stopped before it
    /// dropped the group), when its log holds entries it has not applied: applies are written
    /// unsynced, so a crash may have lost some whose writes were acknowledged. Alone, it
    /// elects itself and applies them; then `settle` drops it, keeping the data.
    fn replay_alone(&mut self, range: RangeId) {
        let Ok(store) = self.store.group(range, Generation::LEGACY, None) else {
            return;
        };
        let Ok(state) = raft::Storage::initial_state(&store) else {
            return;
        };
        let last = raft::Storage::last_index(&store).unwrap_or(0);
        // Only a group that ended onto this node counts it alone (configurations are applied
        // synced); another one's log must never be applied over this node's data.
        if GroupStore::applied(&store) >= last || !self.alone_in(&state.conf_state) {
            return;
        }
        self.start_to_apply(range, store, &state.conf_state.voters);
    }

    /// Starts `range`'s group found on disk, under its own history, to apply the entries its
    /// log holds past its applied index ([`Driver::replay_alone`], [`Driver::retire`]).
    fn start_to_apply(&mut self, range: RangeId, store: GroupStoreImpl, voters: &[u64]) {
        match self.replicas.add_group(range, store.generation(), store, voters) {
            Ok(()) => {
                // Published, so that requests for its bytes wait for it (`Node::ending_here`).
                self.leaders.send_modify(|l| {
                    l.insert(range, LeaderView { leader: None, term: 0 });
                });
                tracing::warn!(%range, "range {range}'s group, ended here, is on this node's disk with entries it has not applied: started until it has applied them")
            }
            Err(e) => {
                tracing::error!(%range, error = %e, "range {range}'s group on this node's disk could not be started to apply its log")
            }
        }
    }

    /// Whether `range`'s group must wait before it starts here: this node runs a group of a
    /// range that overlaps it with other bounds (the table split or merged it since), which
    /// [`Driver::settle`] ends first, once it has applied its log where this node carries
    /// the data on ([`Driver::carries_on`]). Two groups never write the same bytes here, and
    /// a group born over the data in place starts from everything the old one committed.
    ///
    /// Groups of such ranges found on disk (not running): one that ended onto this node
    /// alone (its configuration counts this node alone: configurations are applied synced)
    /// with entries it has not applied (applies are written unsynced) runs alone to apply
    /// them first, as [`Driver::replay_alone`] does; one whose history the table says ended
    /// has its records dropped by `settle` first (`orphans`: this node missed its end, and
    /// its log must never be applied over the bytes' newer data); any other is left as it is.
    fn overlapped(&mut self, table: &RoutingTable, range: RangeId) -> bool {
        let other = |r: RangeId| r != range && r.first <= range.last && range.first <= r.last;
        if self.replicas.ranges().any(other) {
            return true;
        }
        let stored = match self.store.groups() {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "the groups on this node's store could not be listed");
                return false;
            }
        };
        let mut wait = false;
        for old in stored.into_iter().filter(|&r| other(r)) {
            let Ok(store) = self.store.group(old, Generation::LEGACY, None) else {
                continue;
            };
            let Ok(state) = raft::Storage::initial_state(&store) else {
                continue;
            };
            let last = raft::Storage::last_index(&store).unwrap_or(0);
            if GroupStore::applied(&store) < last && self.alone_in(&state.conf_state) && self.carries_on(table, old) {
                self.start_to_apply(old, store, &state.conf_state.voters);
                wait = true;
            } else if table.has_ended(old.first, old.last, store.generation()) {
                self.orphans.insert(old, store.generation());
                wait = true;
            }
        }
        wait
    }

    /// Whether the table names this node the single owner of a range that overlaps `range`
    /// with other bounds: the range's bytes here carry on there (a split or merge gathered
    /// them onto this node).
    fn carries_on(&self, table: &RoutingTable, range: RangeId) -> bool {
        cut_differently(table, range).any(|e| e.replicas() == std::slice::from_ref(&self.me))
    }

    /// Whether a group's configuration is this node alone (it commits and applies alone).
    fn alone_in(&self, conf: &raft::prelude::ConfState) -> bool {
        conf.voters == [node_id(self.me.as_str())]
            && conf.voters_outgoing.is_empty()
            && conf.learners.is_empty()
            && conf.learners_next.is_empty()
    }

    /// Whether the table names this node for a range that overlaps `range` with other bounds
    /// (a single owner's, a group's, or a move's new nodes).
    fn holds_overlapping(&self, table: &RoutingTable, range: RangeId) -> bool {
        cut_differently(table, range)
            .any(|e| e.replicas().contains(&self.me) || table.group_of(e).is_some_and(|n| n.contains(&self.me)))
    }

    /// Starts the group of `range` here. A replica of a replicated entry takes what the store
    /// holds of it, or an uninitialised one that asks the other replicas whether the range
    /// is new (a node cannot tell a new range from one it held and forgot). The single owner
    /// of a range on the move makes it a group of one over the data in place (the group's
    /// snapshot is the range's buckets), and campaigns at once. A node the move adds starts
    /// uninitialised and waits for the leader's snapshot, voting for nothing until then.
    /// A group of `generation` (the table's): one found on disk of another is left for
    /// [`Driver::retire`].
    ///
    /// A history that ended and whose group this node dropped (`store::ended`) starts
    /// uninitialised without asking whether the range is new, as a move's new node does: it
    /// takes a live leader's snapshot, and bootstraps nothing. Else, every replica in the same
    /// case (a table of another coordinator, still running the history, won over the one
    /// that ended it), they would agree the range is new and bootstrap it over nothing. The
    /// range then waits for a table that says where its data is. One sealed here does not
    /// start at all: its data is this node's, which says so (`publish_finished`).
    fn start_group(&mut self, range: RangeId, generation: Generation, entry: &Entry, moving: bool) -> bool {
        let ended = match self.ended_and_dropped(range, generation) {
            Ok(ended) => ended,
            Err(e) => {
                tracing::error!(%range, error = %e, "range {range}'s group does not start");
                return false;
            }
        };
        match ended {
            Some(Ended { here: true, .. }) => {
                // Sealed here: no other node holds it, and its data is this node's already.
                if self.ended_kept.insert(range) {
                    tracing::warn!(%range, %generation, "the table runs range {range}'s group of history {generation}, which was sealed onto this node and ended: not started again; this node says where its data is");
                }
                return false;
            }
            Some(_) => {
                if self.ended_kept.insert(range) {
                    tracing::warn!(%range, %generation, "the table runs range {range}'s group of history {generation}, which ended, and which this node dropped: started empty, to take a live leader's snapshot only (it asks no one whether the range is new); the range waits for a table that says where its data is");
                }
            }
            None => {
                self.ended_kept.remove(&range);
            }
        }
        // Another history of the range starts here: this node's bytes of it may become that
        // one's, so no history sealed here may be said to be on them any more.
        if let Err(e) = self.store.unseal(range, generation) {
            tracing::error!(%range, error = %e, "range {range}'s seals here could not be given up; its group does not start");
            return false;
        }
        let ended = ended.is_some();
        let my_id = node_id(self.me.as_str());
        let (bootstrap, voters): (Option<Vec<u64>>, Vec<u64>) = if ended || !entry.replicas().contains(&self.me) {
            (None, vec![])
        } else if entry.is_replicated() {
            (None, entry.replicas().iter().map(|n| node_id(n.as_str())).collect())
        } else {
            (Some(vec![my_id]), vec![my_id])
        };
        let store = match self.store.group(range, generation, bootstrap.as_deref()) {
            Ok(store) => store,
            Err(e) => {
                tracing::error!(%range, error = %e, "cannot open the range's group in the store");
                return false;
            }
        };
        if store.generation() != generation {
            self.stale.insert(range);
            return false;
        }
        if let Err(e) = self.replicas.add_group(range, generation, store, &voters) {
            tracing::error!(%range, error = %e, "cannot start the range's group");
            return false;
        }
        if bootstrap.is_some() {
            let _ = self.replicas.campaign(range);
        }
        self.stale_kept.remove(&range);
        tracing::info!(%range, moving, nodes = %entry, "replica group started");
        self.leaders.send_modify(|l| {
            l.insert(range, LeaderView { leader: None, term: 0 });
        });
        true
    }

    /// The record a drop of `range`'s group of `generation`, whose history the table says
    /// ended, keeps: a seal made here stays one (only [`Driver::seal`] makes one); any other
    /// is a history that ended elsewhere.
    /// `None` when the record cannot be read: the caller keeps the group (dropped, a seal
    /// it holds could be lost).
    fn ended_on_drop(&self, range: RangeId, generation: Generation) -> Option<Ended> {
        match self.store.sealed(range, generation) {
            Ok(here) => Some(Ended { generation, here }),
            Err(e) => {
                tracing::error!(%range, error = %e, "range {range}'s ended record could not be read; its group is kept");
                None
            }
        }
    }

    /// Whether the group of `range` running here was sealed here (an unreadable record
    /// counts as sealed: the data is kept).
    fn sealed_here(&self, range: RangeId) -> bool {
        let Some(generation) = self.replicas.generation(range) else {
            return false;
        };
        self.store.sealed(range, generation).unwrap_or_else(|e| {
            tracing::error!(%range, error = %e, "range {range}'s ended record could not be read; its group is kept");
            true
        })
    }

    /// The store's record of `range`'s history `generation` having ended, when it holds no
    /// group of it. `Err` when the record or the groups cannot be read: nothing is started.
    fn ended_and_dropped(&self, range: RangeId, generation: Generation) -> Result<Option<Ended>, String> {
        let ended = self
            .store
            .ended(range)
            .map_err(|e| format!("range {range}'s ended record could not be read: {e}"))?
            .into_iter()
            .find(|e| e.generation == generation);
        let held = self
            .store
            .groups()
            .map_err(|e| format!("the groups on this node's store could not be listed: {e}"))?;
        Ok(ended.filter(|_| !held.contains(&range)))
    }

    /// Drops each group the table no longer names this node in: a move is done (the table
    /// is finished only once the group's majority applied a configuration without this
    /// node, so nothing here is needed any more). A node the entry names alone keeps the
    /// range's data as its single owner, once its group has applied its whole log; any
    /// other drops the data too. Waiting proposals and reads are answered
    /// ([`Driver::forget`]: a waiting write's outcome is unknown).
    async fn settle(&mut self) -> Result<(), String> {
        let Some(table) = self.table.clone() else { return Ok(()) };
        let mut retired = false;
        for range in std::mem::take(&mut self.stale) {
            retired |= self.retire(range, &table).await?;
        }
        for (range, generation) in std::mem::take(&mut self.orphans) {
            if self.replicas.ranges().any(|r| r == range) {
                continue;
            }
            let Some(ended) = self.ended_on_drop(range, generation) else {
                continue;
            };
            self.store
                .drop_group(range, true, Some(ended))
                .await
                .map_err(|e| format!("range {range}'s group could not be dropped: {e}"))?;
            self.replicas.note_ended(range, Some(generation));
            tracing::info!(%range, "range {range}'s group on this node's disk is of a history that ended while this node was away, and a group of overlapping bytes starts here: its records dropped, the data kept for that group");
            retired = true;
        }
        if retired {
            // The table's groups of the retired ranges start.
            self.table(Arc::clone(&table));
        }
        // A group taking a streamed snapshot is dropped once that is done, or failed.
        let held = self.ranges_going_on();
        let mut dropped = false;
        for range in held {
            let entry = table.entry_for(range.first, range.last);
            let in_group = entry
                .and_then(|e| table.group_of(e))
                .is_some_and(|nodes| nodes.contains(&self.me));
            if in_group {
                continue;
            }
            // This node alone carries the range's data on: the entry names it alone, or (the
            // range split or merged since) an entry of other bounds does, and the group, which
            // ended onto this node, counts it alone.
            let keep_data = entry.is_some_and(|e| e.replicas() == std::slice::from_ref(&self.me))
                || (entry.is_none()
                    && self.carries_on(&table, range)
                    && self.replicas.conf(range).is_some_and(|c| self.alone_in(&c)));
            // Sealed here: the range's data is on this node alone, whatever the table says
            // (another coordinator's may name other nodes); kept until a table names this node
            // its single owner, or runs the group again (and this node says where it ended).
            if !keep_data && self.sealed_here(range) {
                if self.kept_voting.insert(range) {
                    tracing::warn!(%range, "the table no longer names this node for range {range}, but the range's group was sealed here, its data on this node alone: it keeps the group and the data");
                }
                continue;
            }
            // A node a move brought in, never named by the range's entry, and still a voter of
            // the group's configuration as it applied it: the table lost a move the group
            // carried out (two coordinators in a partition, the other side's table kept), it
            // did not finish one without this node. Kept, so that no voter's copy goes while
            // the group may count on it. (An old replica of a finished move was named by the
            // entry before; it may not have heard of its removal, and drops.)
            let my_id = node_id(self.me.as_str());
            if !keep_data
                && !self.named.contains(&range)
                && !self.told_removed(range)
                && self
                    .replicas
                    .conf(range)
                    .is_some_and(|c| c.voters.contains(&my_id) || c.voters_outgoing.contains(&my_id))
            {
                if self.kept_voting.insert(range) {
                    tracing::warn!(%range, "the table no longer names this node for range {range}, but the range's group still counts it as a voter: it keeps the group and the data");
                }
                continue;
            }
            if keep_data {
                let Some(store) = self.replicas.store(range) else {
                    continue;
                };
                let last = raft::Storage::last_index(store).unwrap_or(0);
                if GroupStore::applied(store) < last {
                    continue;
                }
            }
            // A history the table says ended is remembered, so that this node never takes
            // part in it again from nothing.
            let ended = match self
                .replicas
                .generation(range)
                .filter(|&g| table.has_ended(range.first, range.last, g))
            {
                Some(g) => match self.ended_on_drop(range, g) {
                    Some(ended) => Some(ended),
                    None => continue,
                },
                None => None,
            };
            if self.replicas.remove_group(range).is_none() {
                continue;
            }
            self.leases.end(range);
            // Never the data of a range this node holds by another entry (its bounds cut
            // differently since): kept, with the group's records gone.
            let keep_data = keep_data || self.holds_overlapping(&table, range);
            self.store
                .drop_group(range, keep_data, ended)
                .await
                .map_err(|e| format!("range {range}'s group could not be dropped: {e}"))?;
            if let Some(e) = ended {
                self.replicas.note_ended(range, Some(e.generation));
            }
            let what = match (
                keep_data,
                entry.is_some_and(|e| e.replicas() == std::slice::from_ref(&self.me)),
            ) {
                (false, _) => " and dropped the range's data",
                (true, true) => "; it holds the range alone",
                (true, false) => "; the range's data stays, as this node holds some of it by another entry",
            };
            tracing::info!(%range, keep_data, "this node left range {range}'s group{what}");
            self.forget(range);
            dropped = true;
        }
        if dropped && !self.blocked.is_empty() {
            // Groups of overlapping ranges were waiting for this one to go.
            self.table(Arc::clone(&table));
        } else if dropped {
            // A group sealed here may be gone now.
            self.review_seals(&table);
        }
        Ok(())
    }

    /// Retires `range`'s group held here (running, or found on disk) of another history than
    /// the one `table` gives the range, whose group names this node: `true` once it is gone,
    /// for the table's group to start.
    ///
    /// Only a history the table lists as ended ([`RoutingTable::has_ended`]: its group
    /// finished into one node, whose data carried the range on) is dropped: nothing it holds
    /// elsewhere is needed; this node missed that (down, or cut off). Its records go, and its
    /// data too unless the table names this node the range's only owner: a single owner's
    /// range starting to move, whose new group is born over the data in place, once the old
    /// group has applied everything it committed (found on disk behind that, it runs again
    /// under its own history until it has).
    ///
    /// Any other history is kept, and said once: this node's table may be behind the
    /// cluster's (a start-up table), or the table lost a move that group made (two
    /// coordinators at once), whose acknowledged writes may be on its nodes alone.
    async fn retire(&mut self, range: RangeId, table: &RoutingTable) -> Result<bool, String> {
        let Some(entry) = table.entry_for(range.first, range.last) else {
            return Ok(false);
        };
        if !table.group_of(entry).is_some_and(|nodes| nodes.contains(&self.me)) {
            // Not this node's to start: `settle` decides about a group the table leaves it out of.
            return Ok(false);
        }
        let generation = table.generation_of(range.first, range.last);
        let running = self.replicas.generation(range).is_some();
        let store = match self.replicas.store(range) {
            Some(store) => store.clone(),
            None => self
                .store
                .group(range, generation, None)
                .map_err(|e| format!("range {range}'s group could not be read: {e}"))?,
        };
        let old = store.generation();
        if old == generation {
            // Retired already (or this table gives the old history back): start it.
            return Ok(!running);
        }
        if !table.has_ended(range.first, range.last, old) {
            if self.stale_kept.insert(range) {
                tracing::warn!(%range, %old, new = %generation, version = table.version(), "range {range}'s group here is of history {old}, which the table (version {}) does not say has ended, though it gives the range history {generation}: kept, and the table's group not started, until a table says it ended (this node's table may be behind the cluster's) or gives it back", table.version());
            }
            return Ok(false);
        }
        if self.replicas.installing(range) {
            self.stale.insert(range);
            return Ok(false);
        }
        let alone = entry.replicas() == std::slice::from_ref(&self.me);
        if alone {
            let state = raft::Storage::initial_state(&store)
                .map_err(|e| format!("range {range}'s group could not be read: {e}"))?;
            let conf = self.replicas.conf(range).unwrap_or(state.conf_state);
            // Checked first: a group that ended onto this node counts it alone (configurations
            // are applied synced); one that counts others ended elsewhere, and its log must
            // never be applied over this node's data, which came by another way since.
            if !self.alone_in(&conf) {
                if self.stale_kept.insert(range) {
                    tracing::error!(%range, %old, new = %generation, "range {range}'s group here (history {old}) still counts other nodes, but the table starts a new group (history {generation}) from this node's data: the old group is kept, the new one waits; set a table naming the old group's nodes for {range}");
                }
                self.stale.insert(range);
                return Ok(false);
            }
            if GroupStore::applied(&store) < raft::Storage::last_index(&store).unwrap_or(0) {
                // Entries not applied yet (applies are written unsynced: a crash may have lost
                // some whose writes were acknowledged): the old group runs, under its own
                // history, until it has applied them; looked at again at each settle.
                if !running {
                    self.start_to_apply(range, store, &conf.voters);
                }
                self.stale.insert(range);
                return Ok(false);
            }
        }
        // Its history ended (the table says so): never taken part in again from nothing.
        let Some(ended) = self.ended_on_drop(range, old) else {
            self.stale.insert(range);
            return Ok(false);
        };
        if running {
            if self.replicas.remove_group(range).is_none() {
                self.stale.insert(range);
                return Ok(false);
            }
            self.leases.end(range);
        }
        self.store
            .drop_group(range, alone, Some(ended))
            .await
            .map_err(|e| format!("range {range}'s group could not be dropped: {e}"))?;
        self.replicas.note_ended(range, Some(old));
        self.forget(range);
        self.stale_kept.remove(&range);
        tracing::warn!(%range, %old, new = %generation, keep_data = alone, "range {range}'s group here was of an earlier history ({old}), which has ended: dropped{}, for the table's group ({generation})", if alone { ", the range's data kept" } else { " with the range's data" });
        Ok(true)
    }

    /// Whether a voter of the range's group told this node it was left out, and its log has
    /// not grown since.
    fn told_removed(&self, range: RangeId) -> bool {
        let last = self
            .replicas
            .store(range)
            .and_then(|s| raft::Storage::last_index(s).ok());
        last.is_some() && self.removed.get(&range).copied() == last
    }

    /// What this node kept for a range whose group it no longer holds: its preferred leader,
    /// its hand-backs, its leader as published; waiting proposals and reads are answered. A
    /// waiting write's outcome is unknown: its entry is in this node's log, which is gone,
    /// but it may be in the other replicas' logs too, and a leader of theirs may commit it.
    /// Answered "dropped" (before), the request was proposed again, and applied twice when
    /// the first one committed after all: a linearizability violation found by the fault
    /// test (`moving-replicated-4`, seed 1796449900: a put seen, overwritten, then seen
    /// again).
    fn forget(&mut self, range: RangeId) {
        self.fence();
        self.first.remove(&range);
        self.removed.remove(&range);
        self.kept_voting.remove(&range);
        self.handed_back.remove(&range);
        self.leaderless.remove(&range);
        self.leaders.send_modify(|l| {
            l.remove(&range);
        });
        self.answer_waiting(range);
    }

    /// Answers the proposals and reads waiting on `range`'s group, which is gone from the
    /// core (with what it knew of them): a write "unknown" (its entry may be in the other
    /// replicas' logs, and commit there), a read "not the leader".
    fn answer_waiting(&mut self, range: RangeId) {
        let ids: Vec<ProposalId> = self
            .proposals
            .iter()
            .filter(|(_, (r, _))| *r == range)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((_, done)) = self.proposals.remove(&id) {
                let _ = done.send(Err(Refused::Unknown(range)));
            }
        }
        let reads: Vec<(RangeId, u64)> = self.reads.keys().filter(|(r, _)| *r == range).copied().collect();
        for key in reads {
            if let Some(WaitingRead { done, .. }) = self.reads.remove(&key) {
                let _ = done.send(Err(Refused::NotLeader { range, leader: None }));
            }
        }
    }

    /// Publishes the moves this node leads to completion: the group's configuration is the
    /// move's nodes, as voters, with no learner and not joint. A move into this node alone
    /// ends the group: it is sealed first ([`Driver::seal`]), and published, as every history
    /// sealed here that the table still runs, as ended onto this node.
    fn publish_finished(&mut self) {
        let mut done = Vec::new();
        let mut seal = Vec::new();
        for (range, m) in &self.moves {
            let leads = self.replicas.role(*range).is_some_and(|(r, _)| r == Role::Leader);
            let conf = self.replicas.conf(*range);
            let want: BTreeSet<u64> = m.replicas().iter().map(|n| node_id(n.as_str())).collect();
            let there = leads
                && conf.is_some_and(|c| {
                    c.learners.is_empty()
                        && c.voters_outgoing.is_empty()
                        && c.voters.iter().copied().collect::<BTreeSet<u64>>() == want
                });
            if !there {
                continue;
            }
            if m.is_replicated() {
                done.push(Finished {
                    entry: m.clone(),
                    ended: None,
                });
            } else {
                seal.push(*range);
            }
        }
        for range in seal {
            self.seal(range);
        }
        for (range, &generation) in &self.sealed {
            done.push(Finished {
                entry: Entry::single(range.first, range.last, self.me.clone()),
                ended: Some(generation),
            });
        }
        self.finished.send_if_modified(|f| {
            let changed = *f != done;
            *f = done;
            changed
        });
    }

    /// Seals `range`'s group onto this node, its only voter (`store::ended`): recorded,
    /// synced, before anything says the history ended. Only while it leads with no
    /// configuration change in its log unapplied (a leader's own, or, new, its whole log),
    /// so the configuration it applied, this node alone, is its last: from the seal on, the
    /// driver gives the group no target. Its writes go on, on this node alone.
    fn seal(&mut self, range: RangeId) {
        let Some(generation) = self.replicas.generation(range) else {
            return;
        };
        let current = self
            .table
            .as_ref()
            .is_some_and(|t| t.generation_of(range.first, range.last) == generation);
        if !current || self.replicas.changing(range) != Some(false) {
            return;
        }
        let sealed = Ended { generation, here: true };
        if let Err(e) = self.store.mark_ended(range, sealed) {
            tracing::error!(%range, error = %e, "range {range}'s group could not be sealed onto this node; its move is finished once it can be");
            return;
        }
        // From now on it takes no target (the table may re-aim the move: it stays here).
        let _ = self.replicas.set_target(range, None);
        self.moves.remove(&range);
        self.sealed.insert(range, generation);
        tracing::info!(%range, %generation, "range {range}'s group has moved onto this node alone, and is sealed here: its configuration never changes again");
    }

    /// Runs rounds until there is nothing to do: one outstanding at a time.
    async fn round(&mut self) -> Result<(), String> {
        while let Some(round) = self.replicas.poll_round() {
            self.fence();
            // Before any of the round's messages goes: a transfer the round asks for (a
            // move's step) ends the lease before its target can campaign.
            self.end_stale_leases();
            for (to, frame) in &round.send_early {
                self.send(*to, frame.clone());
            }
            // One batch and one sync for every group's round, shared with plain puts.
            self.store
                .persist_round(&round)
                .await
                .map_err(|e| format!("the replica groups' round could not be made durable: {e}"))?;
            let out = self
                .replicas
                .handle_persisted(round.round)
                .map_err(|e| format!("the replica groups cannot go on: {e}"))?;
            self.release(out);
            self.end_stale_leases();
            self.compact();
        }
        Ok(())
    }

    /// Ends each lease whose range no longer stands where the lease was taken (a term, a
    /// transfer, a configuration, the group gone).
    fn end_stale_leases(&self) {
        self.leases.keep(|range| self.replicas.lease_standing(range));
    }

    /// Hands each range this node leads back to its preferred leader (the first named) once
    /// that one holds the whole log, checked once per election timeout at most: after a
    /// failover, leadership returns where the table put it, so leaders stay spread as the
    /// table spreads first names. A transfer pauses the range's writes for about a round trip.
    ///
    /// Looked at every tick (raft-rs forgets who is active once per election timeout, so a
    /// check at a fixed period could always fall just after that), each range handed at most
    /// once per [`HAND_BACK_TICKS`].
    fn hand_back(&mut self) {
        self.ticks += 1;
        let my_id = node_id(self.me.as_str());
        for (&range, &first) in &self.first {
            let last = self.handed_back.get(&range).copied().unwrap_or(0);
            if first != my_id
                && self.ticks >= last + u64::from(HAND_BACK_TICKS)
                && self.replicas.caught_up(range, first)
            {
                tracing::info!(%range, to = ?self.names.get(&first), "handing range {range} back to its preferred leader");
                // (Its lease ends before the transfer's message goes: `round` ends stale ones.)
                let _ = self.replicas.transfer_leader(range, first);
                self.handed_back.insert(range, self.ticks);
            }
        }
    }

    /// Warns, every [`LEADERLESS_TICKS`], of each range held here that has had no leader
    /// that long, with what this replica knows of its group (an election that cannot
    /// succeed: voters down or cut off, or a stall to investigate).
    fn warn_leaderless(&mut self) {
        let ticks = self.ticks;
        // Only groups the table runs here (not one resumed from disk to hear whether its
        // voters still count this node).
        for (&range, &since) in self.leaderless.iter().filter(|(r, _)| self.first.contains_key(r)) {
            let waited = ticks.saturating_sub(since);
            if waited == 0 || !waited.is_multiple_of(LEADERLESS_TICKS) {
                continue;
            }
            let seconds = waited * TICK.as_millis() as u64 / 1000;
            let state = self.replicas.describe(range).unwrap_or_default();
            tracing::warn!(%range, seconds, %state, "range {range} has had no leader for {seconds} s; this replica: {state}");
        }
    }

    /// Keeps each group's log bounded: once it holds more than `log_keep` applied entries
    /// ([`LOG_KEEP`]), the older half goes (a replica that far behind catches up by snapshot),
    /// but on a leader not what a follower it is catching up still needs
    /// (`Replicas::keep_from`), until the log is four times the bound.
    fn compact(&mut self) {
        let ranges = self.ranges_going_on();
        for range in ranges {
            let Some(store) = self.replicas.store(range) else {
                continue;
            };
            store.expire_views();
            let (Ok(first), applied) = (raft::Storage::first_index(store), GroupStore::applied(store)) else {
                continue;
            };
            if applied.saturating_sub(first) <= self.log_keep {
                continue;
            }
            // Not past what a follower being caught up needs (a move's new node installing
            // a large range), unless the log has grown to four times its bound.
            let mut to = applied - self.log_keep / 2;
            if let Some(keep) = self.replicas.keep_from(range)
                && applied.saturating_sub(first) <= 4 * self.log_keep
            {
                to = to.min(keep);
            }
            if to > first
                && let Err(e) = self.replicas.compact(range, to)
            {
                tracing::warn!(%range, error = %e, "the range's log could not be compacted");
            }
        }
    }

    fn send(&self, to: u64, mut frame: Frame) {
        let Some(name) = self.names.get(&to) else {
            tracing::debug!(to, "raft frame for a node no table entry names; dropped");
            return;
        };
        for (range, generation, msg) in frame.take_snapshots() {
            self.outbox.send_snapshot(name, range, generation, msg);
        }
        if !frame.is_empty() {
            self.outbox.send(name, frame);
        }
    }

    fn release(&mut self, out: Output) {
        // The preferred leader campaigns at once on a new group: a leader in one round trip,
        // not after an election timeout.
        for (range, index) in &out.installed {
            tracing::info!(%range, index, "replica made whole: snapshot installed from the range's leader");
        }
        for range in &out.bootstrapped {
            tracing::info!(%range, "replica group found new and bootstrapped");
            if self.first.get(range) == Some(&node_id(self.me.as_str())) {
                let _ = self.replicas.campaign(*range);
            }
        }
        for (to, frame) in out.frames {
            self.send(to, frame);
        }
        for (range, by, last) in out.removed {
            // The last index the core saw when it believed the notice: entries appended since
            // (a re-add's, perhaps in the same frame) make the log differ, and the notice void.
            if self.removed.insert(range, last) != Some(last) {
                let by = self.names.get(&by).map_or_else(|| by.to_string(), |n| n.to_string());
                tracing::info!(%range, %by, "{by} says range {range}'s group no longer counts this node (a move called off or re-aimed while it was away)");
            }
        }
        for (id, effect) in out.acked {
            if let Some((_, done)) = self.proposals.remove(&id) {
                let _ = done.send(Ok(effect));
            }
        }
        for (id, failure) in out.failed {
            if let Some((range, done)) = self.proposals.remove(&id) {
                let _ = done.send(Err(match failure {
                    Failure::Overwritten => Refused::Dropped(range),
                    Failure::Unknown => Refused::Unknown(range),
                }));
            }
        }
        for (range, id) in out.reads {
            if let Some(read) = self.reads.remove(&(range, id)) {
                if let Some(standing) = read.standing
                    && self.replicas.lease_standing(range) == Some(standing)
                {
                    self.leases.renew(range, standing, read.asked, self.lease);
                }
                let _ = read.done.send(Ok(()));
            }
        }
        for (range, id, leader) in out.failed_reads {
            if let Some(WaitingRead { done, .. }) = self.reads.remove(&(range, id)) {
                let leader = leader.and_then(|l| self.names.get(&l).cloned());
                let _ = done.send(Err(Refused::NotLeader { range, leader }));
            }
        }
        if out.leaders.is_empty() {
            return;
        }
        for &(range, leader, term) in &out.leaders {
            match leader {
                None => {
                    self.leaderless.entry(range).or_insert(self.ticks);
                }
                Some(_) => {
                    self.leaderless.remove(&range);
                }
            }
            let name = leader.and_then(|l| self.names.get(&l).cloned());
            let role = self.replicas.role(range).map(|(r, _)| r);
            let led = self.leaders.borrow().get(&range).and_then(|v| v.leader.clone()) == Some(self.me.clone());
            if led && role != Some(Role::Leader) {
                // Check-quorum: a leader that has not heard from a majority within an election
                // timeout steps down (or a newer term reached it); it acknowledges nothing more.
                tracing::warn!(%range, term, "this node no longer leads range {range} (term {term}): it lost its majority or a newer leader took over; it acknowledges no more writes or reads for it");
            }
            match (&name, role) {
                (Some(_), Some(Role::Leader)) => {
                    tracing::info!(%range, term, "this node leads range {range} (term {term})")
                }
                (Some(n), _) => tracing::info!(%range, term, leader = %n, "range {range} is led by {n} (term {term})"),
                (None, _) => {
                    tracing::info!(%range, term, "range {range} has no leader (term {term}); an election is under way")
                }
            }
            self.leaders.send_modify(|l| {
                l.insert(range, LeaderView { leader: name, term });
            });
        }
    }
}

/// The table's entries that overlap `range` with other bounds.
fn cut_differently(table: &RoutingTable, range: RangeId) -> impl Iterator<Item = &Entry> {
    table.entries().iter().filter(move |e| {
        (e.first, e.last) != (range.first, range.last) && e.first <= range.last && range.first <= e.last
    })
}

/// raft-rs's log lines, into tracing: warnings and errors as such, the rest at debug.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvText(String::new());
        let _ = slog::KV::serialize(values, record, &mut kv);
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let (msg, kv) = (record.msg(), kv.0);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}{kv}"),
            _ => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

/// An slog record's key-values as ` key=value` text.
struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

#[cfg(test)]
#[path = "replicas_tests.rs"]
mod tests;
