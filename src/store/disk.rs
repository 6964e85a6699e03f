//! Durable storage: an embedded engine behind a group-commit writer.
//!
//! Every write is queued to one writer task; while the engine syncs one batch, the next one
//! gathers, so N concurrent writers share one sync instead of paying for N. A write is
//! answered only once its batch is durable. The data directory is locked so that a second
//! process cannot open it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::engine::{Applied, Engine, EngineError, KeyPage, Op};
use super::feed::Feed;
use super::{Lookup, StoreError};

/// At most this many writes share one sync.
const MAX_BATCH: usize = 4096;
/// A batch waits for the writers of the last one to come back only when a sync takes at
/// least this long (the timer's grain is a millisecond: a wait on a faster disk would cost
/// more than the sync it saves)...
const SLOW_SYNC: Duration = Duration::from_millis(1);
/// ...and then for at most half the last sync's time, and never more than this.
const MAX_GATHER: Duration = Duration::from_millis(2);

/// Which engine stores the data. Both can be compiled in (for the comparison benchmark);
/// a node uses [`EngineKind::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    #[cfg(feature = "fjall")]
    Fjall,
    #[cfg(feature = "redb")]
    Redb,
}

impl Default for EngineKind {
    #[allow(unreachable_code)]
    fn default() -> Self {
        #[cfg(feature = "fjall")]
        return EngineKind::Fjall;
        #[cfg(all(feature = "redb", not(feature = "fjall")))]
        return EngineKind::Redb;
    }
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "fjall")]
            EngineKind::Fjall => "fjall",
            #[cfg(feature = "redb")]
            EngineKind::Redb => "redb",
        }
    }
}

struct Pending {
    op: Op,
    done: oneshot::Sender<Result<Applied, EngineError>>,
}

/// A write in the writer's queue ([`DiskStore::queue`]).
pub(super) struct Queued(oneshot::Receiver<Result<Applied, EngineError>>);

/// The durable store; cheap to clone.
#[derive(Clone)]
pub struct DiskStore {
    engine: Arc<dyn Engine>,
    writes: mpsc::UnboundedSender<Pending>,
    /// The writer takes this for as long as it runs; a restarted writer takes it over.
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>,
    path: Arc<PathBuf>,
    /// Each change, pushed once its batch is durable and before it is answered.
    feed: Arc<Feed>,
    _lock: Arc<File>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").field("path", &self.path).finish()
    }
}

impl DiskStore {
    /// Opens (or creates) the store under `dir`, refusing a directory another process holds.
    pub fn open(dir: &Path, kind: EngineKind) -> Result<Self, StoreError> {
        crate::secret::create_private_dir(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open {
                path: lock_path.display().to_string(),
                reason: e.to_string(),
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::InUse {
                path: dir.display().to_string(),
            });
        }
        let path = match kind {
            #[cfg(feature = "fjall")]
            EngineKind::Fjall => dir.join("fjall"),
            #[cfg(feature = "redb")]
            EngineKind::Redb => dir.join("data.redb"),
        };
        let engine: Arc<dyn Engine> = match kind {
            #[cfg(feature = "fjall")]
            EngineKind::Fjall => {
                Arc::new(super::fjall_engine::FjallEngine::open(&path).map_err(|e| open_err(&path, e))?)
            }
            #[cfg(feature = "redb")]
            EngineKind::Redb => Arc::new(super::redb_engine::RedbEngine::open(&path).map_err(|e| open_err(&path, e))?),
        };
        let (writes, queue) = mpsc::unbounded_channel();
        Ok(Self {
            engine,
            writes,
            queue: Arc::new(Mutex::new(queue)),
            path: Arc::new(path),
            feed: Arc::default(),
            _lock: Arc::new(lock),
        })
    }

    /// The changes this store made durable, for `kvnode watch`.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The engine, for the Raft groups' reads and unsynced writes (`store::group`).
    pub(super) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Tests wrap the engine (to count its syncs, say).
    #[cfg(test)]
    pub(super) fn set_engine(&mut self, engine: Arc<dyn Engine>) {
        self.engine = engine;
    }

    /// Where the engine keeps its files.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn engine_err(&self, e: EngineError) -> StoreError {
        StoreError::Engine(format!("{} ({})", e.0, self.path.display()))
    }

    /// Queues a write and waits until it is durable.
    pub async fn write(&self, op: Op) -> Result<Applied, StoreError> {
        let answer = self.queue(op)?;
        self.written(answer).await
    }

    /// Queues a write (first in, first out), at once.
    pub(super) fn queue(&self, op: Op) -> Result<Queued, StoreError> {
        let (done, answer) = oneshot::channel();
        self.writes
            .send(Pending { op, done })
            .map_err(|_| StoreError::Engine("the store is closed".into()))?;
        Ok(Queued(answer))
    }

    /// Waits until a queued write is durable.
    pub(super) async fn written(&self, Queued(answer): Queued) -> Result<Applied, StoreError> {
        match answer.await {
            Ok(result) => result.map_err(|e| self.engine_err(e)),
            Err(_) => Err(StoreError::Engine(
                "the store's writer failed before this write was durable; it is being restarted, retry".into(),
            )),
        }
    }

    /// Runs the group-commit writer until `stop` is cancelled and nothing is queued.
    /// A panic inside the engine ends this run (its batch is answered with an error, nothing
    /// was acknowledged); the supervisor starts a new one.
    pub async fn run_writer(&self, stop: CancellationToken) -> Result<(), String> {
        let mut queue = self.queue.lock().await;
        let mut batch: Vec<Pending> = Vec::new();
        // The writers active when the last sync ended (those it answered, who may write
        // again, and those already queued), and how long that sync took.
        let (mut active, mut last_sync) = (0, Duration::ZERO);
        loop {
            let first = tokio::select! {
                first = queue.recv() => first,
                () = stop.cancelled(), if queue.is_empty() => return Ok(()),
            };
            let Some(first) = first else { return Ok(()) };
            batch.push(first);
            drain(&mut queue, &mut batch);
            // On a slow disk, N writers fall into two cohorts: one writes while the other's
            // batch syncs, so each sync covers half of them. When the disk is slow, a batch
            // waits (a little: see MAX_GATHER) for the writers of the last one to come back,
            // so that one sync covers them all. It waits for no more writers than were active,
            // so one client's writes never wait.
            if let Some((target, wait)) = gather(active, last_sync, batch.len())
                && !stop.is_cancelled()
            {
                let until = tokio::time::Instant::now() + wait;
                while batch.len() < target {
                    match tokio::time::timeout_at(until, queue.recv()).await {
                        Ok(Some(p)) => {
                            batch.push(p);
                            drain(&mut queue, &mut batch);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            let size = batch.len();
            let started = Instant::now();
            let (ops, waiters): (Vec<Op>, Vec<_>) = batch.drain(..).map(|p| (p.op, p.done)).unzip();
            let (engine, path, feed) = (Arc::clone(&self.engine), Arc::clone(&self.path), Arc::clone(&self.feed));
            // The batch is answered from the thread that synced it, once synced: a write's
            // answer does not wait for this task to be scheduled again first.
            let committed = tokio::task::spawn_blocking(move || {
                let commit_started = std::time::Instant::now();
                let committed = engine.commit(&ops);
                crate::metrics::commit(ops.len(), commit_started.elapsed());
                match committed {
                    Ok(applied) => {
                        // Durable now: watchers may hear of it, in the batch's order (the
                        // order the writes took effect), before any writer is answered.
                        for (op, applied) in ops.iter().zip(&applied) {
                            record(&feed, op, *applied);
                        }
                        for (done, applied) in waiters.into_iter().zip(applied) {
                            let _ = done.send(Ok(applied));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, path = %path.display(), writes = waiters.len(), "a batch of writes failed; none of them was acknowledged");
                        for done in waiters {
                            let _ = done.send(Err(e.clone()));
                        }
                    }
                }
            });
            if let Err(join) = committed.await {
                return Err(format!("the storage engine failed: {join}"));
            }
            (active, last_sync) = (size + queue.len(), started.elapsed());
        }
    }

    /// The newest value of `key` if the engine has it in memory (no I/O, never blocks: may
    /// run on the event loop); `None` says nothing, [`DiskStore::get`] answers then.
    pub fn get_in_memory(&self, bucket: &[u8], key: &[u8]) -> Option<Bytes> {
        // Test builds only: the slow read below must take the blocking path.
        #[cfg(feature = "fault-injection")]
        if bucket == b"fault-injection-slow-read" {
            return None;
        }
        self.engine.get_in_memory(bucket, key)
    }

    /// Blocks while the engine reads: run it where blocking is allowed.
    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Lookup<Bytes>, StoreError> {
        // Test builds only: a read that takes as long as one that misses the cache on a
        // slow disk, to show it holds up nothing else.
        #[cfg(feature = "fault-injection")]
        if bucket == b"fault-injection-slow-read" {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        if let Some(v) = self.engine.get(bucket, key).map_err(|e| self.engine_err(e))? {
            return Ok(Lookup::Found(v));
        }
        Ok(if self.engine.bucket_exists(bucket).map_err(|e| self.engine_err(e))? {
            Lookup::NoKey
        } else {
            Lookup::NoBucket
        })
    }

    pub fn keys(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Result<Lookup<KeyPage>, StoreError> {
        if !self.engine.bucket_exists(bucket).map_err(|e| self.engine_err(e))? {
            return Ok(Lookup::NoBucket);
        }
        let page = self
            .engine
            .keys(bucket, after, budget)
            .map_err(|e| self.engine_err(e))?;
        Ok(Lookup::Found(page))
    }
}

/// Pushes a durable write that changed a key to the feed; a put into a missing bucket, a
/// delete of nothing, a bucket's creation and Raft records change no key.
fn record(feed: &Feed, op: &Op, applied: Applied) {
    match (op, applied) {
        (
            Op::Put { bucket, key, value }
            | Op::PutExisting { bucket, key, value }
            | Op::PutReporting { bucket, key, value },
            Applied::Stored | Applied::StoredNew,
        ) => feed.push(bucket, key, Some(value.clone())),
        (Op::Delete { bucket, key }, Applied::Deleted) => feed.push(bucket, key, None),
        _ => {}
    }
}

/// Whether a batch of `queued` writes waits for more before it is synced, and then for how
/// many in all and how long at most: only when the last sync was slow and fewer writers
/// are queued than were `active` when it ended.
fn gather(active: usize, last_sync: Duration, queued: usize) -> Option<(usize, Duration)> {
    let target = active.min(MAX_BATCH);
    (queued < target && last_sync >= SLOW_SYNC).then(|| (target, (last_sync / 2).min(MAX_GATHER)))
}

/// Moves what is queued into `batch`, up to [`MAX_BATCH`].
fn drain(queue: &mut mpsc::UnboundedReceiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

fn open_err(path: &Path, e: EngineError) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        reason: e.0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex as SyncMutex;

    use super::*;

    /// The store's engine, counting its syncs: a commit returns once its batch is synced, so
    /// the keys of a batch count as synced only once the wrapped commit has returned.
    struct CountingSyncs {
        inner: Arc<dyn Engine>,
        syncs: SyncMutex<(usize, HashSet<Bytes>)>,
    }

    impl Engine for CountingSyncs {
        fn commit(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
            let applied = self.inner.commit(batch)?;
            let mut syncs = self.syncs.lock().unwrap();
            syncs.0 += 1;
            for op in batch {
                if let Op::Put { key, .. } = op {
                    syncs.1.insert(key.clone());
                }
            }
            Ok(applied)
        }
        fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<Bytes>, EngineError> {
            self.inner.get(bucket, key)
        }
        fn bucket_exists(&self, bucket: &[u8]) -> Result<bool, EngineError> {
            self.inner.bucket_exists(bucket)
        }
        fn keys(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Result<KeyPage, EngineError> {
            self.inner.keys(bucket, after, budget)
        }
    }

    #[test]
    fn a_batch_waits_for_the_last_ones_writers_only_when_the_disk_is_slow() {
        let ms = Duration::from_millis;
        // Two cohorts of 25 on a slow disk: the one queued waits for the one just answered.
        assert_eq!(gather(50, ms(4), 25), Some((50, MAX_GATHER)));
        assert_eq!(gather(50, ms(1), 25), Some((50, Duration::from_micros(500))));
        // A fast disk, all writers queued already, or one client writing: no wait.
        assert_eq!(gather(50, Duration::from_micros(200), 25), None);
        assert_eq!(gather(50, ms(4), 50), None);
        assert_eq!(gather(1, ms(4), 1), None);
        assert_eq!(gather(0, ms(4), 1), None, "nothing known yet");
        assert_eq!(gather(usize::MAX, ms(4), 1), Some((MAX_BATCH, MAX_GATHER)));
    }

    /// An engine whose every sync takes `SLOW`, recording each batch's size.
    struct SlowDisk {
        inner: Arc<dyn Engine>,
        batches: SyncMutex<Vec<usize>>,
    }

    const SLOW: Duration = Duration::from_millis(10);

    impl Engine for SlowDisk {
        fn commit(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
            std::thread::sleep(SLOW);
            self.batches.lock().unwrap().push(batch.len());
            self.inner.commit(batch)
        }
        fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<Bytes>, EngineError> {
            self.inner.get(bucket, key)
        }
        fn bucket_exists(&self, bucket: &[u8]) -> Result<bool, EngineError> {
            self.inner.bucket_exists(bucket)
        }
        fn keys(&self, bucket: &[u8], after: Option<&[u8]>, budget: usize) -> Result<KeyPage, EngineError> {
            self.inner.keys(bucket, after, budget)
        }
    }

    /// On a slow disk, writers that each write again once answered share syncs: most
    /// batches hold every writer, not half of them (the two cohorts of a plain group commit).
    #[tokio::test]
    async fn writers_on_a_slow_disk_gather_into_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(dir.path(), EngineKind::default()).unwrap();
        let slow = Arc::new(SlowDisk {
            inner: Arc::clone(&store.engine),
            batches: SyncMutex::default(),
        });
        store.engine = Arc::clone(&slow) as Arc<dyn Engine>;
        let stop = CancellationToken::new();
        let writer = tokio::spawn({
            let (store, stop) = (store.clone(), stop.clone());
            async move { store.run_writer(stop).await }
        });
        const WRITERS: usize = 16;
        const ROUNDS: usize = 12;
        let writers = (0..WRITERS).map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let op = Op::Put {
                        bucket: Bytes::from_static(b"b"),
                        key: Bytes::from(format!("w{w}")),
                        value: Bytes::from(format!("{r}")),
                    };
                    assert_eq!(store.write(op).await.unwrap(), Applied::Stored);
                }
            })
        });
        for w in futures_util::future::join_all(writers).await {
            w.unwrap();
        }
        stop.cancel();
        writer.await.unwrap().unwrap();
        let batches = slow.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), WRITERS * ROUNDS);
        let full = batches.iter().filter(|&&b| b == WRITERS).count();
        assert!(
            full * 2 > batches.len(),
            "most syncs should cover every writer: {batches:?}"
        );
    }

    /// Issue 22 point 18: a put is answered only after the sync that made it durable, and
    /// concurrent puts share syncs (group commit).
    #[tokio::test]
    async fn an_acknowledged_put_was_synced_before_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(dir.path(), EngineKind::default()).unwrap();
        let counting = Arc::new(CountingSyncs {
            inner: Arc::clone(&store.engine),
            syncs: SyncMutex::default(),
        });
        store.engine = Arc::clone(&counting) as Arc<dyn Engine>;
        let stop = CancellationToken::new();
        let writer = tokio::spawn({
            let (store, stop) = (store.clone(), stop.clone());
            async move { store.run_writer(stop).await }
        });
        const PUTS: usize = 200;
        let puts = (0..PUTS).map(|i| {
            let (store, counting) = (store.clone(), Arc::clone(&counting));
            tokio::spawn(async move {
                let key = Bytes::from(format!("k{i}"));
                let op = Op::Put {
                    bucket: Bytes::from_static(b"b"),
                    key: key.clone(),
                    value: Bytes::from_static(b"v"),
                };
                assert_eq!(store.write(op).await.unwrap(), Applied::Stored);
                // Answered: the sync of its batch must already have happened.
                let syncs = counting.syncs.lock().unwrap();
                assert!(
                    syncs.1.contains(&key),
                    "put {i} was answered before its batch was synced"
                );
                syncs.0
            })
        });
        let mut seen = Vec::new();
        for put in futures_util::future::join_all(puts).await {
            seen.push(put.unwrap());
        }
        stop.cancel();
        writer.await.unwrap().unwrap();
        let syncs = counting.syncs.lock().unwrap().0;
        assert!(
            (1..=PUTS).contains(&syncs) && seen.iter().all(|&s| s >= 1),
            "{syncs} syncs for {PUTS} puts"
        );
        println!("{PUTS} concurrent puts took {syncs} syncs");
    }
}
