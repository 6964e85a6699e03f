//! Streamed snapshots on the store (issue 26): a range's data travels in parts, read from a
//! point-in-time view on the sender ([`Store::snapshot_view`]) and written as they come on
//! the receiver, so neither side holds more than a part of a range of any size.
//!
//! The receiver writes under a marker: [`Store::begin_install`] records that `range`'s data
//! is being replaced (synced) and clears it; [`Store::install_part`] writes each part,
//! unsynced; the snapshot's round ([`Store::persist_round`], synced, after every part in the
//! journal) writes the group's records and removes the marker. A node that stops in
//! between finds the marker at its next start, and [`Store::group`] clears the range and the
//! group's records (keeping its term and vote): the replica starts again empty, gives no vote,
//! and is sent a snapshot again. That is safe only because the core takes a streamed
//! snapshot only when raft-rs would restore it, which means this replica held nothing of the
//! log that a commit counted on (`kvnode_replica::Replicas::begin_install`).

use std::sync::Arc;

use kvnode_replica::{RangeData, RangeId};

use super::engine::{EngineError, Op, RaftSpace, RaftWrites, RangeView};
use super::group_records as rec;
use super::{Backend, Store, StoreError};

/// How many keys one batch of a range's clearing removes.
const CLEAR_BATCH: usize = 4096;

impl Store {
    /// The view a streamed snapshot of `range` at `index` is read from (taken when raft-rs
    /// asked the group for that snapshot), while the group keeps it.
    pub fn snapshot_view(&self, range: RangeId, index: u64) -> Option<Arc<dyn RangeView>> {
        self.groups.view(range, index)
    }

    /// How many keys `range` holds here and their bytes (keys and values), read on a
    /// blocking thread.
    pub async fn range_size(&self, range: RangeId) -> Result<(u64, u64), StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.range_size(range.first, range.last)),
            Backend::Disk(d) => {
                let engine = Arc::clone(d.engine());
                let size = tokio::task::spawn_blocking(move || engine.range_size(range.first, range.last)).await;
                match size {
                    Ok(r) => r.map_err(|e| StoreError::Engine(e.0)),
                    Err(e) => Err(StoreError::Engine(format!("the store's task failed: {e}"))),
                }
            }
        }
    }

    /// The stream of the snapshot of `range` at `index` is done: its view goes (a stream
    /// still reading it keeps its own reference).
    pub fn release_view(&self, range: RangeId, index: u64) {
        self.groups.release_view(range, index);
    }

    /// Whether `range`'s data is marked as being replaced by a streamed snapshot.
    pub fn install_marked(&self, range: RangeId) -> bool {
        match &self.backend {
            Backend::Memory(_) => false,
            Backend::Disk(d) => marked(&**d.engine(), range).unwrap_or(false),
        }
    }

    /// Starts replacing `range`'s data with a streamed snapshot's: the marker, synced, then
    /// the range's buckets and keys removed, in batches.
    pub async fn begin_install(&self, range: RangeId) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.replace_range(range.first, range.last, &RangeData::new());
                Ok(())
            }
            Backend::Disk(d) => {
                let marker = RaftWrites {
                    replace: vec![],
                    records: vec![(RaftSpace::State, rec::state_key(range, rec::INSTALLING), Some(vec![]))],
                };
                d.write(Op::Raft(Arc::new(marker))).await?;
                let engine = Arc::clone(d.engine());
                blocking(move || clear_range(&*engine, range)).await
            }
        }
    }

    /// Writes one part of a streamed snapshot's data into `range` (unsynced on disk; the
    /// snapshot's round syncs it).
    pub async fn install_part(&self, range: RangeId, part: RangeData) -> Result<(), StoreError> {
        let outside = part
            .keys()
            .find(|b| b.first().is_none_or(|&f| f < range.first || f > range.last));
        if let Some(bucket) = outside {
            return Err(super::group::group_err(
                range,
                format!(
                    "a snapshot part holds bucket {:?}, which is outside the range",
                    String::from_utf8_lossy(bucket)
                ),
            ));
        }
        match &self.backend {
            Backend::Memory(m) => {
                for (bucket, keys) in part {
                    m.create_bucket(&bucket);
                    for (key, value) in keys {
                        m.put(&bucket, &key, value.into());
                    }
                }
                Ok(())
            }
            Backend::Disk(d) => {
                let engine = Arc::clone(d.engine());
                blocking(move || {
                    let mut ops = Vec::new();
                    for (bucket, keys) in part {
                        let bucket = bytes::Bytes::from(bucket);
                        ops.push(Op::CreateBucket { bucket: bucket.clone() });
                        ops.extend(keys.into_iter().map(|(key, value)| Op::Put {
                            bucket: bucket.clone(),
                            key: key.into(),
                            value: value.into(),
                        }));
                    }
                    engine.commit_unsynced(&ops).map(|_| ())
                })
                .await
            }
        }
    }

    /// Clears `range`'s group after a streamed snapshot that did not arrive whole: the range's
    /// data and the group's records but its term and vote, and forgets the group (asked for
    /// again, it is uninitialised). Synced.
    pub async fn wipe_group(&self, range: RangeId) -> Result<(), StoreError> {
        let held = self.groups.forget(range);
        match &self.backend {
            Backend::Memory(m) => {
                m.replace_range(range.first, range.last, &RangeData::new());
                // Nothing on disk keeps the term and vote: the new group takes them over.
                if let Some(held) = held {
                    self.group(range, held.generation(), None)?.keep_vote_of(&held);
                }
                Ok(())
            }
            Backend::Disk(d) => {
                let engine = Arc::clone(d.engine());
                blocking(move || wipe(&*engine, range)).await
            }
        }
    }
}

/// Whether the installing marker of `range` is on disk.
pub(super) fn marked(engine: &dyn super::engine::Engine, range: RangeId) -> Result<bool, EngineError> {
    engine
        .raft_get(RaftSpace::State, &rec::state_key(range, rec::INSTALLING))
        .map(|v| v.is_some())
}

/// Removes every bucket and key of `range`, a batch at a time, unsynced.
fn clear_range(engine: &dyn super::engine::Engine, range: RangeId) -> Result<(), EngineError> {
    let mut from = None;
    while let Some(next) = engine.clear_range_part(range.first, range.last, CLEAR_BATCH, from.as_ref())? {
        from = Some(next);
    }
    Ok(())
}

/// The data of `range` and its group's records but the hard state's term and vote (its
/// commit index goes to 0: the log is gone), the marker last, synced.
pub(super) fn wipe(engine: &dyn super::engine::Engine, range: RangeId) -> Result<(), EngineError> {
    clear_range(engine, range)?;
    let (from, to) = rec::log_span(range, 0, None);
    loop {
        let log = engine.raft_scan(RaftSpace::Log, &from, &to, false, CLEAR_BATCH)?;
        if log.is_empty() {
            break;
        }
        let records = log.into_iter().map(|(k, _)| (RaftSpace::Log, k, None)).collect();
        engine.commit_unsynced(&[Op::Raft(Arc::new(RaftWrites {
            replace: vec![],
            records,
        }))])?;
    }
    let hard = engine
        .raft_get(RaftSpace::State, &rec::state_key(range, rec::HARD))?
        .map(|v| rec::decode_hard(&v))
        .transpose()
        .map_err(EngineError)?;
    let mut records: Vec<_> = [rec::CONF, rec::APPLIED, rec::TRUNCATED, rec::INSTALLING]
        .into_iter()
        .map(|kind| (RaftSpace::State, rec::state_key(range, kind), None))
        .collect();
    if let Some(mut hard) = hard {
        hard.commit = 0;
        records.push((
            RaftSpace::State,
            rec::state_key(range, rec::HARD),
            Some(rec::encode_hard(&hard)),
        ));
    }
    engine
        .commit(&[Op::Raft(Arc::new(RaftWrites {
            replace: vec![],
            records,
        }))])
        .map(|_| ())
}

/// Runs store work on a blocking thread.
async fn blocking(f: impl FnOnce() -> Result<(), EngineError> + Send + 'static) -> Result<(), StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| StoreError::Engine(e.0)),
        Err(e) => Err(StoreError::Engine(format!("the store's task failed: {e}"))),
    }
}
