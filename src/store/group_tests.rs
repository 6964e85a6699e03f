//! Tests of the Raft groups on the node's store (`group`): durability across reopening, one
//! sync per round shared with plain writes, suffix replacement, compaction, snapshots, and the
//! unsynced apply's crash and replay. Memory and fjall alike where both apply.

use std::sync::Mutex as SyncMutex;

use kvnode_replica::{Command, Effect, GroupStore, GroupWrite, Persist, RangeData, RangeId};
use raft::prelude::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage, StorageError};

use super::engine::{Applied, Engine, EngineError, KeyPage, Op, RaftSpace};
use super::*;

const AM: RangeId = RangeId {
    first: b'a',
    last: b'm',
};
const NZ: RangeId = RangeId {
    first: b'n',
    last: b'z',
};
const VOTERS: [u64; 3] = [11, 22, 33];

fn put(bucket: &str, key: &str, value: &str) -> Command {
    Command::Put {
        bucket: bucket.into(),
        key: key.into(),
        value: value.into(),
    }
}

fn entry(index: u64, term: u64, command: Option<&Command>) -> Entry {
    let mut e = Entry {
        index,
        term,
        ..Default::default()
    };
    if let Some(c) = command {
        e.set_data(postcard::to_allocvec(c).unwrap().into());
    }
    e
}

fn hard(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn write(range: RangeId, snapshot: Option<Snapshot>, entries: Vec<Entry>, hs: Option<HardState>) -> GroupWrite {
    GroupWrite {
        range,
        snapshot,
        entries,
        hard_state: hs,
    }
}

/// One round of one group, as the driver runs it: durable first, then into the group.
async fn round(store: &Store, group: &mut NodeGroupStore, w: GroupWrite) {
    let persist = Persist {
        round: 1,
        groups: vec![w.clone()],
        send_early: vec![],
    };
    store.persist_round(&persist).await.unwrap();
    group
        .persist(w.snapshot.as_ref(), &w.entries, w.hard_state.as_ref())
        .unwrap();
}

fn all(group: &NodeGroupStore, low: u64, high: u64) -> raft::Result<Vec<Entry>> {
    group.entries(low, high, None, GetEntriesContext::empty(false))
}

/// The writer of a disk store, running until the guard drops (memory: nothing to run).
struct Writer {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Writer {
    /// Stops the writer and waits until it let go of the store (its directory lock).
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn writer(store: &Store) -> Writer {
    let stop = CancellationToken::new();
    let (s, st) = (store.clone(), stop.clone());
    let task = tokio::spawn(async move { s.run_writer(st).await });
    Writer { stop, task: Some(task) }
}

/// A memory store and a fjall store in a fresh directory (kept alive by the returned dir).
fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let mut out = vec![(Store::in_memory(), None)];
    #[cfg(feature = "fjall")]
    {
        let dir = tempfile::tempdir().unwrap();
        out.push((Store::open_with(dir.path(), EngineKind::Fjall).unwrap(), Some(dir)));
    }
    out
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_groups_log_hard_state_conf_state_and_applied_index_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = (put("apple", "k", "v1"), put("kiwi", "x", "y"));
    {
        let store = Store::open(dir.path()).unwrap();
        let w = writer(&store);
        let mut g = store.group(AM, Some(&VOTERS)).unwrap();
        assert_eq!(g.applied(), 1);
        assert_eq!((g.first_index().unwrap(), g.last_index().unwrap()), (2, 1));
        let entries = vec![entry(2, 2, None), entry(3, 2, Some(&p)), entry(4, 2, Some(&q))];
        round(&store, &mut g, write(AM, None, entries, Some(hard(2, 11, 3)))).await;
        g.apply(2, None).unwrap();
        g.apply(3, Some(&p)).unwrap();
        let other = store.group(NZ, None).unwrap();
        assert_eq!(other.initial_state().unwrap().conf_state.voters, Vec::<u64>::new());
        // A plain write's sync makes the unsynced apply durable too.
        store.put(b"zoo", b"k", Bytes::from_static(b"z")).await.unwrap();
        w.stop().await;
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.groups().unwrap(),
        vec![AM],
        "an uninitialised group wrote nothing"
    );
    let g = store.group(AM, None).unwrap();
    let state = g.initial_state().unwrap();
    assert_eq!(state.hard_state, hard(2, 11, 3));
    assert_eq!(state.conf_state.voters, VOTERS.to_vec());
    assert_eq!(g.applied(), 3);
    assert_eq!((g.first_index().unwrap(), g.last_index().unwrap()), (2, 4));
    let e = all(&g, 2, 5).unwrap();
    assert_eq!(
        e.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
        [(2, 2), (3, 2), (4, 2)]
    );
    assert_eq!(e[2].get_data(), postcard::to_allocvec(&q).unwrap().as_slice());
    assert_eq!(g.term(1).unwrap(), 1, "the bootstrap snapshot's term");
    assert_eq!(
        store.get(b"apple", b"k").await.unwrap(),
        Lookup::Found(Bytes::from_static(b"v1"))
    );
    assert_eq!(
        store.get(b"kiwi", b"x").await.unwrap(),
        Lookup::NoBucket,
        "not applied yet"
    );
}

/// The engine, counting synced commits and the ops of each.
struct CountingSyncs {
    inner: Arc<dyn Engine>,
    batches: SyncMutex<Vec<usize>>,
}

impl Engine for CountingSyncs {
    fn commit(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
        let applied = self.inner.commit(batch)?;
        self.batches.lock().unwrap().push(batch.len());
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
    fn commit_unsynced(&self, batch: &[Op]) -> Result<Vec<Applied>, EngineError> {
        self.inner.commit_unsynced(batch)
    }
    fn raft_get(&self, space: RaftSpace, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.raft_get(space, key)
    }
    fn raft_scan(
        &self,
        space: RaftSpace,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<super::engine::Records, EngineError> {
        self.inner.raft_scan(space, from, to, rev, limit)
    }
    fn range_data(&self, first: u8, last: u8) -> Result<RangeData, EngineError> {
        self.inner.range_data(first, last)
    }
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn an_entry_append_and_a_plain_put_queued_together_are_made_durable_by_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = DiskStore::open(dir.path(), EngineKind::Fjall).unwrap();
    let counting = Arc::new(CountingSyncs {
        inner: Arc::clone(disk.engine()),
        batches: SyncMutex::default(),
    });
    disk.set_engine(Arc::clone(&counting) as Arc<dyn Engine>);
    let store = Store {
        backend: Backend::Disk(disk),
        groups: Arc::default(),
    };
    let _g = store.group(AM, Some(&VOTERS)).unwrap();
    let _h = store.group(NZ, Some(&VOTERS)).unwrap();
    // Both are queued before the writer runs (this runtime has one thread: the spawned
    // tasks run at the yields), so the writer finds them together.
    let plain = tokio::spawn({
        let store = store.clone();
        async move { store.put(b"zoo", b"k", Bytes::from_static(b"v")).await }
    });
    let persist = Persist {
        round: 7,
        groups: vec![
            write(AM, None, vec![entry(2, 2, None)], Some(hard(2, 11, 1))),
            write(
                NZ,
                None,
                vec![entry(2, 2, None), entry(3, 2, None)],
                Some(hard(2, 22, 1)),
            ),
        ],
        send_early: vec![],
    };
    let raft = tokio::spawn({
        let store = store.clone();
        async move { store.persist_round(&persist).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(counting.batches.lock().unwrap().is_empty());
    let _w = writer(&store);
    plain.await.unwrap().unwrap();
    raft.await.unwrap().unwrap();
    assert_eq!(
        *counting.batches.lock().unwrap(),
        vec![2],
        "one sync for the plain put and both groups' round"
    );
}

#[tokio::test]
async fn entries_replace_a_suffix_from_the_first_ones_index() {
    for (store, dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Some(&VOTERS)).unwrap();
        let first: Vec<_> = (2..=6).map(|i| entry(i, 2, None)).collect();
        round(&store, &mut g, write(AM, None, first, Some(hard(2, 0, 1)))).await;
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(4, 3, None), entry(5, 3, None)], None),
        )
        .await;
        let check = |g: &NodeGroupStore| {
            assert_eq!(g.last_index().unwrap(), 5);
            let terms: Vec<_> = all(g, 2, 6).unwrap().iter().map(|e| e.term).collect();
            assert_eq!(terms, [2, 2, 3, 3]);
            assert!(matches!(g.term(6), Err(raft::Error::Store(StorageError::Unavailable))));
        };
        check(&g);
        // A hole after the last, or a replacement below the first, is refused.
        let hole = write(AM, None, vec![entry(8, 3, None)], None);
        let refused = Persist {
            round: 2,
            groups: vec![hole.clone()],
            send_early: vec![],
        };
        assert!(matches!(
            store.persist_round(&refused).await,
            Err(StoreError::Group { .. })
        ));
        assert!(g.persist(None, &hole.entries, None).is_err());
        drop(g);
        _w.stop().await;
        if let Some(dir) = dir {
            drop(store);
            let store = Store::open(dir.path()).unwrap();
            check(&store.group(AM, None).unwrap());
            let tail = store.range_log_keys(AM);
            assert_eq!(tail, [2, 3, 4, 5], "the replaced entry 6 is gone from raft_log");
        }
    }
}

#[tokio::test]
async fn compaction_drops_applied_entries_and_entries_below_answer_compacted() {
    for (store, dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Some(&VOTERS)).unwrap();
        let entries: Vec<_> = (2..=10).map(|i| entry(i, 2, None)).collect();
        round(&store, &mut g, write(AM, None, entries, Some(hard(2, 0, 10)))).await;
        for i in 2..=7 {
            g.apply(i, None).unwrap();
        }
        g.compact(9).unwrap();
        let check = |g: &NodeGroupStore| {
            assert_eq!(g.first_index().unwrap(), 7, "only up to the applied index");
            assert!(matches!(all(g, 5, 8), Err(raft::Error::Store(StorageError::Compacted))));
            assert!(matches!(g.term(5), Err(raft::Error::Store(StorageError::Compacted))));
            assert_eq!(g.term(6).unwrap(), 2, "the entry before the first keeps its term");
            assert_eq!(all(g, 7, 11).unwrap().len(), 4);
        };
        check(&g);
        drop(g);
        _w.stop().await;
        if let Some(dir) = dir {
            drop(store);
            let store = Store::open(dir.path()).unwrap();
            check(&store.group(AM, None).unwrap());
            assert_eq!(store.range_log_keys(AM), [7, 8, 9, 10]);
        }
    }
}

/// The group's snapshot at `index` or later: on disk it is built on a thread of its own, and
/// raft-rs is told to ask again until it is ready.
async fn snapshot_of(g: &NodeGroupStore, index: u64) -> Snapshot {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match g.snapshot(index, 22) {
            Ok(snap) => return snap,
            Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)) => {
                assert!(std::time::Instant::now() < deadline, "no snapshot after 10 s");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_snapshot_is_of_the_moment_it_was_asked_for_whatever_is_applied_while_it_is_built() {
    for (store, _dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Some(&VOTERS)).unwrap();
        let first = put("apple", "k", "1");
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(2, 2, Some(&first))], Some(hard(2, 11, 2))),
        )
        .await;
        g.apply(2, Some(&first)).unwrap();
        let asked = g.snapshot(2, 22);
        let later = put("apple", "k", "2");
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(3, 2, Some(&later))], Some(hard(2, 11, 3))),
        )
        .await;
        g.apply(3, Some(&later)).unwrap();
        let snap = match asked {
            Ok(snap) => snap,
            Err(_) => snapshot_of(&g, 2).await,
        };
        assert_eq!(snap.get_metadata().index, 2, "{}", store.describe());
        let data = kvnode_replica::decode_range(snap.get_data()).unwrap();
        assert_eq!(
            data[&b"apple".to_vec()][&b"k".to_vec()],
            b"1".to_vec(),
            "{}",
            store.describe()
        );
    }
}

#[tokio::test]
async fn a_snapshot_installed_on_another_store_replaces_the_range_and_nothing_else() {
    let (sources, targets) = (stores(), stores());
    for ((from, _d1), (to, dir)) in sources.into_iter().zip(targets) {
        let (_w1, _w2) = (writer(&from), writer(&to));
        let mut g = from.group(AM, Some(&VOTERS)).unwrap();
        let cmds = [put("apple", "k", "1"), put("kiwi", "x", "2"), put("apple", "j", "3")];
        let entries: Vec<_> = cmds.iter().zip(2..).map(|(c, i)| entry(i, 2, Some(c))).collect();
        round(&from, &mut g, write(AM, None, entries, Some(hard(2, 11, 4)))).await;
        for (c, i) in cmds.iter().zip(2..) {
            g.apply(i, Some(c)).unwrap();
        }
        from.put(b"zebra", b"z", Bytes::from_static(b"other range"))
            .await
            .unwrap();
        let snap = snapshot_of(&g, 4).await;
        assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (4, 2));
        assert!(matches!(
            g.snapshot(5, 22),
            Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
        ));
        // The target holds other keys of the range (to go) and of another range (to stay).
        for (b, k) in [("apple", "old"), ("banana", "b"), ("zoo", "z")] {
            to.put(b.as_bytes(), k.as_bytes(), Bytes::from_static(b"before"))
                .await
                .unwrap();
        }
        let mut h = to.group(AM, None).unwrap();
        round(&to, &mut h, write(AM, Some(snap.clone()), vec![], None)).await;
        let check = |to: &Store, h: &NodeGroupStore| {
            assert_eq!(to.range_data(AM).unwrap(), from.range_data(AM).unwrap());
            assert_eq!(h.applied(), 4);
            assert_eq!((h.first_index().unwrap(), h.last_index().unwrap()), (5, 4));
            assert_eq!(h.initial_state().unwrap().conf_state.voters, VOTERS.to_vec());
            assert_eq!(h.initial_state().unwrap().hard_state.commit, 4);
        };
        check(&to, &h);
        assert_eq!(to.get(b"banana", b"b").await.unwrap(), Lookup::NoBucket);
        assert_eq!(to.get(b"apple", b"old").await.unwrap(), Lookup::NoKey);
        assert_eq!(
            to.get(b"zoo", b"z").await.unwrap(),
            Lookup::Found(Bytes::from_static(b"before"))
        );
        drop(h);
        _w2.stop().await;
        if let Some(dir) = dir {
            drop(to);
            let to = Store::open(dir.path()).unwrap();
            check(&to, &to.group(AM, None).unwrap());
        }
    }
}

impl Store {
    /// The indices of `range`'s entries in `raft_log`.
    fn range_log_keys(&self, range: RangeId) -> Vec<u64> {
        let Backend::Disk(d) = &self.backend else {
            return vec![];
        };
        let (from, to) = group_records::log_span(range, 0, None);
        let keys = d.engine().raft_scan(RaftSpace::Log, &from, &to, false, usize::MAX);
        keys.unwrap()
            .iter()
            .filter_map(|(k, _)| group_records::log_index(k))
            .collect()
    }
}

#[tokio::test]
async fn what_an_entry_does_is_decided_where_it_applies_on_both_stores() {
    let cmd = |c: fn(Vec<u8>, Vec<u8>, Vec<u8>) -> Command, b: &str| c(b.into(), b"k".to_vec(), b"v".to_vec());
    let existing = |bucket, key, value| Command::PutExisting { bucket, key, value };
    let reporting = |bucket, key, value| Command::PutReporting { bucket, key, value };
    let delete = |b: &str| Command::Delete {
        bucket: b.into(),
        key: b"k".to_vec(),
    };
    let create = Command::CreateBucket { bucket: b"fig".into() };
    // In log order, each decided by the state the ones before it left.
    let steps = [
        (cmd(existing, "apple"), Effect::NoBucket),
        (delete("apple"), Effect::NoBucket),
        (cmd(reporting, "apple"), Effect::StoredNew),
        (cmd(reporting, "apple"), Effect::Stored),
        (cmd(existing, "apple"), Effect::Stored),
        (delete("apple"), Effect::Deleted),
        (delete("apple"), Effect::NoKey),
        (create.clone(), Effect::Created(true)),
        (create, Effect::Created(false)),
        (cmd(existing, "fig"), Effect::Stored),
    ];
    for (store, _dir) in stores() {
        let w = writer(&store);
        let mut g = store.group(AM, Some(&VOTERS)).unwrap();
        let entries: Vec<Entry> = (0..steps.len())
            .map(|i| entry(2 + i as u64, 2, Some(&steps[i].0)))
            .collect();
        round(&store, &mut g, write(AM, None, entries, Some(hard(2, 11, 11)))).await;
        for (i, (command, effect)) in steps.iter().enumerate() {
            assert_eq!(
                g.apply(2 + i as u64, Some(command)).unwrap(),
                *effect,
                "step {i}: {command:?}"
            );
        }
        assert_eq!(g.apply(12, None).ok(), None, "no entry 12 was written");
        assert_eq!(store.get(b"apple", b"k").await.unwrap(), Lookup::NoKey);
        assert_eq!(
            store.get(b"fig", b"k").await.unwrap(),
            Lookup::Found(Bytes::from_static(b"v"))
        );
        w.stop().await;
    }
}

#[tokio::test]
async fn an_in_memory_log_keeps_every_entry_however_many_bytes_it_holds() {
    // On disk the cache is a tail of the log (the rest is in `raft_log`); in memory it is the
    // whole log, so no size may push an entry out of it. Three entries of 3 MiB each are over
    // the disk cache's byte bound.
    let store = Store::in_memory();
    let mut g = store.group(AM, Some(&VOTERS)).unwrap();
    let big = put("b", "k", &"x".repeat(3 << 20));
    let entries: Vec<_> = (2..=4).map(|i| entry(i, 2, Some(&big))).collect();
    round(&store, &mut g, write(AM, None, entries, Some(hard(2, 0, 1)))).await;
    for i in 2..=4 {
        assert_eq!(g.term(i).unwrap(), 2, "entry {i}");
    }
    assert_eq!(all(&g, 2, 5).unwrap().len(), 3);
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn an_applied_configuration_change_survives_reopening_with_its_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut moved = raft::prelude::ConfState::default();
    moved.set_voters(vec![11, 22, 44]);
    moved.set_learners(vec![55]);
    {
        let store = Store::open(dir.path()).unwrap();
        let w = writer(&store);
        let mut g = store.group(AM, Some(&VOTERS)).unwrap();
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(2, 2, None)], Some(hard(2, 11, 2))),
        )
        .await;
        g.apply_conf(2, &moved).unwrap();
        assert_eq!(g.initial_state().unwrap().conf_state, moved);
        // A plain write's sync makes the unsynced apply durable too.
        store.put(b"zoo", b"k", Bytes::from_static(b"z")).await.unwrap();
        w.stop().await;
    }
    let store = Store::open(dir.path()).unwrap();
    let g = store.group(AM, None).unwrap();
    assert_eq!(g.initial_state().unwrap().conf_state, moved);
    assert_eq!(g.applied(), 2);
}

#[tokio::test]
async fn a_replicated_write_goes_to_its_range_feed_by_log_index_and_not_to_the_nodes() {
    for (store, _dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Some(&VOTERS)).unwrap();
        let (p, d) = (
            put("apple", "k", "v1"),
            Command::Delete {
                bucket: b"apple".to_vec(),
                key: b"k".to_vec(),
            },
        );
        let entries = vec![entry(2, 2, Some(&p)), entry(3, 2, None), entry(4, 2, Some(&d))];
        round(&store, &mut g, write(AM, None, entries, Some(hard(2, 11, 4)))).await;
        for (i, c) in [(2, Some(&p)), (3, None), (4, Some(&d))] {
            g.apply(i, c).unwrap();
        }
        let page = g.feed().read(1, |_| true, 1 << 20).unwrap();
        let seen: Vec<(u64, bool)> = page.changes.iter().map(|c| (c.seq, c.value.is_some())).collect();
        assert_eq!(seen, [(2, true), (4, false)]);
        assert_eq!(page.upto, 4);
        assert_eq!(
            store.feed().last(),
            0,
            "the node's own feed is for single-owner buckets"
        );
    }
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_range_read_later_sees_the_range_as_it_was_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), EngineKind::Fjall).unwrap();
    let _w = writer(&store);
    store.put(b"apple", b"k", Bytes::from_static(b"1")).await.unwrap();
    let Backend::Disk(d) = &store.backend else {
        unreachable!("a fjall store is on disk")
    };
    let reader = d.engine().range_data_later(b'a', b'm').unwrap();
    store.put(b"apple", b"k", Bytes::from_static(b"2")).await.unwrap();
    store.put(b"banana", b"x", Bytes::from_static(b"3")).await.unwrap();
    let data = reader().unwrap();
    assert_eq!(data[&b"apple".to_vec()][&b"k".to_vec()], b"1".to_vec());
    assert!(!data.contains_key(b"banana".as_slice()), "{data:?}");
    // Read now, it is the range as it is now.
    let now = d.engine().range_data_later(b'a', b'm').unwrap()().unwrap();
    assert_eq!(now[&b"apple".to_vec()][&b"k".to_vec()], b"2".to_vec());
}
