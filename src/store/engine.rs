//! What a storage engine must do for the store, and the key layout every engine shares.

use std::sync::Arc;

use bytes::Bytes;
use kvnode_replica::RangeData;

/// One write in a group-committed batch.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        bucket: Bytes,
        key: Bytes,
        value: Bytes,
    },
    Delete {
        bucket: Bytes,
        key: Bytes,
    },
    /// A put that stores nothing, [`Applied::NoBucket`], if the bucket does not exist.
    PutExisting {
        bucket: Bytes,
        key: Bytes,
        value: Bytes,
    },
    /// A put (creating the bucket if needed) that reports whether the key is new:
    /// [`Applied::StoredNew`] if it was not there, [`Applied::Stored`] if a value was replaced
    /// (RESP's `HSET`, which counts the new fields).
    PutReporting {
        bucket: Bytes,
        key: Bytes,
        value: Bytes,
    },
    /// Makes the bucket exist, empty if it is new; nothing changes if it exists.
    CreateBucket {
        bucket: Bytes,
    },
    /// Raft groups' records and snapshot installs (issue 25), written together in the batch:
    /// a round's writes of every group ride one sync with the plain writes queued meanwhile.
    /// Answered [`Applied::Stored`].
    Raft(Arc<RaftWrites>),
}

/// Raft records as a scan returns them: key and value.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Which of the Raft keyspaces a record lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftSpace {
    /// `[range: 2][index: u64 BE]` → a log entry.
    Log,
    /// `[range: 2][kind: 1]` → a group's hard state, conf state, applied and truncated index.
    State,
}

/// One batch's Raft writes. Keys are distinct within it (the builder nets out a key removed
/// and set again), because a storage batch gives all its writes one sequence number.
#[derive(Clone, Debug, Default)]
pub struct RaftWrites {
    /// Snapshot installs, applied first: every bucket whose name's first byte is in
    /// `first..=last`, and its keys, is replaced by the snapshot's. Plain writes never touch a
    /// replicated range's buckets, so nothing else in the batch meets these.
    pub replace: Vec<(u8, u8, Arc<RangeData>)>,
    /// Records set (`Some`) or removed (`None`).
    pub records: Vec<(RaftSpace, Vec<u8>, Option<Vec<u8>>)>,
}

/// What each op of a committed batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Stored,
    /// A [`Op::PutReporting`] of a key that was not there.
    StoredNew,
    Deleted,
    /// A delete of a key that was not there.
    NoKey,
    /// A delete (or a put into an existing bucket) in a bucket that was never created.
    NoBucket,
    /// A bucket made by [`Op::CreateBucket`] (`false`: it existed already).
    Created(bool),
}

/// Why the engine failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

/// An embedded storage engine. `commit` makes a whole batch durable with one sync (that is
/// group commit's saving); reads see every committed write.
pub trait Engine: Send + Sync + 'static {
    /// Applies `batch` in order and returns once it is durable on disk.
    fn commit(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError>;
    fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<Bytes>, EngineError>;
    /// The newest value of `key`, when the engine can tell it from memory alone: no I/O and
    /// no lock that anything holds across I/O, so it may run on the event loop. `None` says
    /// nothing (not there, deleted, or not known without the disk): ask [`Engine::get`] then,
    /// on a blocking thread.
    fn get_in_memory(&self, _bucket: &[u8], _key: &[u8]) -> Option<Bytes> {
        None
    }
    fn bucket_exists(&self, bucket: &[u8]) -> Result<bool, EngineError>;
    /// The bucket's keys in order, from the first after `after` (from the first of all
    /// without), as many as fit in `budget` bytes ([`KeyPage::fill`]).
    fn keys(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Result<KeyPage, EngineError>;

    // Raft groups' storage (issue 25). Only fjall has it; another engine refuses replicated
    // ranges with this error.

    /// Applies `batch` atomically without waiting for a sync: a group's applied entries, which
    /// its durable log can replay after a crash.
    fn commit_unsynced(&self, _batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
        Err(no_raft())
    }
    /// One Raft record.
    fn raft_get(&self, _space: RaftSpace, _key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Err(no_raft())
    }
    /// Raft records with keys in `from..to`, in order (from the last, `rev`), at most `limit`.
    fn raft_scan(
        &self,
        _space: RaftSpace,
        _from: &[u8],
        _to: &[u8],
        _rev: bool,
        _limit: usize,
    ) -> Result<Records, EngineError> {
        Err(no_raft())
    }
    /// Every bucket whose name's first byte is in `first..=last`, with its keys and values.
    fn range_data(&self, _first: u8, _last: u8) -> Result<RangeData, EngineError> {
        Err(no_raft())
    }
    /// [`Engine::range_data`] as of now, read later in parts (on any thread, while writes go
    /// on): a point-in-time view is taken here, cheaply (a streamed snapshot, issue 26).
    fn range_view(&self, _first: u8, _last: u8) -> Result<Arc<dyn RangeView>, EngineError> {
        Err(no_raft())
    }
    /// How many keys the buckets whose name's first byte is in `first..=last` hold, and
    /// their keys' and values' bytes (a walk of the range: for `route --balance`'s plan).
    fn range_size(&self, _first: u8, _last: u8) -> Result<(u64, u64), EngineError> {
        Err(no_raft())
    }
    /// Removes up to `limit` of the keys and buckets whose name's first byte is in
    /// `first..=last`, from `from` on (the range's start without), in one batch, unsynced;
    /// where the next batch starts, `None` once the range is clear (a streamed snapshot's
    /// install clears the range in parts, under a marker that a restart sees). Each batch
    /// starts where the last ended, not over the deletions it left.
    fn clear_range_part(
        &self,
        _first: u8,
        _last: u8,
        _limit: usize,
        _from: Option<&PartCursor>,
    ) -> Result<Option<PartCursor>, EngineError> {
        Err(no_raft())
    }
}

/// Where a walk of a range's data goes on: a bucket, and the last of its keys already taken
/// (`None`: none of them yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartCursor {
    pub bucket: Vec<u8>,
    pub after: Option<Vec<u8>>,
}

/// A range's data as of when the view was taken, read in parts.
pub trait RangeView: Send + Sync + 'static {
    /// The buckets and keys from `from` on (from the range's start without), about `budget`
    /// bytes of them (always at least one bucket or key, so a walk moves on), and where the
    /// next part starts (`None`: this part ends the range).
    fn part(&self, from: Option<&PartCursor>, budget: usize) -> Result<(RangeData, Option<PartCursor>), EngineError>;
}

/// What an engine without Raft storage says when asked for it.
pub fn no_raft() -> EngineError {
    EngineError(
        "replicated ranges (a routing table entry with several nodes) need the fjall engine; \
         this node's store uses another: rebuild with the default features"
            .into(),
    )
}

/// One answer's worth of a bucket's keys, in order; `more`: further keys follow the last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<Bytes>,
    pub more: bool,
}

/// What a key costs a page beyond its bytes: its encoded length prefix (1 or 2 bytes for
/// keys of at most 1024), rounded up.
const KEY_OVERHEAD: usize = 4;

impl KeyPage {
    /// Takes keys from `keys`, in order, while their encoded size stays within `budget`
    /// bytes (always at least one, so that a listing moves on).
    pub fn fill<E>(keys: impl IntoIterator<Item = Result<Bytes, E>>, budget: usize) -> Result<Self, E> {
        let mut page = KeyPage::default();
        let mut used = 0;
        for key in keys {
            let key = key?;
            let cost = key.len() + KEY_OVERHEAD;
            if !page.keys.is_empty() && used + cost > budget {
                page.more = true;
                break;
            }
            used += cost;
            page.keys.push(key);
        }
        Ok(page)
    }
}

/// Where a listing of `bucket`'s keys after `after` starts in the shared key layout: the
/// smallest (bucket, key) pair above (bucket, after), or the bucket's first.
pub fn keys_start(bucket: &[u8], after: Option<&[u8]>) -> Vec<u8> {
    match after {
        Some(after) => {
            let mut start = data_key(bucket, after);
            start.push(0);
            start
        }
        None => bucket_prefix(bucket),
    }
}

/// `[bucket length: u16 BE][bucket][key]`: keys of one bucket are contiguous and no two
/// (bucket, key) pairs collide (`"ab" + "c"` is not `"a" + "bc"`).
pub fn data_key(bucket: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = bucket_prefix(bucket);
    k.extend_from_slice(key);
    k
}

/// The prefix every key of `bucket` starts with.
pub fn bucket_prefix(bucket: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bucket.len()).expect("bucket names are at most 1024 bytes");
    let mut k = Vec::with_capacity(2 + bucket.len() + 32);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(bucket);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_key_boundaries_never_collide() {
        assert_ne!(data_key(b"ab", b"c"), data_key(b"a", b"bc"));
        assert!(data_key(b"a", b"bc").starts_with(&bucket_prefix(b"a")));
        assert!(!data_key(b"ab", b"c").starts_with(&bucket_prefix(b"a")));
    }
}
