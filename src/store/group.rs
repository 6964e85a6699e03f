//! Replicated ranges on the node's store (issue 25 step 3): each Raft group's log, hard state,
//! conf state and applied index, as a [`NodeGroupStore`] the replica core runs on.
//!
//! A group's records live in the `raft_log` and `raft_state` keyspaces (`group_records`); the
//! range's data lives with every other bucket, so reads of a replicated range use
//! `Store::get`/`keys` unchanged. In memory the log is held in the group's cache alone and the
//! applied data goes into the node's `MemoryStore`.
//!
//! Writes follow the core's contract (`kvnode_replica`'s `lib.rs`): [`Store::persist_round`]
//! writes a whole round (every group's snapshot, entries and hard state) through the
//! group-commit writer, one batch and one sync shared with the plain writes queued meanwhile;
//! `GroupStore::persist`, called by `Replicas::handle_persisted` after it, only updates the
//! cache. `apply` and `compact` write at once, unsynced (see there why that is safe).
//!
//! redb keeps no Raft records: [`Store::group`] refuses replicated ranges on it with a clear
//! error (fjall is the default engine; the node's data would otherwise need a second layout).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use kvnode_replica::{BOOTSTRAP_INDEX, Command, Effect, Generation, GroupStore, Persist, RangeData, RangeId};
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::disk::DiskStore;
use super::engine::{Applied, Op, RaftSpace, RaftWrites, RangeView};
use super::feed::Feed;
use super::group_records::{self as rec, LogBounds};
use super::memory::MemoryStore;
use super::{Backend, Ended, Lookup, Store, StoreError};

/// On disk, the cache keeps at most this many of a group's newest entries...
const CACHE_ENTRIES: usize = 1024;
/// ... and at most this many bytes of them; older entries are read from `raft_log`.
const CACHE_BYTES: usize = 4 << 20;
/// Entries read from `raft_log` per scan, so that `max_size` stops a long read early.
const READ_PAGE: usize = 64;

/// One Raft group's log, hard state, conf state and applied index on this node's store; the
/// range's data (its buckets and keys) lives with every other bucket, so reads of a replicated
/// range use `Store::get`/`keys` unchanged. Cheap to clone (clones share the group),
/// Send + Sync + 'static.
#[derive(Clone)]
pub struct NodeGroupStore {
    range: RangeId,
    /// Which history of the range's group this is (issue 26).
    generation: Generation,
    shared: Arc<Shared>,
}

struct Shared {
    backend: GroupBackend,
    state: RwLock<GroupState>,
    /// The changes applied entries made, by log index, for `kvnode watch`.
    feed: Arc<Feed>,
    /// On disk, the views the latest snapshots stream from: applied index, when taken, the
    /// view (newest last). Each pins every keyspace's old versions (fjall's garbage collection
    /// is database-wide), so a view goes once its stream is done ([`Store::release_view`]) or
    /// it is older than [`VIEW_TTL`] (a stream holds its own reference meanwhile).
    views: Mutex<VecDeque<HeldView>>,
}

/// How many snapshot views a group keeps: each pins the range's data as it was (old versions
/// stay on disk while a view holds them); one per peer being caught up at once is plenty, and
/// a stream whose view went sends the snapshot again from a newer one.
const VIEWS: usize = 4;

/// A snapshot's view: the applied index it is of, when it was taken, the view.
type HeldView = (u64, std::time::Instant, Arc<dyn RangeView>);

/// How long a view no stream has taken is kept: raft-rs asks for a snapshot just before it is
/// sent, so an unclaimed one is a stream that never started.
const VIEW_TTL: std::time::Duration = std::time::Duration::from_secs(30);

enum GroupBackend {
    Memory(MemoryStore),
    Disk(DiskStore),
}

/// What a group holds, as of the last round made durable and handed to `persist`.
struct GroupState {
    hard: HardState,
    conf: ConfState,
    /// The entry before the log's first (a snapshot's, or the last compacted one).
    truncated: (u64, u64),
    /// The last applied entry.
    applied: (u64, u64),
    /// The last entry's index (`truncated.0` when the log is empty).
    last: u64,
    /// The log's newest entries, contiguous up to `last`: all of it in memory, the newest
    /// [`CACHE_ENTRIES`] or [`CACHE_BYTES`] on disk (TiKV keeps such a tail too).
    cache: VecDeque<Entry>,
    cache_bytes: usize,
}

/// A Raft record of `RaftWrites`: where, its key, and its value (`None` removes it).
type RaftRecord = (RaftSpace, Vec<u8>, Option<Vec<u8>>);

/// How much of a group's log tail the cache keeps.
#[derive(Clone, Copy)]
struct CacheMax {
    entries: usize,
    bytes: usize,
}

impl CacheMax {
    /// On disk, the newest entries up to [`CACHE_ENTRIES`] and [`CACHE_BYTES`].
    const DISK: CacheMax = CacheMax {
        entries: CACHE_ENTRIES,
        bytes: CACHE_BYTES,
    };
}

/// Which groups a store holds, so that asking twice gives the same group (one cache).
#[derive(Default)]
pub(super) struct Groups(Mutex<BTreeMap<RangeId, NodeGroupStore>>);

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Groups")
    }
}

impl Groups {
    /// The newest view of `range` taken for a snapshot at `index`, if still kept.
    pub(super) fn view(&self, range: RangeId, index: u64) -> Option<Arc<dyn RangeView>> {
        let group = self.lock().get(&range)?.clone();
        let views = group.shared.views.lock().unwrap_or_else(PoisonError::into_inner);
        views
            .iter()
            .rev()
            .find(|(i, _, _)| *i == index)
            .map(|(_, _, v)| Arc::clone(v))
    }

    /// Lets go of `range`'s views of the snapshot at `index` (its stream is done).
    pub(super) fn release_view(&self, range: RangeId, index: u64) {
        if let Some(group) = self.lock().get(&range).cloned() {
            let mut views = group.shared.views.lock().unwrap_or_else(PoisonError::into_inner);
            views.retain(|(i, _, _)| *i != index);
        }
    }

    /// Forgets `range`'s group (handed back): asked for again, it is loaded afresh from the
    /// store.
    pub(super) fn forget(&self, range: RangeId) -> Option<NodeGroupStore> {
        self.lock().remove(&range)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RangeId, NodeGroupStore>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry_size(e: &Entry) -> usize {
    e.get_data().len() + e.get_context().len() + 24
}

pub(super) fn group_err(range: RangeId, reason: impl Into<String>) -> StoreError {
    StoreError::Group {
        range: range.to_string(),
        reason: reason.into(),
    }
}

/// A store error as raft-rs's (its `Storage` methods answer `raft::Error`).
fn raft_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl GroupState {
    /// An uninitialised replica (like `MemGroupStore::uninitialised`): no voters, empty log.
    fn uninitialised() -> Self {
        GroupState {
            hard: HardState::default(),
            conf: ConfState::default(),
            truncated: (0, 0),
            applied: (0, 0),
            last: 0,
            cache: VecDeque::new(),
            cache_bytes: 0,
        }
    }

    /// A new group (like `MemGroupStore::bootstrap`): a snapshot at index 1, term 1, of an
    /// empty range with `voters`.
    fn bootstrap(voters: &[u64]) -> Self {
        let mut s = Self::uninitialised();
        s.hard.term = BOOTSTRAP_INDEX;
        s.hard.commit = BOOTSTRAP_INDEX;
        s.conf.set_voters(voters.to_vec());
        s.truncated = (BOOTSTRAP_INDEX, BOOTSTRAP_INDEX);
        s.applied = (BOOTSTRAP_INDEX, BOOTSTRAP_INDEX);
        s.last = BOOTSTRAP_INDEX;
        s
    }

    fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn cache_first(&self) -> u64 {
        self.cache.front().map_or(self.last + 1, |e| e.index)
    }

    fn bounds(&self) -> LogBounds {
        LogBounds {
            truncated: self.truncated,
            last: self.last,
            hard: self.hard.clone(),
        }
    }

    /// Every record of this state, for writing a bootstrapped group.
    fn records(&self, range: RangeId) -> Vec<RaftRecord> {
        let state = |kind, v| (RaftSpace::State, rec::state_key(range, kind), Some(v));
        vec![
            state(rec::HARD, rec::encode_hard(&self.hard)),
            state(rec::CONF, rec::encode_conf(&self.conf)),
            state(rec::APPLIED, rec::encode_index_term(self.applied.0, self.applied.1)),
            state(
                rec::TRUNCATED,
                rec::encode_index_term(self.truncated.0, self.truncated.1),
            ),
        ]
    }

    /// Drops cached entries from the front while over `max` entries or bytes.
    fn trim_cache(&mut self, max: CacheMax) {
        while self.cache.len() > 1 && (self.cache.len() > max.entries || self.cache_bytes > max.bytes) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= entry_size(&e);
            }
        }
    }

    /// Takes a durable round into the cache, as `MemStorage` would.
    fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        cache_max: CacheMax,
    ) -> Result<(), String> {
        if let Some(snap) = snapshot {
            let meta = snap.get_metadata();
            if meta.index < self.first() {
                return Err(format!("the snapshot at {} is older than the log", meta.index));
            }
            self.truncated = (meta.index, meta.term);
            self.applied = (meta.index, meta.term);
            self.last = meta.index;
            self.cache.clear();
            self.cache_bytes = 0;
            self.conf = meta.get_conf_state().clone();
            self.hard.term = self.hard.term.max(meta.term);
            self.hard.commit = meta.index;
        }
        if let Some(tail) = entries.last() {
            rec::check_append(self.first(), self.last, entries)?;
            let (head, cache_first) = (entries[0].index, self.cache_first());
            if head < cache_first {
                // The replaced part reaches below the cached tail: the cache starts afresh.
                self.cache.clear();
                self.cache_bytes = 0;
            } else {
                for e in self.cache.drain((head - cache_first) as usize..) {
                    self.cache_bytes -= entry_size(&e);
                }
            }
            self.cache_bytes += entries.iter().map(entry_size).sum::<usize>();
            self.cache.extend(entries.iter().cloned());
            self.last = tail.index;
            self.trim_cache(cache_max);
        }
        if let Some(hs) = hard_state {
            self.hard = hs.clone();
        }
        Ok(())
    }
}

impl NodeGroupStore {
    fn new(range: RangeId, generation: Generation, backend: GroupBackend, state: GroupState) -> Self {
        NodeGroupStore {
            range,
            generation,
            shared: Arc::new(Shared {
                backend,
                feed: Arc::new(Feed::starting_at(state.applied.0)),
                state: RwLock::new(state),
                views: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The write of the group's applied index and its entry's term, as an applied entry's
    /// batch ends.
    fn applied_op(&self, index: u64, term: u64) -> Op {
        Op::Raft(Arc::new(RaftWrites {
            replace: vec![],
            records: vec![(
                RaftSpace::State,
                rec::state_key(self.range, rec::APPLIED),
                Some(rec::encode_index_term(index, term)),
            )],
        }))
    }

    /// Lets go of the views no stream took within [`VIEW_TTL`].
    pub fn expire_views(&self) {
        let mut views = self.shared.views.lock().unwrap_or_else(PoisonError::into_inner);
        views.retain(|(_, taken, _)| taken.elapsed() < VIEW_TTL);
    }

    /// Takes over `other`'s term and vote (a group started again empty in memory, where no
    /// record keeps them: Raft's safety needs a vote never to be forgotten).
    pub(super) fn keep_vote_of(&self, other: &NodeGroupStore) {
        let (term, vote) = {
            let s = other.read();
            (s.hard.term, s.hard.vote)
        };
        let mut s = self.write();
        s.hard.term = term;
        s.hard.vote = vote;
    }

    /// The changes this replica applied to the range since it started (or last installed a
    /// snapshot), positioned by log index: alike on every replica.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.shared.feed
    }

    /// The range this group replicates.
    /// The history of the range's group this store holds: the one it was created with, or,
    /// for a group found on disk, the one recorded then.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn range(&self) -> RangeId {
        self.range
    }

    fn read(&self) -> RwLockReadGuard<'_, GroupState> {
        // Every change to the state is made whole under the lock before it can fail, so a
        // panic elsewhere leaves it consistent: a poisoned lock is still used.
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, GroupState> {
        self.shared.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a group's Raft records in one engine batch, unsynced (the next sync, of any
    /// round or plain write, makes them durable); in memory there is nowhere to write them.
    fn write_unsynced(&self, records: impl FnOnce() -> Vec<RaftRecord>) -> Result<(), kvnode_replica::StoreError> {
        if let GroupBackend::Disk(d) = &self.shared.backend {
            let writes = RaftWrites {
                replace: vec![],
                records: records(),
            };
            d.engine()
                .commit_unsynced(&[Op::Raft(Arc::new(writes))])
                .map_err(replica_err)?;
        }
        Ok(())
    }

    /// As [`NodeGroupStore::write_unsynced`], and synced before it returns (with every write
    /// before it in the journal).
    fn write_synced(&self, records: impl FnOnce() -> Vec<RaftRecord>) -> Result<(), kvnode_replica::StoreError> {
        if let GroupBackend::Disk(d) = &self.shared.backend {
            let writes = RaftWrites {
                replace: vec![],
                records: records(),
            };
            d.engine().commit(&[Op::Raft(Arc::new(writes))]).map_err(replica_err)?;
        }
        Ok(())
    }

    /// In memory the cache is the whole log: nothing may leave it but by compaction.
    fn cache_max(&self) -> CacheMax {
        match self.shared.backend {
            GroupBackend::Memory(_) => CacheMax {
                entries: usize::MAX,
                bytes: usize::MAX,
            },
            GroupBackend::Disk(_) => CacheMax::DISK,
        }
    }

    /// Entries `low..high` from `raft_log` (below the cached tail), stopping once past
    /// `max_size` bytes (at least one entry).
    fn read_log(&self, disk: &DiskStore, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        let mut out: Vec<Entry> = vec![];
        let mut size = 0u64;
        let mut next = low;
        while next < high {
            let (from, to) = rec::log_span(self.range, next, Some(high));
            let page = disk
                .engine()
                .raft_scan(RaftSpace::Log, &from, &to, false, READ_PAGE)
                .map_err(raft_err)?;
            for (key, value) in &page {
                let e = rec::decode_entry(value).map_err(raft_err)?;
                if rec::log_index(key) != Some(next) || e.index != next {
                    // A hole in the log: compacted meanwhile, or damaged.
                    return Err(raft::Error::Store(StorageError::Unavailable));
                }
                size += entry_size(&e) as u64;
                out.push(e);
                next += 1;
                if max_size.is_some_and(|max| size > max) {
                    return Ok(out);
                }
            }
            if page.len() < READ_PAGE && next < high {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        Ok(out)
    }
}

impl Storage for NodeGroupStore {
    /// The hard state's commit is at least the applied index: applies are written without a
    /// sync after the round that wrote the hard state, and what was applied was committed.
    fn initial_state(&self) -> raft::Result<RaftState> {
        let s = self.read();
        let mut hard = s.hard.clone();
        hard.commit = hard.commit.max(s.applied.0);
        Ok(RaftState::new(hard, s.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let s = self.read();
        if low < s.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > s.last + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let cache_first = s.cache_first();
        let mut out = vec![];
        if low < cache_first {
            let GroupBackend::Disk(disk) = &self.shared.backend else {
                return Err(raft::Error::Store(StorageError::Unavailable));
            };
            out = self.read_log(disk, low, high.min(cache_first), max_size)?;
            if (out.len() as u64) < high.min(cache_first) - low {
                // `max_size` stopped the read.
                return Ok(out);
            }
        }
        let from = low.max(cache_first);
        if from < high {
            let skip = (from - cache_first) as usize;
            out.extend(s.cache.range(skip..skip + (high - from) as usize).cloned());
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let s = self.read();
        if idx == s.truncated.0 {
            return Ok(s.truncated.1);
        }
        if idx < s.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > s.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let cache_first = s.cache_first();
        if idx >= cache_first {
            return Ok(s.cache[(idx - cache_first) as usize].term);
        }
        drop(s);
        let GroupBackend::Disk(disk) = &self.shared.backend else {
            return Err(raft::Error::Store(StorageError::Unavailable));
        };
        let entry = self.read_log(disk, idx, idx + 1, None)?;
        entry
            .first()
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last)
    }

    /// A snapshot at the applied index. In memory, its data is the range's buckets and keys,
    /// postcard of `RangeData` (as `MemGroupStore`'s). On disk it carries no data: the range is
    /// streamed to the peer in parts from a point-in-time view taken here
    /// ([`Store::snapshot_view`], `store::install`), so neither side holds it whole.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (applied, conf) = {
            let s = self.read();
            (s.applied.0, s.conf.clone())
        };
        if applied < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let (first, last) = (self.range.first, self.range.last);
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = self.term(applied)?;
        meta.set_conf_state(conf);
        match &self.shared.backend {
            GroupBackend::Memory(m) => {
                snap.set_data(kvnode_replica::encode_range(&m.range_data(first, last)).into());
            }
            // Taken on the driver's thread, which applies the range's entries: the view is the
            // range as of `applied`.
            GroupBackend::Disk(d) => match d.engine().range_view(first, last) {
                Ok(view) => {
                    let mut views = self.shared.views.lock().unwrap_or_else(PoisonError::into_inner);
                    if views.len() >= VIEWS {
                        views.pop_front();
                    }
                    views.push_back((applied, std::time::Instant::now(), view));
                }
                Err(e) => {
                    // Any error but "not yet" is fatal to raft-rs: asked again at the next
                    // heartbeat answer.
                    tracing::warn!(range = %self.range, error = %e.0, "the range could not be read for a snapshot; trying again");
                    return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
                }
            },
        }
        Ok(snap)
    }
}

/// The core's errors for what the store refused.
fn replica_err(e: impl std::fmt::Display) -> kvnode_replica::StoreError {
    kvnode_replica::StoreError::Raft(raft_err(e))
}

impl GroupStore for NodeGroupStore {
    /// The round is durable already ([`Store::persist_round`]); this takes it into the cache.
    fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), kvnode_replica::StoreError> {
        let max = self.cache_max();
        self.write()
            .persist(snapshot, entries, hard_state, max)
            .map_err(replica_err)?;
        if let Some(snap) = snapshot {
            self.shared.feed.restart_at(snap.get_metadata().index);
        }
        Ok(())
    }

    /// The bootstrap records, unsynced: lost in a crash, the lost-state rule runs again.
    fn bootstrap(&mut self, voters: &[u64]) -> Result<(), kvnode_replica::StoreError> {
        let state = GroupState::bootstrap(voters);
        self.write_unsynced(|| state.records(self.range))?;
        let applied = state.applied.0;
        *self.write() = state;
        self.shared.feed.restart_at(applied);
        Ok(())
    }

    /// Cached only: the next round's hard state carries it, and a restart takes the commit
    /// index to be at least the applied one (`initial_state`).
    fn set_commit(&mut self, commit: u64) -> Result<(), kvnode_replica::StoreError> {
        self.write().hard.commit = commit;
        Ok(())
    }

    /// The command's effect on the range's data and the new applied index, in one atomic
    /// engine batch, not synced. Safe because the entry is already durable in this node's log
    /// (the core applies only entries of rounds made durable), and the applied index moves
    /// with the data it covers: a crash loses a suffix of applies, data and index together,
    /// and the group re-applies from the applied index it finds. Later syncs (any round, any
    /// plain write) make these durable too.
    ///
    /// The effect (a delete that found its key, a put into a bucket that must exist, a put
    /// that reports a new key) is decided here, from the range's state at this entry: the
    /// driver applies a group's entries in order (alone or in runs, `apply_run`), and no
    /// plain write touches a replicated range's buckets, so the check and the write are one
    /// step.
    fn apply(&mut self, index: u64, command: Option<&Command>) -> Result<Effect, kvnode_replica::StoreError> {
        let term = self.term(index).map_err(kvnode_replica::StoreError::Raft)?;
        let effect = match &self.shared.backend {
            GroupBackend::Memory(m) => command.map_or(Effect::Nothing, |c| apply_in_memory(m, c)),
            GroupBackend::Disk(d) => {
                let mut ops = Vec::with_capacity(2);
                ops.extend(command.map(data_op));
                ops.push(self.applied_op(index, term));
                let applied = d.engine().commit_unsynced(&ops).map_err(replica_err)?;
                match (command, applied.first()) {
                    (Some(_), Some(&a)) => effect_of(a),
                    _ => Effect::Nothing,
                }
            }
        };
        self.write().applied = (index, term);
        record(&self.shared.feed, index, command, effect);
        Ok(effect)
    }

    /// The run's writes and its last applied index in one engine batch, unsynced: a leader's
    /// round of many entries costs one journal write, not one each. The engine applies a
    /// batch in order with reads in between (a delete sees a put before it), so each effect
    /// is the one `apply` alone would give.
    fn apply_run(&mut self, run: &[(u64, Option<&Command>)]) -> Result<Vec<Effect>, kvnode_replica::StoreError> {
        let (Some(&(last, _)), GroupBackend::Disk(d)) = (run.last(), &self.shared.backend) else {
            return run.iter().map(|&(index, command)| self.apply(index, command)).collect();
        };
        let term = self.term(last).map_err(kvnode_replica::StoreError::Raft)?;
        let mut ops: Vec<Op> = run.iter().filter_map(|(_, c)| c.map(data_op)).collect();
        ops.push(self.applied_op(last, term));
        let mut applied = d.engine().commit_unsynced(&ops).map_err(replica_err)?.into_iter();
        let effects: Vec<Effect> = run
            .iter()
            .map(|(_, command)| match (command, command.and_then(|_| applied.next())) {
                (Some(_), Some(a)) => effect_of(a),
                _ => Effect::Nothing,
            })
            .collect();
        self.write().applied = (last, term);
        for (&(index, command), &effect) in run.iter().zip(&effects) {
            record(&self.shared.feed, index, command, effect);
        }
        Ok(effects)
    }

    /// The new configuration and the applied index in one engine batch, synced (with every
    /// apply before it): a configuration, once applied, is never lost to a crash. A node
    /// that finds its group counting it alone knows the group ended onto it (a move onto
    /// this node finishes only once its leader, this node, applied that configuration); one
    /// counting others did not end here (`node::replicas`). Rare: one sync per change.
    fn apply_conf(&mut self, index: u64, conf: &ConfState) -> Result<(), kvnode_replica::StoreError> {
        let term = self.term(index).map_err(kvnode_replica::StoreError::Raft)?;
        self.write_synced(|| {
            vec![
                (
                    RaftSpace::State,
                    rec::state_key(self.range, rec::CONF),
                    Some(rec::encode_conf(conf)),
                ),
                (
                    RaftSpace::State,
                    rec::state_key(self.range, rec::APPLIED),
                    Some(rec::encode_index_term(index, term)),
                ),
            ]
        })?;
        {
            let mut s = self.write();
            s.conf = conf.clone();
            s.applied = (index, term);
        }
        self.shared.feed.advance(index);
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.read().applied.0
    }

    /// Drops the entries before `min(index, applied)` (that one stays, as in `MemStorage`),
    /// unsynced: a compaction lost in a crash only leaves more log.
    fn compact(&mut self, index: u64) -> Result<(), kvnode_replica::StoreError> {
        let (first, upto) = {
            let s = self.read();
            (s.first(), index.min(s.applied.0))
        };
        if upto <= first {
            return Ok(());
        }
        let truncated = (upto - 1, self.term(upto - 1).map_err(kvnode_replica::StoreError::Raft)?);
        self.write_unsynced(|| {
            let mut records: Vec<_> = (first..upto)
                .map(|i| (RaftSpace::Log, rec::log_key(self.range, i), None))
                .collect();
            records.push((
                RaftSpace::State,
                rec::state_key(self.range, rec::TRUNCATED),
                Some(rec::encode_index_term(truncated.0, truncated.1)),
            ));
            records
        })?;
        let mut s = self.write();
        s.truncated = truncated;
        while s.cache.front().is_some_and(|e| e.index < upto) {
            if let Some(e) = s.cache.pop_front() {
                s.cache_bytes -= entry_size(&e);
            }
        }
        Ok(())
    }
}

/// Pushes the change an applied entry made to the range's feed (a put stored, a delete that
/// found its key); else only moves the feed's position.
fn record(feed: &Feed, index: u64, command: Option<&Command>, effect: Effect) {
    match (command, effect) {
        (
            Some(
                Command::Put { bucket, key, value }
                | Command::PutExisting { bucket, key, value }
                | Command::PutReporting { bucket, key, value },
            ),
            Effect::Stored | Effect::StoredNew,
        ) => feed.push_at(index, bucket, key, Some(Bytes::copy_from_slice(value))),
        (Some(Command::Delete { bucket, key }), Effect::Deleted) => feed.push_at(index, bucket, key, None),
        _ => feed.advance(index),
    }
}

/// A command applied to the in-memory store, as a single-node write of it would be.
fn apply_in_memory(m: &MemoryStore, command: &Command) -> Effect {
    let v = |value: &Vec<u8>| Bytes::copy_from_slice(value);
    let found = |l: Lookup<()>, yes: Effect| match l {
        Lookup::Found(()) => yes,
        Lookup::NoKey => Effect::NoKey,
        Lookup::NoBucket => Effect::NoBucket,
    };
    match command {
        Command::Put { bucket, key, value } => {
            m.put(bucket, key, v(value));
            Effect::Stored
        }
        Command::PutReporting { bucket, key, value } => match m.put_reporting(bucket, key, v(value)) {
            true => Effect::StoredNew,
            false => Effect::Stored,
        },
        // A put into an existing bucket stores whether the key was there or not.
        Command::PutExisting { bucket, key, value } => match m.put_existing(bucket, key, v(value)) {
            Lookup::NoBucket => Effect::NoBucket,
            Lookup::Found(()) | Lookup::NoKey => Effect::Stored,
        },
        Command::Delete { bucket, key } => found(m.delete(bucket, key), Effect::Deleted),
        Command::CreateBucket { bucket } => Effect::Created(m.create_bucket(bucket)),
    }
}

/// What the engine said a command's write did, as the replica core names it.
fn effect_of(applied: Applied) -> Effect {
    match applied {
        Applied::Stored => Effect::Stored,
        Applied::StoredNew => Effect::StoredNew,
        Applied::Deleted => Effect::Deleted,
        Applied::NoKey => Effect::NoKey,
        Applied::NoBucket => Effect::NoBucket,
        Applied::Created(new) => Effect::Created(new),
    }
}

/// A command's write, as a single-node write of it would be.
fn data_op(command: &Command) -> Op {
    let b = |v: &Vec<u8>| Bytes::copy_from_slice(v);
    match command {
        Command::Put { bucket, key, value } => Op::Put {
            bucket: b(bucket),
            key: b(key),
            value: b(value),
        },
        Command::PutExisting { bucket, key, value } => Op::PutExisting {
            bucket: b(bucket),
            key: b(key),
            value: b(value),
        },
        Command::PutReporting { bucket, key, value } => Op::PutReporting {
            bucket: b(bucket),
            key: b(key),
            value: b(value),
        },
        Command::Delete { bucket, key } => Op::Delete {
            bucket: b(bucket),
            key: b(key),
        },
        Command::CreateBucket { bucket } => Op::CreateBucket { bucket: b(bucket) },
    }
}

/// A group's state as `raft_state` and `raft_log` hold it; `None` if they hold nothing of it.
fn load(disk: &DiskStore, range: RangeId) -> Result<Option<(GroupState, Generation)>, StoreError> {
    let err = |e: super::engine::EngineError| group_err(range, e.0);
    let engine = disk.engine();
    if super::install::marked(&**engine, range).map_err(err)? {
        // A streamed snapshot was being written when the node stopped: the range is neither
        // its old data nor the snapshot's (`store::install`).
        tracing::warn!(%range, "range {range} was taking a snapshot when this node stopped: its data is cleared, and the range's leader sends it again");
        super::install::wipe(&**engine, range).map_err(err)?;
    }
    let get = |kind| engine.raft_get(RaftSpace::State, &rec::state_key(range, kind));
    let (hard, conf, applied, truncated) = (get(rec::HARD), get(rec::CONF), get(rec::APPLIED), get(rec::TRUNCATED));
    let (hard, conf, applied, truncated) = (
        hard.map_err(err)?,
        conf.map_err(err)?,
        applied.map_err(err)?,
        truncated.map_err(err)?,
    );
    if hard.is_none() && conf.is_none() && applied.is_none() && truncated.is_none() {
        return Ok(None);
    }
    let mut s = GroupState::uninitialised();
    let damaged = |reason: String| group_err(range, format!("{reason}; the store is damaged"));
    if let Some(v) = hard {
        s.hard = rec::decode_hard(&v).map_err(damaged)?;
    }
    if let Some(v) = conf {
        s.conf = rec::decode_conf(&v).map_err(damaged)?;
    }
    if let Some(v) = applied {
        let it = rec::decode_index_term(&v).map_err(damaged)?;
        s.applied = (it.index, it.term);
    }
    if let Some(v) = truncated {
        let it = rec::decode_index_term(&v).map_err(damaged)?;
        s.truncated = (it.index, it.term);
    }
    let (from, to) = rec::log_span(range, s.first(), None);
    let tail = engine
        .raft_scan(RaftSpace::Log, &from, &to, true, CACHE_ENTRIES)
        .map_err(err)?;
    s.last = s.truncated.0;
    for (i, (key, value)) in tail.iter().rev().enumerate() {
        let e = rec::decode_entry(value).map_err(damaged)?;
        let expected = s.cache.back().map(|p| p.index + 1);
        if rec::log_index(key) != Some(e.index) || expected.is_some_and(|x| x != e.index) {
            return Err(damaged(format!("the log has a hole before index {}", e.index)));
        }
        if i == 0 && tail.len() < CACHE_ENTRIES && e.index != s.first() {
            return Err(damaged(format!(
                "the log starts at {} where {} was expected",
                e.index,
                s.first()
            )));
        }
        s.last = e.index;
        s.cache_bytes += entry_size(&e);
        s.cache.push_back(e);
    }
    s.trim_cache(CacheMax::DISK);
    if s.applied.0 > s.last || s.applied.0 < s.truncated.0 {
        return Err(damaged(format!(
            "the applied index {} is outside the log ({}..={})",
            s.applied.0, s.truncated.0, s.last
        )));
    }
    let generation = match get(rec::GENERATION).map_err(err)? {
        Some(v) => rec::decode_generation(&v).map_err(damaged)?,
        None => Generation::LEGACY,
    };
    Ok(Some((s, generation)))
}

impl Store {
    /// The group `range`'s store: what this store holds for it if anything (a restart), else a
    /// freshly bootstrapped group when `bootstrap` is `Some(voters)` (exactly like
    /// `MemGroupStore::bootstrap`: snapshot at index 1, term 1, those voters, empty range),
    /// else an uninitialised one (like `MemGroupStore::uninitialised`). Asked again, the same
    /// group (clones share it).
    ///
    /// Bootstrapping writes nothing to the range's data: a range that already holds buckets
    /// here keeps them (the table refuses to make such a range replicated until issue 26).
    /// The bootstrap records are written unsynced: lost in a crash, the same bootstrap runs
    /// again.
    ///
    /// A group created here is of `generation` (recorded with it); one found keeps the
    /// generation it was created with, which the caller compares with the table's.
    pub fn group(
        &self,
        range: RangeId,
        generation: Generation,
        bootstrap: Option<&[u64]>,
    ) -> Result<NodeGroupStore, StoreError> {
        let mut held = self.groups.lock();
        if let Some(g) = held.get(&range) {
            return Ok(g.clone());
        }
        let (backend, found) = match &self.backend {
            Backend::Memory(m) => (GroupBackend::Memory(m.for_group()), None),
            Backend::Disk(d) => (GroupBackend::Disk(d.clone()), load(d, range)?),
        };
        let group = match found {
            Some((state, stored)) => NodeGroupStore::new(range, stored, backend, state),
            None => {
                let mut group = NodeGroupStore::new(range, generation, backend, GroupState::uninitialised());
                group
                    .write_unsynced(|| {
                        let key = rec::state_key(range, rec::GENERATION);
                        vec![(RaftSpace::State, key, Some(rec::encode_generation(generation)))]
                    })
                    .map_err(|e| group_err(range, e.to_string()))?;
                if let Some(voters) = bootstrap {
                    group.bootstrap(voters).map_err(|e| group_err(range, e.to_string()))?;
                }
                group
            }
        };
        held.insert(range, group.clone());
        Ok(group)
    }

    /// Forgets the group of `range` (this node left it: a move is done, issue 26): its Raft
    /// log and state go, and unless `keep_data` (this node keeps the range as its single
    /// owner) so do the range's buckets, in one engine batch, synced. The caller has removed
    /// the group from its core first, so nothing writes to it meanwhile.
    ///
    /// The range's ended histories (`store::ended`) stay, in the same batch: with `ended`
    /// among them (the group's history ended), and, when the data goes, every seal given up
    /// (this node's bytes of the range are no sealed history's any more).
    ///
    /// A damaged record is left as it is (it claims no seal, and it keeps the core from
    /// answering the range's probes: `Driver::note_ended`).
    pub async fn drop_group(&self, range: RangeId, keep_data: bool, ended: Option<Ended>) -> Result<(), StoreError> {
        let (list, changed) = match self.ended(range) {
            Ok(before) => {
                let mut list = before.clone();
                if let Some(e) = ended {
                    list = super::ended::with(list, e);
                }
                if !keep_data {
                    list = super::ended::unsealed(list);
                }
                let changed = list != before;
                (list, changed)
            }
            Err(e) => {
                tracing::error!(%range, error = %e, "range {range}'s ended record is left as it is");
                (Vec::new(), false)
            }
        };
        self.groups.lock().remove(&range);
        let empty = Arc::new(RangeData::new());
        match &self.backend {
            Backend::Memory(m) => {
                if !keep_data {
                    m.replace_range(range.first, range.last, &empty);
                }
                if changed {
                    self.ended_in_memory().insert(range, list);
                }
                Ok(())
            }
            Backend::Disk(d) => {
                let mut writes = RaftWrites::default();
                if !keep_data {
                    writes.replace.push((range.first, range.last, empty));
                }
                if changed {
                    writes.records.push(super::ended::record(range, &list));
                }
                let (from, to) = rec::log_span(range, 0, None);
                let log = d
                    .engine()
                    .raft_scan(RaftSpace::Log, &from, &to, false, usize::MAX)
                    .map_err(|e| StoreError::Engine(e.0))?;
                writes
                    .records
                    .extend(log.into_iter().map(|(k, _)| (RaftSpace::Log, k, None)));
                for kind in [rec::HARD, rec::CONF, rec::APPLIED, rec::TRUNCATED, rec::GENERATION] {
                    writes
                        .records
                        .push((RaftSpace::State, rec::state_key(range, kind), None));
                }
                d.write(Op::Raft(Arc::new(writes))).await.map(|_| ())
            }
        }
    }

    /// The change feed of the replicated range `range`, if this node holds its group.
    pub fn range_feed(&self, range: RangeId) -> Option<Arc<Feed>> {
        self.groups.lock().get(&range).map(|g| Arc::clone(g.feed()))
    }

    /// The ranges this store holds Raft state for (read at start), and any group asked for
    /// since.
    pub fn groups(&self) -> Result<Vec<RangeId>, StoreError> {
        let mut ranges: Vec<RangeId> = self.groups.lock().keys().copied().collect();
        if let Backend::Disk(d) = &self.backend {
            let all = d
                .engine()
                .raft_scan(RaftSpace::State, &[], &[0xff; 4], false, usize::MAX)
                .map_err(|e| StoreError::Engine(e.0))?;
            // A generation alone is an uninitialised group's: no state; an ended record
            // outlives its group.
            ranges.extend(all.iter().filter_map(|(k, _)| match k.as_slice() {
                [_, _, rec::GENERATION | rec::ENDED] => None,
                [first, last, ..] => Some(RangeId {
                    first: *first,
                    last: *last,
                }),
                _ => None,
            }));
        }
        ranges.sort();
        ranges.dedup();
        Ok(ranges)
    }

    /// Makes one round durable: every group's snapshot, entries (replacing a suffix from the
    /// first one's index) and hard state, in ONE engine batch and ONE sync, sharing the group
    /// commit with the plain puts queued meanwhile (`Op::Raft`). Resolves once synced (in
    /// memory: at once, having installed the round's snapshots into the memory store). The
    /// driver then calls `Replicas::handle_persisted`, whose `GroupStore::persist` calls only
    /// update caches. Every group must have been asked for with [`Store::group`].
    pub async fn persist_round(&self, persist: &Persist) -> Result<(), StoreError> {
        let mut writes = RaftWrites::default();
        {
            let held = self.groups.lock();
            for w in &persist.groups {
                let Some(group) = held.get(&w.range) else {
                    return Err(group_err(
                        w.range,
                        "the round names a group this store was never asked for",
                    ));
                };
                let bounds = group.read().bounds();
                // Planned on both backends, so that a round out of order is refused alike.
                let round = rec::plan_round(w.range, &bounds, w).map_err(|e| group_err(w.range, e))?;
                if let Some(data) = round.replace {
                    writes.replace.push((w.range.first, w.range.last, data));
                }
                // In memory the cache is the log: only a snapshot's data has somewhere to go.
                if let Backend::Disk(_) = &self.backend {
                    writes.records.extend(round.records);
                }
            }
        }
        match &self.backend {
            Backend::Memory(m) => {
                for (first, last, data) in &writes.replace {
                    m.replace_range(*first, *last, data);
                }
                Ok(())
            }
            // Nothing to make durable (a round of messages only: heartbeats, read-index
            // rounds, answers): no sync to wait for.
            Backend::Disk(_) if writes.records.is_empty() && writes.replace.is_empty() => Ok(()),
            Backend::Disk(d) => d.write(Op::Raft(Arc::new(writes))).await.map(|_| ()),
        }
    }
}

impl Store {
    /// Every bucket of `range` with its keys, as a snapshot of its group would carry them.
    /// Reads the whole range on the calling thread (tests and checks, not the serving path).
    pub fn range_data(&self, range: RangeId) -> Result<RangeData, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.range_data(range.first, range.last)),
            Backend::Disk(d) => d
                .engine()
                .range_data(range.first, range.last)
                .map_err(|e| StoreError::Engine(e.0)),
        }
    }
}
