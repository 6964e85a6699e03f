//! The in-memory backend: a sharded map of buckets, each behind its own lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

use super::Lookup;
use super::engine::KeyPage;
use super::feed::Feed;

const SHARDS: usize = 64;

/// Keys and values as boxed slices: 32 bytes a slot where `Bytes` pairs take 64, and the
/// table has up to twice as many slots as entries (a million keys: 67 MB less).
type Bucket = Arc<RwLock<HashMap<Box<[u8]>, Box<[u8]>>>>;

/// Buckets are isolated: each has its own lock, and a panic while one is held poisons
/// nothing (poisoned locks are taken over), so one failing request never blocks another bucket.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    shards: Arc<[RwLock<HashMap<Bytes, Bucket>>]>,
    hasher: RandomState,
    /// Each change, pushed while its bucket's lock is held: in the order they take effect.
    feed: Arc<Feed>,
    /// Whether changes go to `feed`: not a replicated range's, which its group's feed
    /// records by log index ([`MemoryStore::for_group`]).
    recorded: bool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            feed: Arc::default(),
            recorded: true,
        }
    }
}

impl MemoryStore {
    /// The same store, whose writes (a replicated range's, applied by its group) leave this
    /// store's feed alone.
    pub(super) fn for_group(&self) -> Self {
        MemoryStore {
            recorded: false,
            ..self.clone()
        }
    }

    /// The changes this store made, for `kvnode watch`.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The keys in every bucket (each bucket read-locked in turn, so not one instant).
    pub fn key_count(&self) -> u64 {
        let mut keys = 0;
        for shard in self.shards.iter() {
            let buckets: Vec<Bucket> = shard
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            for b in buckets {
                keys += b.read().unwrap_or_else(PoisonError::into_inner).len() as u64;
            }
        }
        keys
    }

    fn shard(&self, bucket: &[u8]) -> &RwLock<HashMap<Bytes, Bucket>> {
        &self.shards[self.hasher.hash_one(bucket) as usize % SHARDS]
    }

    fn bucket(&self, bucket: &[u8]) -> Option<Bucket> {
        let shard = self.shard(bucket).read().unwrap_or_else(PoisonError::into_inner);
        shard.get(bucket).cloned()
    }

    /// The bucket, made empty if it did not exist.
    fn bucket_or_new(&self, bucket: &[u8]) -> Bucket {
        match self.bucket(bucket) {
            Some(b) => b,
            None => {
                let mut shard = self.shard(bucket).write().unwrap_or_else(PoisonError::into_inner);
                shard.entry(Bytes::copy_from_slice(bucket)).or_default().clone()
            }
        }
    }

    /// Makes `bucket` exist (empty if new); a bucket that exists is left as it is. Says
    /// whether it was new.
    pub fn create_bucket(&self, bucket: &[u8]) -> bool {
        if self.bucket(bucket).is_some() {
            return false;
        }
        let mut shard = self.shard(bucket).write().unwrap_or_else(PoisonError::into_inner);
        match shard.entry(Bytes::copy_from_slice(bucket)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Bucket::default());
                true
            }
        }
    }

    pub fn put(&self, bucket: &[u8], key: &[u8], value: Bytes) {
        self.put_reporting(bucket, key, value);
    }

    /// A put that says whether `key` is new (`true`) or its value was replaced.
    pub fn put_reporting(&self, bucket: &[u8], key: &[u8], value: Bytes) -> bool {
        self.put_into(&self.bucket_or_new(bucket), bucket, key, value)
    }

    /// A put into `bucket` only if it exists; `NoBucket` (and nothing stored) if not.
    pub fn put_existing(&self, bucket: &[u8], key: &[u8], value: Bytes) -> Lookup<()> {
        let Some(b) = self.bucket(bucket) else {
            return Lookup::NoBucket;
        };
        self.put_into(&b, bucket, key, value);
        Lookup::Found(())
    }

    /// Every put: stored and pushed to the feed under the bucket's lock; `true` if the key
    /// is new.
    fn put_into(&self, b: &Bucket, bucket: &[u8], key: &[u8], value: Bytes) -> bool {
        let mut b = b.write().unwrap_or_else(PoisonError::into_inner);
        let new = b.insert(Box::from(key), Box::from(&value[..])).is_none();
        if self.recorded {
            self.feed.push(bucket, key, Some(value));
        }
        new
    }

    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Lookup<Bytes> {
        let Some(b) = self.bucket(bucket) else {
            return Lookup::NoBucket;
        };
        let b = b.read().unwrap_or_else(PoisonError::into_inner);
        b.get(key)
            .map_or(Lookup::NoKey, |v| Lookup::Found(Bytes::copy_from_slice(v)))
    }

    pub fn delete(&self, bucket: &[u8], key: &[u8]) -> Lookup<()> {
        let Some(b) = self.bucket(bucket) else {
            return Lookup::NoBucket;
        };
        let mut b = b.write().unwrap_or_else(PoisonError::into_inner);
        if b.remove(key).is_none() {
            return Lookup::NoKey;
        }
        if self.recorded {
            self.feed.push(bucket, key, None);
        }
        Lookup::Found(())
    }

    pub fn keys(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Lookup<KeyPage> {
        let Some(b) = self.bucket(bucket) else {
            return Lookup::NoBucket;
        };
        // Copied out under the bucket's lock and sorted after it: in-memory writes wait for
        // that lock on the event loop, and a large bucket's sort would hold them up.
        let mut keys: Vec<Bytes> = b
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|k| after.is_none_or(|a| &***k > a))
            .map(|k| Bytes::copy_from_slice(k))
            .collect();
        keys.sort_unstable();
        let keys = keys.into_iter().map(Ok::<_, std::convert::Infallible>);
        Lookup::Found(KeyPage::fill(keys, budget).unwrap_or_else(|never| match never {}))
    }
}

/// A replicated range's buckets (issue 25): those whose name's first byte is in `first..=last`.
impl MemoryStore {
    fn in_range(bucket: &[u8], first: u8, last: u8) -> bool {
        bucket.first().is_some_and(|b| (first..=last).contains(b))
    }

    /// Every bucket of the range with its keys and values (a snapshot's data).
    pub fn range_data(&self, first: u8, last: u8) -> kvnode_replica::RangeData {
        let mut data = kvnode_replica::RangeData::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (name, bucket) in shard.iter().filter(|(name, _)| Self::in_range(name, first, last)) {
                let bucket = bucket.read().unwrap_or_else(PoisonError::into_inner);
                let keys = bucket.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                data.insert(name.to_vec(), keys);
            }
        }
        data
    }

    /// How many keys the range holds, and their keys' and values' bytes.
    pub fn range_size(&self, first: u8, last: u8) -> (u64, u64) {
        let (mut keys, mut bytes) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (_, bucket) in shard.iter().filter(|(name, _)| Self::in_range(name, first, last)) {
                let bucket = bucket.read().unwrap_or_else(PoisonError::into_inner);
                keys += bucket.len() as u64;
                bytes += bucket.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>();
            }
        }
        (keys, bytes)
    }

    /// Replaces the range's buckets and keys by `data` (a snapshot installed).
    pub fn replace_range(&self, first: u8, last: u8, data: &kvnode_replica::RangeData) {
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|name, _| !Self::in_range(name, first, last));
        }
        for (name, keys) in data {
            let bucket = self.bucket_or_new(name);
            let mut bucket = bucket.write().unwrap_or_else(PoisonError::into_inner);
            bucket.clear();
            bucket.extend(
                keys.iter()
                    .map(|(k, v)| (Box::from(k.as_slice()), Box::from(v.as_slice()))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_created_by_their_first_write_and_isolated() {
        let s = MemoryStore::default();
        assert_eq!(s.get(b"shopping", b"eggs"), Lookup::NoBucket);
        s.put(b"shopping", b"eggs", Bytes::from_static(b"3"));
        assert_eq!(s.get(b"shopping", b"eggs"), Lookup::Found(Bytes::from_static(b"3")));
        assert_eq!(s.get(b"shopping", b"milk"), Lookup::NoKey);
        assert_eq!(s.get(b"other", b"eggs"), Lookup::NoBucket);
        s.put(b"other", b"eggs", Bytes::from_static(b"9"));
        assert_eq!(s.get(b"shopping", b"eggs"), Lookup::Found(Bytes::from_static(b"3")));
    }

    #[test]
    fn delete_reports_what_was_missing_and_keeps_the_bucket() {
        let s = MemoryStore::default();
        assert_eq!(s.delete(b"b", b"k"), Lookup::NoBucket);
        s.put(b"b", b"k", Bytes::new());
        assert_eq!(s.delete(b"b", b"k"), Lookup::Found(()));
        assert_eq!(s.delete(b"b", b"k"), Lookup::NoKey);
        assert_eq!(s.keys(b"b", None, usize::MAX), Lookup::Found(KeyPage::default()));
    }

    #[test]
    fn a_created_bucket_is_empty_and_creating_it_again_keeps_its_keys() {
        let s = MemoryStore::default();
        assert_eq!(s.put_existing(b"b", b"k", Bytes::new()), Lookup::NoBucket);
        assert_eq!(s.get(b"b", b"k"), Lookup::NoBucket, "nothing stored, no bucket made");
        s.create_bucket(b"b");
        assert_eq!(s.get(b"b", b"k"), Lookup::NoKey);
        s.put(b"b", b"k", Bytes::from_static(b"v"));
        s.create_bucket(b"b");
        assert_eq!(s.get(b"b", b"k"), Lookup::Found(Bytes::from_static(b"v")));
    }

    #[test]
    fn keys_come_back_sorted() {
        let s = MemoryStore::default();
        for k in ["c", "a", "b"] {
            s.put(b"b", k.as_bytes(), Bytes::new());
        }
        let Lookup::Found(page) = s.keys(b"b", None, usize::MAX) else {
            panic!()
        };
        assert_eq!(page.keys, vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]);
    }
}
