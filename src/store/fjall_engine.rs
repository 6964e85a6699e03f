//! The fjall engine: an LSM tree with a write-ahead journal; a batch is written, then the
//! journal is synced once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use kvnode_replica::RangeData;

use super::engine::{
    Applied, Engine, EngineError, KeyPage, Op, PartCursor, RaftSpace, RaftWrites, RangeView, bucket_prefix, data_key,
    keys_start,
};

/// The most journal fjall keeps before it flushes memtables (its default is 512 MiB): every
/// unflushed write is held in a memtable too, so this bounds the memory a node's writes take,
/// whatever is written (a range of a gigabyte streamed in by a move, issue 26).
const JOURNAL: u64 = 128 << 20;

/// The data keyspace's memtable size (fjall's default is 64 MiB). fjall holds writes back
/// while a keyspace has four sealed memtables waiting to be flushed, so the data's memtables
/// take at most five of these: 160 MiB however fast writes come.
const MEMTABLE: u64 = 32 << 20;

pub struct FjallEngine {
    dir: PathBuf,
    /// The open database; `None` only if reopening it failed (then the next write tries
    /// again). Reads take it shared; only the writer replaces it.
    open: RwLock<Option<Open>>,
    /// A write failed: fjall refuses every later one (it poisons the database, since it
    /// cannot know what the failure left behind), so the next write reopens it first.
    reopen: AtomicBool,
    /// The data keyspace's active memtable as it was after the last commit (and at open),
    /// for reads answered from memory ([`Engine::get_in_memory`]). Every write goes into the
    /// active memtable, and this is set again after each commit (the writer's, and a
    /// replicated range's unsynced apply), before its writes are answered: so a value found here is the newest one of every acknowledged write. (A
    /// memtable fjall rotated meanwhile still holds what it held; only writes not yet
    /// answered can be newer.) Kept here, not asked of fjall per read, because fjall's own
    /// accessor takes the tree's version lock, which a flush or compaction holds while it
    /// writes its version file; only commits swap this one, and never across I/O.
    memtable: RwLock<Option<Arc<lsm_tree::Memtable>>>,
}

struct Open {
    db: Database,
    data: Keyspace,
    buckets: Keyspace,
    /// Raft groups' log entries and state (issue 25), beside the data they replicate.
    raft_log: Keyspace,
    raft_state: Keyspace,
}

fn err(e: fjall::Error) -> EngineError {
    use fjall::Error as F;
    const ENOSPC: i32 = 28;
    EngineError(match &e {
        // fjall refuses every write after one failed to reach the disk (it cannot know what
        // made it): say so, and that reads go on.
        F::Poisoned => "a write to disk failed (is the disk full or failing?); reads still work, and writes \
                        resume by themselves once the disk takes writes again: free space or check the disk"
            .to_string(),
        F::Io(io) | F::Storage(lsm_tree::Error::Io(io)) if io.raw_os_error() == Some(ENOSPC) => {
            "the disk is full; reads still work, and writes resume by themselves once space is freed".to_string()
        }
        other => format!("{other:?}"),
    })
}

/// How much room a write must find before a poisoned database is reopened: reopening drops
/// the old one first (fjall locks its directory), and an open that fails for want of space
/// would take reads down too.
const ROOM_TO_REOPEN: usize = 1 << 20;

/// Whether `dir` takes writes again: a probe file of [`ROOM_TO_REOPEN`] bytes is written,
/// synced and removed.
fn takes_writes(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let probe = dir.join("room-probe");
    let written = (|| {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&vec![0; ROOM_TO_REOPEN])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written
}

/// fjall's open errors, in words that say which part of `dir` is at fault (fjall itself does
/// not name files) and what the operator can do.
fn open_err(dir: &Path, e: fjall::Error) -> EngineError {
    use fjall::Error as F;
    let d = dir.display();
    let what = match &e {
        F::InvalidVersion(_) => format!("the format version file {d}/version is corrupt or from another fjall version"),
        F::JournalRecovery(_) | F::InvalidTrailer => format!("the journal {d}/*.jnl is corrupt"),
        F::Locked => format!("{d} is locked by another process"),
        // Anything else may come from a damaged table file: name it when one fails alone.
        _ => match damaged_tables(&dir.join("keyspaces")).as_slice() {
            [] => unnamed_cause(dir, &e),
            [one] => format!("the table file {} is corrupt or truncated", one.display()),
            many => {
                let names: Vec<_> = many.iter().map(|p| p.display().to_string()).collect();
                format!("the table files {} are corrupt or truncated", names.join(", "))
            }
        },
    };
    EngineError(format!(
        "{what} (fjall: {e:?}); restore the directory from a backup, or move it aside to start with an empty store"
    ))
}

/// What an open error says about `dir` when no single table file can be blamed.
fn unnamed_cause(dir: &Path, e: &fjall::Error) -> String {
    use fjall::Error as F;
    let d = dir.display();
    match e {
        F::Storage(lsm_tree::Error::Unrecoverable) | F::Unrecoverable => {
            format!("a table file under {d}/keyspaces is corrupt, truncated or missing")
        }
        F::Storage(
            lsm_tree::Error::ChecksumMismatch { .. }
            | lsm_tree::Error::InvalidTrailer
            | lsm_tree::Error::InvalidHeader(_),
        ) => format!("a table file under {d}/keyspaces fails its checksum"),
        F::Io(io) | F::Storage(lsm_tree::Error::Io(io)) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("a file under {d} is missing")
        }
        _ => format!("{d} cannot be opened"),
    }
}

/// The table files under `keyspaces` (`keyspaces/<keyspace>/tables/<id>`) that cannot be
/// opened on their own: fjall's error does not say which file failed, so each is opened
/// again, read-only, by the same code fjall uses (trailer, metadata and index are checked).
/// Empty when none fails alone (a table listed but missing, say) or the layout is unknown.
fn damaged_tables(keyspaces: &Path) -> Vec<PathBuf> {
    let files = std::fs::read_dir(keyspaces)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|ks| {
            std::fs::read_dir(ks.path().join("tables"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|table| table.path())
        .filter(|path| path.is_file());
    let cache = Arc::new(lsm_tree::Cache::with_capacity_bytes(1 << 20));
    let mut damaged: Vec<PathBuf> = files
        .filter(|path| {
            // The checksum, sequence number and tree id are only recorded, not checked, here.
            // A panic on a damaged file counts as damage too.
            let checksum = lsm_tree::Checksum::from_raw(0);
            let open = || {
                lsm_tree::table::Table::recover(path.clone(), checksum, 0, 0, Arc::clone(&cache), None, false, false)
            };
            !matches!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)), Ok(Ok(_)))
        })
        .collect();
    damaged.sort();
    damaged
}

impl FjallEngine {
    /// Commits `batch` (synced or not), reopening first after a failure; the memtable that
    /// reads are answered from is recorded before the batch is answered, whichever way it came
    /// (see `memtable`).
    fn commit_batch(&self, batch: &[Op], sync: bool) -> Result<Vec<Applied>, EngineError> {
        self.writing(|open| open.commit(batch, sync))
    }

    /// Runs a write on the open database (reopening it first after a failed one), then
    /// records the memtable reads may be answered from, as every write must.
    fn writing<T>(&self, write: impl FnOnce(&Open) -> Result<T, EngineError>) -> Result<T, EngineError> {
        if self.reopen.load(Ordering::Acquire) {
            self.recover()?;
        }
        let result = self.with(|open| {
            let done = write(open)?;
            self.remember_memtable(Some(open.data.tree.active_memtable()));
            Ok(done)
        });
        if result.is_err() {
            self.remember_memtable(None);
            self.reopen.store(true, Ordering::Release);
        }
        result
    }

    pub fn open(dir: &Path) -> Result<Self, EngineError> {
        let open = Open::new(dir)?;
        let memtable = open.data.tree.active_memtable();
        Ok(Self {
            dir: dir.to_path_buf(),
            open: RwLock::new(Some(open)),
            reopen: AtomicBool::new(false),
            memtable: RwLock::new(Some(memtable)),
        })
    }

    /// Sets (or, with `None`, forgets) the memtable reads may be answered from.
    fn remember_memtable(&self, memtable: Option<Arc<lsm_tree::Memtable>>) {
        *self.memtable.write().unwrap_or_else(PoisonError::into_inner) = memtable;
    }

    /// Runs `f` on the open database, held shared (a reopen waits for it); an error if the
    /// database could not be reopened after a failure.
    fn with<T>(&self, f: impl FnOnce(&Open) -> Result<T, EngineError>) -> Result<T, EngineError> {
        match &*self.open.read().unwrap_or_else(PoisonError::into_inner) {
            Some(open) => f(open),
            None => Err(EngineError(format!(
                "the store at {} could not be reopened after a failed write; the next write tries again",
                self.dir.display()
            ))),
        }
    }

    /// After a failed write: once the disk takes writes again, drops the poisoned database
    /// and opens it afresh (recovering its journal: every synced write is kept).
    fn recover(&self) -> Result<(), EngineError> {
        takes_writes(&self.dir).map_err(|e| {
            EngineError(format!(
                "writes are still refused: the disk does not take writes yet ({e}); free space or check the disk, \
                 and writes resume by themselves (reads still work)"
            ))
        })?;
        let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
        // fjall locks its directory: the old database must be gone before the new one opens.
        drop(open.take());
        let reopened = Open::new(&self.dir)?;
        self.remember_memtable(Some(reopened.data.tree.active_memtable()));
        *open = Some(reopened);
        self.reopen.store(false, Ordering::Release);
        tracing::info!(path = %self.dir.display(), "the store was reopened after a failed write; writes resume");
        Ok(())
    }
}

impl Open {
    fn new(dir: &Path) -> Result<Self, EngineError> {
        let db = Database::builder(dir)
            .max_journaling_size(JOURNAL)
            .open()
            .map_err(|e| open_err(dir, e))?;
        let data = db
            .keyspace("data", || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE))
            .map_err(|e| open_err(dir, e))?;
        let buckets = db
            .keyspace("buckets", KeyspaceCreateOptions::default)
            .map_err(|e| open_err(dir, e))?;
        let raft_log = db
            .keyspace("raft_log", KeyspaceCreateOptions::default)
            .map_err(|e| open_err(dir, e))?;
        let raft_state = db
            .keyspace("raft_state", KeyspaceCreateOptions::default)
            .map_err(|e| open_err(dir, e))?;
        Ok(Self {
            db,
            data,
            buckets,
            raft_log,
            raft_state,
        })
    }

    fn space(&self, space: RaftSpace) -> &Keyspace {
        match space {
            RaftSpace::Log => &self.raft_log,
            RaftSpace::State => &self.raft_state,
        }
    }

    /// Stages a batch's Raft writes: snapshot installs first (the range's old buckets and keys
    /// not in the snapshot removed, the snapshot's set), then the records.
    fn stage_raft(&self, writes: &mut fjall::OwnedWriteBatch, raft: &RaftWrites) -> Result<(), EngineError> {
        for (first, last, data) in &raft.replace {
            for (bucket, keys) in self.range_buckets(*first, *last)? {
                let Some(new) = data.get(&bucket) else {
                    writes.remove(&self.buckets, bucket.as_slice());
                    for key in keys {
                        writes.remove(&self.data, key);
                    }
                    continue;
                };
                let prefix = bucket_prefix(&bucket).len();
                for key in keys.into_iter().filter(|k| !new.contains_key(&k[prefix..])) {
                    writes.remove(&self.data, key);
                }
            }
            for (bucket, keys) in data.iter() {
                writes.insert(&self.buckets, bucket.as_slice(), b"".as_slice());
                for (key, value) in keys {
                    writes.insert(&self.data, data_key(bucket, key), value.as_slice());
                }
            }
        }
        for (space, key, value) in &raft.records {
            match value {
                Some(value) => writes.insert(self.space(*space), key.as_slice(), value.as_slice()),
                None => writes.remove(self.space(*space), key.as_slice()),
            }
        }
        Ok(())
    }

    /// The buckets whose name's first byte is in `first..=last` (the `buckets` keyspace is
    /// sorted by name, so they are one scan), each with its keys in `data` (whole keys).
    #[allow(clippy::type_complexity)]
    fn range_buckets(&self, first: u8, last: u8) -> Result<Vec<(Vec<u8>, Vec<Vec<u8>>)>, EngineError> {
        let mut out = vec![];
        for guard in self.buckets.range(range_bounds(first, last)) {
            let bucket = guard.key().map_err(err)?.to_vec();
            let keys = self
                .data
                .prefix(bucket_prefix(&bucket))
                .map(|g| g.key().map(|k| k.to_vec()).map_err(err))
                .collect::<Result<Vec<_>, _>>()?;
            out.push((bucket, keys));
        }
        Ok(out)
    }

    fn commit(&self, batch: &[Op], sync: bool) -> Result<Vec<Applied>, EngineError> {
        // Deletes report whether the key was there, so the batch is applied in order with
        // reads in between; the journal sync at the end is what makes the whole batch durable.
        let mut applied = Vec::with_capacity(batch.len());
        let mut writes = self.db.batch();
        let mut new_buckets = std::collections::HashSet::new();
        let mut pending = std::collections::HashMap::<Vec<u8>, bool>::new();
        for op in batch {
            match op {
                Op::Put { bucket, key, value } => {
                    if !new_buckets.contains(bucket) && !self.buckets.contains_key(bucket).map_err(err)? {
                        writes.insert(&self.buckets, bucket.as_ref(), b"".as_slice());
                        new_buckets.insert(bucket.clone());
                    }
                    let k = data_key(bucket, key);
                    writes.insert(&self.data, k.as_slice(), value.as_ref());
                    pending.insert(k, true);
                    applied.push(Applied::Stored);
                }
                Op::PutReporting { bucket, key, value } => {
                    if !new_buckets.contains(bucket) && !self.buckets.contains_key(bucket).map_err(err)? {
                        writes.insert(&self.buckets, bucket.as_ref(), b"".as_slice());
                        new_buckets.insert(bucket.clone());
                    }
                    let k = data_key(bucket, key);
                    let present = match pending.get(&k) {
                        Some(p) => *p,
                        None => self.data.contains_key(&k).map_err(err)?,
                    };
                    writes.insert(&self.data, k.as_slice(), value.as_ref());
                    pending.insert(k, true);
                    applied.push(if present { Applied::Stored } else { Applied::StoredNew });
                }
                Op::PutExisting { bucket, key, value } => {
                    if !new_buckets.contains(bucket) && !self.buckets.contains_key(bucket).map_err(err)? {
                        applied.push(Applied::NoBucket);
                        continue;
                    }
                    let k = data_key(bucket, key);
                    writes.insert(&self.data, k.as_slice(), value.as_ref());
                    pending.insert(k, true);
                    applied.push(Applied::Stored);
                }
                Op::CreateBucket { bucket } => {
                    let new = !new_buckets.contains(bucket) && !self.buckets.contains_key(bucket).map_err(err)?;
                    if new {
                        writes.insert(&self.buckets, bucket.as_ref(), b"".as_slice());
                        new_buckets.insert(bucket.clone());
                    }
                    applied.push(Applied::Created(new));
                }
                Op::Raft(raft) => {
                    self.stage_raft(&mut writes, raft)?;
                    applied.push(Applied::Stored);
                }
                Op::Delete { bucket, key } => {
                    if !new_buckets.contains(bucket) && !self.buckets.contains_key(bucket).map_err(err)? {
                        applied.push(Applied::NoBucket);
                        continue;
                    }
                    let k = data_key(bucket, key);
                    let present = match pending.get(&k) {
                        Some(p) => *p,
                        None => self.data.contains_key(&k).map_err(err)?,
                    };
                    if present {
                        writes.remove(&self.data, k.as_slice());
                        pending.insert(k, false);
                        applied.push(Applied::Deleted);
                    } else {
                        applied.push(Applied::NoKey);
                    }
                }
            }
        }
        writes.commit().map_err(err)?;
        if sync {
            // fdatasync, as Redis's `appendfsync always` does: the journal's bytes and what is
            // needed to read them back are on disk. fjall preallocates each journal file and
            // syncs its directory when it creates one, so the metadata a full fsync would add
            // (times) is nothing a recovery reads.
            self.db.persist(PersistMode::SyncData).map_err(err)?;
        }
        Ok(applied)
    }
}

/// The bucket names whose first byte is in `first..=last`.
fn range_bounds(first: u8, last: u8) -> (std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>) {
    use std::ops::Bound;
    let end = match last.checked_add(1) {
        Some(next) => Bound::Excluded(vec![next]),
        None => Bound::Unbounded,
    };
    (Bound::Included(vec![first]), end)
}

impl Engine for FjallEngine {
    fn commit(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
        self.commit_batch(batch, true)
    }

    fn get_in_memory(&self, bucket: &[u8], key: &[u8]) -> Option<Bytes> {
        // Never waits: a reopen or the writer swapping it means "ask the disk path".
        let memtable = self.memtable.try_read().ok()?.clone()?;
        // `Memtable::get` is a lookup in fjall's in-memory skiplist (lsm-tree's API, hidden
        // from its docs; the version is pinned by Cargo.lock). A tombstone answers nothing.
        let entry = memtable.get(&data_key(bucket, key), lsm_tree::SeqNo::MAX)?;
        (!entry.is_tombstone()).then(|| Bytes::copy_from_slice(&entry.value))
    }

    /// A replicated range's applied writes come this way, not through the writer.
    fn commit_unsynced(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
        self.commit_batch(batch, false)
    }

    fn raft_get(&self, space: RaftSpace, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.with(|open| Ok(open.space(space).get(key).map_err(err)?.map(|v| v.to_vec())))
    }

    fn raft_scan(
        &self,
        space: RaftSpace,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<super::engine::Records, EngineError> {
        self.with(|open| {
            let iter = open.space(space).range(from..to);
            let pair = |g: fjall::Guard| g.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err);
            if rev {
                iter.rev().take(limit).map(pair).collect()
            } else {
                iter.take(limit).map(pair).collect()
            }
        })
    }

    fn range_data(&self, first: u8, last: u8) -> Result<RangeData, EngineError> {
        self.with(|open| {
            // Only the range's group writes its buckets, from the thread that asks for this,
            // so the range does not change while it is read.
            let mut data = RangeData::new();
            for (bucket, _) in open.range_buckets(first, last)? {
                let prefix = bucket_prefix(&bucket);
                let keys = data.entry(bucket).or_default();
                for guard in open.data.prefix(&prefix) {
                    let (k, v) = guard.into_inner().map_err(err)?;
                    keys.insert(k[prefix.len()..].to_vec(), v.to_vec());
                }
            }
            Ok(data)
        })
    }

    fn range_view(&self, first: u8, last: u8) -> Result<Arc<dyn RangeView>, EngineError> {
        // A point-in-time view (fjall's MVCC snapshot): what the range holds now, however
        // long the walk takes and whatever is written meanwhile.
        self.with(|open| {
            Ok(Arc::new(FjallView {
                view: open.db.snapshot(),
                data: open.data.clone(),
                buckets: open.buckets.clone(),
                first,
                last,
            }) as Arc<dyn RangeView>)
        })
    }

    fn range_size(&self, first: u8, last: u8) -> Result<(u64, u64), EngineError> {
        self.with(|open| {
            let (mut keys, mut bytes) = (0, 0);
            for guard in open.buckets.range(range_bounds(first, last)) {
                let bucket = guard.key().map_err(err)?;
                let prefix = bucket_prefix(&bucket).len();
                for guard in open.data.prefix(bucket_prefix(&bucket)) {
                    let (k, v) = guard.into_inner().map_err(err)?;
                    keys += 1;
                    bytes += (k.len() - prefix + v.len()) as u64;
                }
            }
            Ok((keys, bytes))
        })
    }

    fn clear_range_part(
        &self,
        first: u8,
        last: u8,
        limit: usize,
        from: Option<&PartCursor>,
    ) -> Result<Option<PartCursor>, EngineError> {
        use std::ops::Bound;
        self.writing(|open| {
            let mut writes = open.db.batch();
            let (mut taken, mut next) = (0, None);
            let (start, end) = range_bounds(first, last);
            let start = from.map_or(start, |c| Bound::Included(c.bucket.clone()));
            'buckets: for guard in open.buckets.range((start, end)) {
                let bucket = guard.key().map_err(err)?.to_vec();
                let prefix = bucket_prefix(&bucket);
                let after = from.filter(|c| c.bucket == bucket).and_then(|c| c.after.clone());
                for key in open.data.range(keys_start(&bucket, after.as_deref())..) {
                    let key = key.key().map_err(err)?;
                    if !key.starts_with(&prefix) {
                        break;
                    }
                    if taken >= limit {
                        break 'buckets;
                    }
                    writes.remove(&open.data, key.clone());
                    next = Some(PartCursor {
                        bucket: bucket.clone(),
                        after: Some(key[prefix.len()..].to_vec()),
                    });
                    taken += 1;
                }
                if taken >= limit {
                    break;
                }
                writes.remove(&open.buckets, bucket.as_slice());
                // Its entry is gone once this batch is written: a scan from it starts past it.
                next = Some(PartCursor { bucket, after: None });
                taken += 1;
            }
            writes.commit().map_err(err)?;
            // Stopped at the limit: the next batch goes on from the last key or bucket removed.
            Ok(if taken >= limit { next } else { None })
        })
    }

    fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.with(|open| {
            Ok(open
                .data
                .get(data_key(bucket, key))
                .map_err(err)?
                .map(|v| Bytes::copy_from_slice(&v)))
        })
    }

    fn bucket_exists(&self, bucket: &[u8]) -> Result<bool, EngineError> {
        self.with(|open| open.buckets.contains_key(bucket).map_err(err))
    }

    fn keys(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Result<KeyPage, EngineError> {
        let prefix = bucket_prefix(bucket);
        self.with(|open| {
            let keys = open
                .data
                .range(keys_start(bucket, after)..)
                .map(|guard| guard.key().map_err(err))
                .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)))
                .map(|k| k.map(|k| Bytes::copy_from_slice(&k[prefix.len()..])));
            KeyPage::fill(keys, budget)
        })
    }
}

/// A range as of a point in time, read in parts: a streamed snapshot's source (issue 26).
struct FjallView {
    view: fjall::Snapshot,
    data: Keyspace,
    buckets: Keyspace,
    first: u8,
    last: u8,
}

impl RangeView for FjallView {
    fn part(&self, from: Option<&PartCursor>, budget: usize) -> Result<(RangeData, Option<PartCursor>), EngineError> {
        use fjall::Readable;
        use std::ops::Bound;
        let (start, end) = range_bounds(self.first, self.last);
        let start = from.map_or(start, |c| Bound::Included(c.bucket.clone()));
        let mut out = RangeData::new();
        // Bytes taken, and buckets begun or keys taken: a part stops at the budget only
        // once it holds something new, so every walk moves on.
        let (mut used, mut taken) = (0, 0);
        for guard in self.view.range(&self.buckets, (start, end)) {
            let bucket = guard.key().map_err(err)?.to_vec();
            let going_on = from.filter(|c| c.bucket == bucket);
            if going_on.is_none() {
                if used >= budget && taken > 0 {
                    return Ok((out, Some(PartCursor { bucket, after: None })));
                }
                taken += 1;
            }
            let prefix = bucket_prefix(&bucket);
            let after = going_on.and_then(|c| c.after.clone());
            used += bucket.len() + 8;
            let keys = out.entry(bucket.clone()).or_default();
            for guard in self.view.range(&self.data, keys_start(&bucket, after.as_deref())..) {
                let (k, v) = guard.into_inner().map_err(err)?;
                if !k.starts_with(&prefix) {
                    break;
                }
                if used >= budget && taken > 0 {
                    let after = keys.last_key_value().map(|(k, _)| k.clone()).or(after);
                    return Ok((out, Some(PartCursor { bucket, after })));
                }
                used += k.len() + v.len() + 8;
                taken += 1;
                keys.insert(k[prefix.len()..].to_vec(), v.to_vec());
            }
        }
        Ok((out, None))
    }
}
