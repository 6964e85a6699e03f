//! The store: buckets of key → value bytes, created by their first write (SPEC §7).
//!
//! Knows no network. `Store` is the one type the node holds; behind it is memory
//! (`--in-memory`, like the tutorial) or a durable embedded engine with group commit.

mod disk;
mod ended;
mod engine;
mod feed;
mod fence;
#[cfg(feature = "fjall")]
mod fjall_engine;
mod group;
mod group_records;
#[cfg(test)]
mod group_tests;
mod install;
mod memory;
#[cfg(feature = "redb")]
mod redb_engine;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use disk::{DiskStore, EngineKind};
pub use ended::{ENDED_KEPT, Ended};
pub use engine::{Applied, KeyPage, Op, PartCursor, RaftSpace, RaftWrites, RangeView};
pub use feed::{Change, Feed, FeedError, MAX_BYTES as MAX_FEED_BYTES, MAX_CHANGES as MAX_FEED_CHANGES, Page, Waiter};
pub use group::NodeGroupStore;
pub use memory::MemoryStore;

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    /// The bucket exists but the key does not.
    NoKey,
    /// No write ever created the bucket.
    NoBucket,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (disk full, unwritable directory, corruption).
    #[error("storage failed: {0}")]
    Engine(String),
    /// The data could not be opened; the path names the file or directory at fault.
    #[error("cannot open the data in {path}: {reason}")]
    Open { path: String, reason: String },
    /// Another process has the data directory open.
    #[error("the data directory {path} is in use by another kvnode process; stop it first or give another --data-dir")]
    InUse { path: String },
    /// A replicated range's Raft records are not what a round or a restart expects (a round
    /// out of order, or a damaged store).
    #[error("replicated range {range}: {reason}")]
    Group { range: String, reason: String },
    /// A plain write of a bucket whose bytes a replica group here runs over now (the table
    /// that made it a group came as the write was on its way): not applied.
    #[error(
        "the write to bucket {bucket:?} was not applied: its range has just become a replicated range (a move or a new table), whose replica group takes its writes; retry it"
    )]
    Moving { bucket: String },
}

/// The node's store, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// The Raft groups asked for (`Store::group`), one cache each.
    groups: Arc<group::Groups>,
    /// The bytes the groups running here cover: no plain write goes there (`fence`).
    fences: Arc<fence::Fences>,
    /// The ranges' ended histories, in memory (on disk: `ENDED` records; `ended`).
    ended: Arc<std::sync::Mutex<std::collections::BTreeMap<kvnode_replica::RangeId, Vec<Ended>>>>,
}

#[derive(Clone, Debug)]
enum Backend {
    Memory(MemoryStore),
    Disk(DiskStore),
}

impl Store {
    /// Everything in memory, like the tutorial's `KV.Bucket` agents.
    pub fn in_memory() -> Self {
        Self {
            backend: Backend::Memory(MemoryStore::default()),
            groups: Arc::default(),
            fences: Arc::default(),
            ended: Arc::default(),
        }
    }

    /// Durable storage under `dir` with the default engine.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, EngineKind::default())
    }

    pub fn open_with(dir: &Path, kind: EngineKind) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Disk(DiskStore::open(dir, kind)?),
            groups: Arc::default(),
            fences: Arc::default(),
            ended: Arc::default(),
        })
    }

    /// A short description for the logs.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Memory(_) => "in memory".into(),
            Backend::Disk(d) => format!("on disk at {}", d.path().display()),
        }
    }

    /// Fences exactly `ranges`, the bytes of the replica groups running on this node: plain
    /// writes there are refused ([`StoreError::Moving`]) from now on, and those under way are
    /// applied (memory) or queued (disk) before this returns (`fence`).
    pub fn set_fences(&self, ranges: impl IntoIterator<Item = (u8, u8)>) {
        self.fences.set(ranges);
    }

    /// Runs `write`, a plain write of `bucket` to the memory store ([`Store::memory`]),
    /// unless a replica group here covers the bucket (`fence`).
    pub fn fenced<T>(&self, bucket: &[u8], write: impl FnOnce() -> T) -> Result<T, StoreError> {
        self.fences.pass(bucket).map(|_pass| write())
    }

    /// Queues a plain write of `bucket` unless a replica group here covers it; waits until
    /// it is durable.
    async fn plain(&self, d: &DiskStore, bucket: &[u8], op: Op) -> Result<Applied, StoreError> {
        let queued = {
            let _pass = self.fences.pass(bucket)?;
            d.queue(op)?
        };
        d.written(queued).await
    }

    /// The store's long-lived part: the group-commit writer (nothing to do in memory).
    pub async fn run_writer(&self, stop: CancellationToken) -> Result<(), String> {
        match &self.backend {
            Backend::Memory(_) => {
                stop.cancelled().await;
                Ok(())
            }
            Backend::Disk(d) => d.run_writer(stop).await,
        }
    }

    /// Stores `value` under `key`, creating the bucket if needed. Returns once durable.
    pub async fn put(&self, bucket: &[u8], key: &[u8], value: Bytes) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let _pass = self.fences.pass(bucket)?;
                m.put(bucket, key, value);
                Ok(())
            }
            Backend::Disk(d) => {
                let op = Op::Put {
                    bucket: Bytes::copy_from_slice(bucket),
                    key: Bytes::copy_from_slice(key),
                    value,
                };
                self.plain(d, bucket, op).await.map(|_| ())
            }
        }
    }

    /// Stores `value` under `key`, creating the bucket if needed, and says whether the key is
    /// new (`true`) or its value was replaced. Returns once durable.
    pub async fn put_reporting(&self, bucket: &[u8], key: &[u8], value: Bytes) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let _pass = self.fences.pass(bucket)?;
                Ok(m.put_reporting(bucket, key, value))
            }
            Backend::Disk(d) => {
                let op = Op::PutReporting {
                    bucket: Bytes::copy_from_slice(bucket),
                    key: Bytes::copy_from_slice(key),
                    value,
                };
                Ok(self.plain(d, bucket, op).await? == Applied::StoredNew)
            }
        }
    }

    /// Stores `value` under `key` only if `bucket` exists (`NoBucket`, and nothing stored,
    /// if not). Returns once durable.
    pub async fn put_existing(&self, bucket: &[u8], key: &[u8], value: Bytes) -> Result<Lookup<()>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let _pass = self.fences.pass(bucket)?;
                Ok(m.put_existing(bucket, key, value))
            }
            Backend::Disk(d) => {
                let op = Op::PutExisting {
                    bucket: Bytes::copy_from_slice(bucket),
                    key: Bytes::copy_from_slice(key),
                    value,
                };
                Ok(match self.plain(d, bucket, op).await? {
                    Applied::NoBucket => Lookup::NoBucket,
                    _ => Lookup::Found(()),
                })
            }
        }
    }

    /// Makes `bucket` exist, empty if it is new (the guide's `KV.Registry.create`); a bucket
    /// that exists is left as it is. Returns once durable, like a put.
    pub async fn create_bucket(&self, bucket: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let _pass = self.fences.pass(bucket)?;
                m.create_bucket(bucket);
                Ok(())
            }
            Backend::Disk(d) => {
                let op = Op::CreateBucket {
                    bucket: Bytes::copy_from_slice(bucket),
                };
                self.plain(d, bucket, op).await.map(|_| ())
            }
        }
    }

    /// Reads never wait for the writer. A durable read may have to go to the disk (a cache
    /// miss), so it runs on a blocking thread, never on the event loop (the only thread of
    /// a node started with `--threads 1`); a read of the memory store answers at once, and
    /// so does a durable read of a value the engine holds in memory (a recent write, in
    /// fjall's active memtable): no I/O, so no hand-off to a blocking thread.
    pub async fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Lookup<Bytes>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(bucket, key)),
            Backend::Disk(d) => {
                if let Some(value) = d.get_in_memory(bucket, key) {
                    return Ok(Lookup::Found(value));
                }
                let (d, bucket, key) = (d.clone(), bucket.to_vec(), key.to_vec());
                tokio::task::spawn_blocking(move || d.get(&bucket, &key))
                    .await
                    .map_err(|e| StoreError::Engine(format!("the read failed: {e}")))?
            }
        }
    }

    /// Every acknowledged change to a key, in the order they took effect (`kvnode watch`).
    pub fn feed(&self) -> &Arc<Feed> {
        match &self.backend {
            Backend::Memory(m) => m.feed(),
            Backend::Disk(d) => d.feed(),
        }
    }

    /// The in-memory backend, whose writes also answer at once (no sync to wait for).
    pub fn memory(&self) -> Option<&MemoryStore> {
        match &self.backend {
            Backend::Memory(m) => Some(m),
            Backend::Disk(_) => None,
        }
    }

    /// The keys stored, for the metrics: counted in memory; `None` on disk, where counting
    /// means reading every key (fjall keeps no exact count), too costly for a scrape.
    pub fn key_count(&self) -> Option<u64> {
        self.memory().map(MemoryStore::key_count)
    }

    /// Where a durable store keeps its data (`None` in memory).
    pub fn disk_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Disk(d) => Some(d.path()),
        }
    }

    /// Removes `key`; `NoKey`/`NoBucket` when there was nothing to remove.
    pub async fn delete(&self, bucket: &[u8], key: &[u8]) -> Result<Lookup<()>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let _pass = self.fences.pass(bucket)?;
                Ok(m.delete(bucket, key))
            }
            Backend::Disk(d) => {
                let op = Op::Delete {
                    bucket: Bytes::copy_from_slice(bucket),
                    key: Bytes::copy_from_slice(key),
                };
                Ok(match self.plain(d, bucket, op).await? {
                    Applied::Deleted => Lookup::Found(()),
                    Applied::NoKey => Lookup::NoKey,
                    Applied::NoBucket | Applied::Stored | Applied::StoredNew | Applied::Created(_) => Lookup::NoBucket,
                })
            }
        }
    }

    /// The bucket's keys in order after `after`, as many as fit in `budget` bytes, listed
    /// on a blocking thread: a scan of a large bucket must not hold up the event loop (the
    /// only thread of a node started with `--threads 1`).
    pub async fn keys(
        &self,
        bucket: &[u8],
        after: Option<&[u8]>,
        budget: usize,
    ) -> Result<Lookup<KeyPage>, StoreError> {
        let (store, bucket, after) = (self.clone(), bucket.to_vec(), after.map(<[u8]>::to_vec));
        tokio::task::spawn_blocking(move || store.keys_now(&bucket, after.as_deref(), budget))
            .await
            .map_err(|e| StoreError::Engine(format!("listing the keys failed: {e}")))?
    }

    /// [`Store::keys`] on the calling thread.
    fn keys_now(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Result<Lookup<KeyPage>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.keys(bucket, after, budget)),
            Backend::Disk(d) => d.keys(bucket, after, budget),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> Vec<EngineKind> {
        vec![
            #[cfg(feature = "fjall")]
            EngineKind::Fjall,
            #[cfg(feature = "redb")]
            EngineKind::Redb,
        ]
    }

    async fn with_writer<T>(store: &Store, f: impl std::future::Future<Output = T>) -> T {
        let stop = CancellationToken::new();
        let writer = tokio::spawn({
            let (store, stop) = (store.clone(), stop.clone());
            async move { store.run_writer(stop).await }
        });
        let out = f.await;
        stop.cancel();
        writer.await.unwrap().unwrap();
        out
    }

    /// A plain write of bytes a replica group runs over here is refused and not applied, in
    /// memory and on disk, whichever the write; once the fence is lifted it goes through.
    #[tokio::test]
    async fn a_plain_write_of_fenced_bytes_is_refused_and_not_applied() {
        let dirs: Vec<_> = kinds().into_iter().map(|k| (k, tempfile::tempdir().unwrap())).collect();
        let mut stores = vec![Store::in_memory()];
        stores.extend(dirs.iter().map(|(k, d)| Store::open_with(d.path(), *k).unwrap()));
        let v = || Bytes::from_static(b"v");
        for store in &stores {
            with_writer(store, async {
                store.put(b"apples", b"k", v()).await.unwrap();
                store.set_fences([(b'a', b'm')]);
                let refused = [
                    store.put(b"apples", b"x", v()).await.err(),
                    store.put_reporting(b"apples", b"x", v()).await.err(),
                    store.put_existing(b"apples", b"x", v()).await.err(),
                    store.create_bucket(b"melons").await.err(),
                    store.delete(b"apples", b"k").await.err(),
                ];
                for r in refused {
                    assert!(
                        matches!(r, Some(StoreError::Moving { .. })),
                        "{r:?} ({})",
                        store.describe()
                    );
                }
                assert_eq!(store.get(b"apples", b"x").await.unwrap(), Lookup::NoKey);
                assert_eq!(store.get(b"apples", b"k").await.unwrap(), Lookup::Found(v()));
                assert_eq!(store.get(b"melons", b"x").await.unwrap(), Lookup::NoBucket);
                // Other bytes are written as ever.
                store.put(b"nuts", b"x", v()).await.unwrap();
                store.set_fences([]);
                store.put(b"apples", b"x", v()).await.unwrap();
                assert_eq!(store.get(b"apples", b"x").await.unwrap(), Lookup::Found(v()));
            })
            .await;
        }
    }

    #[tokio::test]
    async fn every_engine_behaves_like_the_memory_store() {
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_with(dir.path(), kind).unwrap();
            with_writer(&store, async {
                assert_eq!(store.get(b"b", b"k").await.unwrap(), Lookup::NoBucket);
                assert_eq!(store.delete(b"b", b"k").await.unwrap(), Lookup::NoBucket);
                store.put(b"b", b"k", Bytes::from_static(b"v")).await.unwrap();
                store.put(b"b", b"a", Bytes::from_static(b"w")).await.unwrap();
                store.put(b"bb", b"x", Bytes::from_static(b"y")).await.unwrap();
                assert_eq!(
                    store.get(b"b", b"k").await.unwrap(),
                    Lookup::Found(Bytes::from_static(b"v"))
                );
                assert_eq!(store.get(b"b", b"zz").await.unwrap(), Lookup::NoKey);
                assert_eq!(all_keys(&store, b"b").await.as_deref(), Some("a,k"));
                assert_eq!(store.delete(b"b", b"k").await.unwrap(), Lookup::Found(()));
                assert_eq!(store.delete(b"b", b"k").await.unwrap(), Lookup::NoKey);
                assert_eq!(all_keys(&store, b"b").await.as_deref(), Some("a"));
            })
            .await;
        }
    }

    #[tokio::test]
    async fn a_created_bucket_exists_empty_survives_reopening_and_may_be_created_again() {
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open_with(dir.path(), kind).unwrap();
                with_writer(&store, async {
                    let put = store.put_existing(b"shopping", b"k", Bytes::new()).await.unwrap();
                    assert_eq!(put, Lookup::NoBucket, "{kind:?}");
                    assert_eq!(store.get(b"shopping", b"k").await.unwrap(), Lookup::NoBucket);
                    store.create_bucket(b"shopping").await.unwrap();
                    assert_eq!(store.get(b"shopping", b"milk").await.unwrap(), Lookup::NoKey);
                    assert_eq!(all_keys(&store, b"shopping").await.as_deref(), Some(""));
                    let put = store.put_existing(b"shopping", b"milk", Bytes::from_static(b"1"));
                    assert_eq!(put.await.unwrap(), Lookup::Found(()), "{kind:?}");
                    store.create_bucket(b"shopping").await.unwrap();
                    store.create_bucket(b"empty").await.unwrap();
                })
                .await;
            }
            let store = Store::open_with(dir.path(), kind).unwrap();
            assert_eq!(
                store.get(b"shopping", b"milk").await.unwrap(),
                Lookup::Found(Bytes::from_static(b"1")),
                "{kind:?}: creating it again kept its keys"
            );
            assert_eq!(store.get(b"empty", b"k").await.unwrap(), Lookup::NoKey, "{kind:?}");
            let deleted = with_writer(&store, store.delete(b"empty", b"k")).await;
            assert_eq!(deleted.unwrap(), Lookup::NoKey, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn a_reporting_put_says_whether_the_key_is_new_in_every_engine() {
        let memory = Store::in_memory();
        assert!(
            memory
                .put_reporting(b"h", b"f", Bytes::from_static(b"1"))
                .await
                .unwrap()
        );
        assert!(
            !memory
                .put_reporting(b"h", b"f", Bytes::from_static(b"2"))
                .await
                .unwrap()
        );
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_with(dir.path(), kind).unwrap();
            with_writer(&store, async {
                let put = |k: &'static [u8]| store.put_reporting(b"h", k, Bytes::from_static(b"v"));
                assert!(put(b"f").await.unwrap(), "{kind:?}: a new bucket's key");
                assert!(!put(b"f").await.unwrap(), "{kind:?}: replaced");
                store.delete(b"h", b"f").await.unwrap();
                assert!(put(b"f").await.unwrap(), "{kind:?}: new again after its delete");
                // Two puts of one key in one batch: the second finds the first's.
                let (first, second) = tokio::join!(put(b"g"), put(b"g"));
                assert_eq!((first.unwrap(), second.unwrap()), (true, false), "{kind:?}");
                assert_eq!(
                    store.get(b"h", b"g").await.unwrap(),
                    Lookup::Found(Bytes::from_static(b"v"))
                );
            })
            .await;
        }
    }

    /// Every key of `bucket` in one page, joined with commas; `None` for no bucket.
    async fn all_keys(store: &Store, bucket: &[u8]) -> Option<String> {
        match store.keys(bucket, None, usize::MAX).await.unwrap() {
            Lookup::Found(page) => {
                assert!(!page.more);
                let keys: Vec<String> = page.keys.iter().map(|k| String::from_utf8_lossy(k).into()).collect();
                Some(keys.join(","))
            }
            _ => None,
        }
    }

    #[tokio::test]
    async fn keys_are_listed_in_pages_after_a_key() {
        let mut stores = vec![Store::in_memory()];
        let dirs: Vec<_> = kinds().into_iter().map(|k| (tempfile::tempdir().unwrap(), k)).collect();
        stores.extend(
            dirs.iter()
                .map(|(dir, kind)| Store::open_with(dir.path(), *kind).unwrap()),
        );
        for store in &stores {
            with_writer(store, async {
                for k in ["e", "a", "c", "b", "d"] {
                    store.put(b"b", k.as_bytes(), Bytes::new()).await.unwrap();
                }
                store.put(b"bz", b"other", Bytes::new()).await.unwrap();
                // Each one-byte key costs 5 bytes of a page: two to a page of 10.
                let page = |after: Option<&'static str>| async move {
                    let Lookup::Found(p) = store.keys(b"b", after.map(str::as_bytes), 10).await.unwrap() else {
                        panic!("no bucket")
                    };
                    let keys: Vec<String> = p.keys.iter().map(|k| String::from_utf8_lossy(k).into()).collect();
                    (keys.join(","), p.more)
                };
                assert_eq!(page(None).await, ("a,b".into(), true));
                assert_eq!(page(Some("b")).await, ("c,d".into(), true));
                assert_eq!(page(Some("d")).await, ("e".into(), false));
                assert_eq!(page(Some("bb")).await, ("c,d".into(), true), "after a key not there");
                assert_eq!(page(Some("e")).await, (String::new(), false));
                // A key larger than a page still comes, alone.
                let Lookup::Found(p) = store.keys(b"b", None, 1).await.unwrap() else {
                    panic!()
                };
                assert_eq!((p.keys.len(), p.more), (1, true));
            })
            .await;
        }
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open_with(dir.path(), kind).unwrap();
                with_writer(&store, async {
                    let puts = (0..100).map(|i| {
                        let store = store.clone();
                        async move {
                            store
                                .put(
                                    format!("b{}", i % 7).as_bytes(),
                                    &[i as u8],
                                    Bytes::from(vec![i as u8; 10]),
                                )
                                .await
                        }
                    });
                    for r in futures_util::future::join_all(puts).await {
                        r.unwrap();
                    }
                })
                .await;
            }
            let store = Store::open_with(dir.path(), kind).unwrap();
            for i in 0..100u8 {
                let got = store.get(format!("b{}", i % 7).as_bytes(), &[i]).await.unwrap();
                assert_eq!(got, Lookup::Found(Bytes::from(vec![i; 10])), "{kind:?}");
            }
        }
    }

    /// A durable read of a recent write is answered from fjall's memtable, with no hand-off
    /// to a blocking thread; what it cannot tell from memory (a deleted or missing key, a
    /// bucket never written) goes the disk path and is answered as before.
    #[cfg(feature = "fjall")]
    #[tokio::test]
    async fn a_recent_write_is_read_from_memory_and_the_rest_from_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), EngineKind::Fjall).unwrap();
        let Backend::Disk(disk) = &store.backend else {
            unreachable!()
        };
        with_writer(&store, async {
            assert_eq!(disk.get_in_memory(b"b", b"k"), None);
            store.put(b"b", b"k", Bytes::from_static(b"v1")).await.unwrap();
            assert_eq!(disk.get_in_memory(b"b", b"k"), Some(Bytes::from_static(b"v1")));
            store.put(b"b", b"k", Bytes::from_static(b"v2")).await.unwrap();
            assert_eq!(
                disk.get_in_memory(b"b", b"k"),
                Some(Bytes::from_static(b"v2")),
                "the newest"
            );
            assert_eq!(
                store.get(b"b", b"k").await.unwrap(),
                Lookup::Found(Bytes::from_static(b"v2"))
            );
            assert_eq!(disk.get_in_memory(b"b", b"other"), None);
            assert_eq!(store.get(b"b", b"other").await.unwrap(), Lookup::NoKey);
            assert_eq!(store.delete(b"b", b"k").await.unwrap(), Lookup::Found(()));
            assert_eq!(disk.get_in_memory(b"b", b"k"), None, "a tombstone tells nothing");
            assert_eq!(store.get(b"b", b"k").await.unwrap(), Lookup::NoKey);
            assert_eq!(store.get(b"nob", b"k").await.unwrap(), Lookup::NoBucket);
        })
        .await;
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_is_refused() {
        for kind in kinds() {
            let dir = tempfile::tempdir().unwrap();
            let _first = Store::open_with(dir.path(), kind).unwrap();
            let err = Store::open_with(dir.path(), kind).unwrap_err();
            assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        }
    }
}
