//! What a storage engine must do for the store, and the key layout every engine shares.

use bytes::Bytes;

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
