//! What each group reads and writes: [`GroupStore`], raft-rs's `Storage` plus the writes the
//! core makes once the caller says a round is durable, and [`MemGroupStore`], the in-memory one.
//!
//! Step 3 of the design puts a fjall implementation beside it (the `raft_log` and `raft_state`
//! keyspaces, the range's buckets in `data`); the core needs only this trait.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use serde_bytes::{ByteBuf, Bytes};

use crate::command::{Command, Effect};

/// Why a group's store refused a write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// raft-rs's own storage said no (an append leaving a hole, a compaction past the log).
    #[error("raft log: {0}")]
    Raft(#[from] raft::Error),
    /// A snapshot's data is not a range's state (a peer sent garbage).
    #[error("snapshot data is malformed")]
    Snapshot,
}

/// A group's log, hard state and applied state, as one replica holds them.
///
/// `raft::Storage` is read-only; the core writes through the methods here, and only in
/// `Replicas::handle_persisted`, i.e. after the caller made the round durable. A store that
/// writes to disk itself (step 3) does so from the round's `Persist` before that call and
/// makes these methods update its caches; the in-memory store simply writes here.
pub trait GroupStore: Storage + Clone {
    /// Takes a round's snapshot (replacing the range's state), then its new log entries and
    /// hard state.
    fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError>;

    /// Makes an uninitialised group (one with no voters) a new one: the bootstrap snapshot
    /// at [`BOOTSTRAP_INDEX`] with `voters` and an empty range, as
    /// [`MemGroupStore::bootstrap`] makes it. Called by the core only once every other
    /// replica has said the range is new (the lost-state rule). Need not be synced: lost in a
    /// crash, the rule runs again.
    fn bootstrap(&mut self, voters: &[u64]) -> Result<(), StoreError>;

    /// Records a commit index learned after the round's hard state was written.
    fn set_commit(&mut self, commit: u64) -> Result<(), StoreError>;

    /// Applies the committed entry at `index`: its command (`None` for an entry with none: a
    /// new leader's empty entry, a conf change), with the applied index in the same write.
    /// Says what it did, decided by the range's state at this entry (see [`Effect`]).
    fn apply(&mut self, index: u64, command: Option<&Command>) -> Result<Effect, StoreError>;

    /// Applies a run of committed entries, none a configuration change, in order, exactly as
    /// [`GroupStore::apply`] on each in turn would (their effects likewise), but in one write
    /// where the store can: a leader applies a round's many entries at the cost of one.
    fn apply_run(&mut self, run: &[(u64, Option<&Command>)]) -> Result<Vec<Effect>, StoreError> {
        run.iter().map(|&(index, command)| self.apply(index, command)).collect()
    }

    /// Applies the committed configuration change at `index`: the group's new voters and
    /// learners, with the applied index, in one write (a crash keeps both or neither).
    fn apply_conf(&mut self, index: u64, conf: &ConfState) -> Result<(), StoreError>;

    /// The index of the last applied entry.
    fn applied(&self) -> u64;

    /// Drops the log up to `index` (at most the applied index): a follower behind that then
    /// catches up by snapshot.
    fn compact(&mut self, index: u64) -> Result<(), StoreError>;
}

/// Where every group's log starts: its bootstrap snapshot's index.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// A range's applied state: every bucket and its keys, as a snapshot carries them.
pub type RangeData = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A snapshot's data when its range's data was streamed and written into the store before
/// the message was stepped (issue 26; `core::install`): the store then writes only the
/// group's records. No [`encode_range`] output is these bytes (it would announce more buckets
/// than it holds bytes), and a snapshot with these bytes from the network is dropped.
pub const INSTALLED: &[u8] = b"kvnode: installed in place";

/// A snapshot's data: postcard of the [`RangeData`], written with each name, key and value as
/// bytes (the same encoding as postcard gives a `Vec<u8>`, in one copy rather than byte by
/// byte).
pub fn encode_range(data: &RangeData) -> Vec<u8> {
    let view: BTreeMap<&Bytes, BTreeMap<&Bytes, &Bytes>> = data
        .iter()
        .map(|(bucket, keys)| {
            let keys = keys.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))).collect();
            (Bytes::new(bucket), keys)
        })
        .collect();
    // Maps of byte strings always serialise.
    postcard::to_allocvec(&view).unwrap_or_default()
}

/// The [`RangeData`] of a snapshot's data; `None` for bytes that are not one.
pub fn decode_range(bytes: &[u8]) -> Option<RangeData> {
    let read: BTreeMap<ByteBuf, BTreeMap<ByteBuf, ByteBuf>> = postcard::from_bytes(bytes).ok()?;
    Some(
        read.into_iter()
            .map(|(bucket, keys)| {
                let keys = keys.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect();
                (bucket.into_vec(), keys)
            })
            .collect(),
    )
}

#[derive(Default)]
struct Applied {
    index: u64,
    data: RangeData,
}

/// The in-memory store: raft-rs's `MemStorage` for the log, and the range's buckets. Clones
/// share one store, which is how the simulator keeps a killed node's "disk" for its restart.
#[derive(Clone, Default)]
pub struct MemGroupStore {
    log: MemStorage,
    applied: Arc<RwLock<Applied>>,
}

impl MemGroupStore {
    /// A new group's first replica state, alike on every replica the table entry names: the
    /// voters and an empty range, as a snapshot at index 1 (term 1). The log then starts at 2,
    /// so a replica that lost its state ([`MemGroupStore::uninitialised`]) can only be made
    /// whole by a snapshot, never by entries it would take without the voters.
    pub fn bootstrap(voters: &[u64]) -> Self {
        let mut store = MemGroupStore::default();
        // An empty MemStorage takes any snapshot at index 1 or above.
        let _ = GroupStore::bootstrap(&mut store, voters);
        store
    }

    /// A replica that knows nothing of its group (a wiped disk, a restarted in-memory node):
    /// no voters, so it never campaigns, and the core lets it vote only once a snapshot from
    /// the leader has made it whole.
    pub fn uninitialised() -> Self {
        MemGroupStore::default()
    }

    /// A copy of the range's applied state.
    pub fn data(&self) -> RangeData {
        self.read().data.clone()
    }

    fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A panic elsewhere while holding the lock leaves the state as consistent as any write
        // here (each is one assignment), so a poisoned lock is still read.
        self.applied.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Storage for MemGroupStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.log.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max: impl Into<Option<u64>>,
        ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max, ctx)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.log.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.log.last_index()
    }

    /// A snapshot at the applied index, whose data is the range's state there (MemStorage's own
    /// would be at the commit index, which the applied data may not have reached).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let applied = self.read();
        if applied.index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snap = Snapshot::default();
        snap.set_data(encode_range(&applied.data).into());
        let meta = snap.mut_metadata();
        meta.index = applied.index;
        meta.term = self.log.term(applied.index)?;
        meta.set_conf_state(self.log.initial_state()?.conf_state);
        Ok(snap)
    }
}

impl GroupStore for MemGroupStore {
    fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        if let Some(snap) = snapshot {
            let data: RangeData = match snap.get_data() {
                // Streamed: the caller wrote the data already.
                INSTALLED => self.read().data.clone(),
                bytes => decode_range(bytes).ok_or(StoreError::Snapshot)?,
            };
            self.log.wl().apply_snapshot(snap.clone())?;
            *self.write() = Applied {
                index: snap.get_metadata().index,
                data,
            };
        }
        self.log.wl().append(entries)?;
        if let Some(hs) = hard_state {
            self.log.wl().set_hardstate(hs.clone());
        }
        Ok(())
    }

    fn bootstrap(&mut self, voters: &[u64]) -> Result<(), StoreError> {
        let mut snap = Snapshot::default();
        snap.set_data(encode_range(&RangeData::new()).into());
        let meta = snap.mut_metadata();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = BOOTSTRAP_INDEX;
        meta.mut_conf_state().set_voters(voters.to_vec());
        self.log.wl().apply_snapshot(snap)?;
        let mut applied = self.write();
        applied.index = BOOTSTRAP_INDEX;
        applied.data = RangeData::new();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        self.log.wl().mut_hard_state().set_commit(commit);
        Ok(())
    }

    fn apply(&mut self, index: u64, command: Option<&Command>) -> Result<Effect, StoreError> {
        let mut applied = self.write();
        let data = &mut applied.data;
        let effect = match command {
            Some(Command::Put { bucket, key, value }) => {
                data.entry(bucket.clone())
                    .or_default()
                    .insert(key.clone(), value.clone());
                Effect::Stored
            }
            Some(Command::PutReporting { bucket, key, value }) => {
                match data
                    .entry(bucket.clone())
                    .or_default()
                    .insert(key.clone(), value.clone())
                {
                    Some(_) => Effect::Stored,
                    None => Effect::StoredNew,
                }
            }
            Some(Command::PutExisting { bucket, key, value }) => match data.get_mut(bucket) {
                Some(b) => {
                    b.insert(key.clone(), value.clone());
                    Effect::Stored
                }
                None => Effect::NoBucket,
            },
            Some(Command::Delete { bucket, key }) => match data.get_mut(bucket) {
                Some(b) => match b.remove(key) {
                    Some(_) => Effect::Deleted,
                    None => Effect::NoKey,
                },
                None => Effect::NoBucket,
            },
            Some(Command::CreateBucket { bucket }) => {
                let new = !data.contains_key(bucket);
                data.entry(bucket.clone()).or_default();
                Effect::Created(new)
            }
            None => Effect::Nothing,
        };
        applied.index = index;
        Ok(effect)
    }

    fn apply_conf(&mut self, index: u64, conf: &ConfState) -> Result<(), StoreError> {
        self.log.wl().set_conf_state(conf.clone());
        self.write().index = index;
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.read().index
    }

    fn compact(&mut self, index: u64) -> Result<(), StoreError> {
        let upto = index.min(self.applied());
        self.log.wl().compact(upto)?;
        Ok(())
    }
}
