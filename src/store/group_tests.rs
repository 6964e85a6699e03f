//! Tests of the Raft groups on the node's store (`group`): durability across reopening, one
//! sync per round shared with plain writes, suffix replacement, compaction, snapshots, and the
//! unsynced apply's crash and replay. Memory and fjall alike where both apply.

use std::collections::BTreeMap;
use std::sync::Mutex as SyncMutex;

use kvnode_replica::{Command, Effect, Generation, GroupStore, GroupWrite, Persist, RangeData, RangeId};
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

/// A range's ended histories (`store::ended`): recorded synced by `mark_ended`, or with the
/// drop of its group in the same batch; kept when the group is dropped, a seal given up when
/// the range's data goes or another history starts (`unseal`); the newest sixteen, newest
/// first; on disk, read back after a restart; never taken for a group's state.
#[tokio::test]
async fn a_ranges_ended_histories_outlive_its_group_and_a_restart() {
    let ended = |g: u64, here: bool| Ended {
        generation: Generation(g),
        here,
    };
    let mut dirs = vec![];
    for (store, dir) in stores() {
        let w = writer(&store);
        store.group(AM, Generation(5), Some(&VOTERS)).unwrap();
        assert_eq!(store.ended(AM).unwrap(), vec![]);
        store.mark_ended(AM, ended(5, true)).unwrap();
        assert_eq!(store.groups().unwrap(), vec![AM], "the group runs on");
        store.drop_group(AM, true, None).await.unwrap();
        assert_eq!(
            store.ended(AM).unwrap(),
            vec![ended(5, true)],
            "a drop keeping the data keeps it"
        );
        store.group(AM, Generation(7), Some(&VOTERS)).unwrap();
        store.drop_group(AM, false, Some(ended(7, false))).await.unwrap();
        assert_eq!(
            store.ended(AM).unwrap(),
            vec![ended(7, false), ended(5, false)],
            "the data gone, so is the seal"
        );
        store.group(NZ, Generation(6), Some(&VOTERS)).unwrap();
        store.drop_group(NZ, true, Some(ended(6, false))).await.unwrap();
        store.mark_ended(NZ, ended(8, true)).unwrap();
        store.unseal(NZ, Generation(8)).unwrap();
        assert_eq!(store.ended(NZ).unwrap(), vec![ended(8, true), ended(6, false)]);
        store.unseal(NZ, Generation(9)).unwrap();
        assert_eq!(store.ended(NZ).unwrap(), vec![ended(8, false), ended(6, false)]);
        assert_eq!(store.groups().unwrap(), Vec::<RangeId>::new(), "no group's state");
        let mut all = store.ended_all().unwrap();
        all.sort_by_key(|(r, _)| *r);
        assert_eq!(
            all,
            vec![
                (AM, Some(vec![ended(7, false), ended(5, false)])),
                (NZ, Some(vec![ended(8, false), ended(6, false)]))
            ]
        );
        for g in 100..100 + ENDED_KEPT as u64 + 4 {
            store.mark_ended(NZ, ended(g, false)).unwrap();
        }
        let kept = store.ended(NZ).unwrap();
        assert_eq!(kept.len(), ENDED_KEPT);
        assert_eq!(kept[0], ended(100 + ENDED_KEPT as u64 + 3, false), "newest first");
        w.stop().await;
        dirs.extend(dir);
    }
    #[cfg(feature = "fjall")]
    for dir in dirs {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.ended(AM).unwrap(), vec![ended(7, false), ended(5, false)]);
        assert_eq!(store.ended(NZ).unwrap().len(), ENDED_KEPT);
        assert_eq!(store.groups().unwrap(), Vec::<RangeId>::new());
    }
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_group_keeps_the_generation_it_was_created_with_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (first, next) = (Generation(5), Generation(6));
    {
        let store = Store::open(dir.path()).unwrap();
        let w = writer(&store);
        assert_eq!(store.group(AM, first, Some(&VOTERS)).unwrap().generation(), first);
        // A plain write's sync makes the unsynced records durable too.
        store.put(b"zoo", b"k", Bytes::from_static(b"z")).await.unwrap();
        w.stop().await;
    }
    let store = Store::open(dir.path()).unwrap();
    let w = writer(&store);
    // Found on disk: the history it was created with, whichever the caller asks for.
    assert_eq!(store.group(AM, next, None).unwrap().generation(), first);
    store.wipe_group(AM).await.unwrap();
    let wiped = store.group(AM, next, None).unwrap();
    assert_eq!(wiped.generation(), first, "a wipe keeps the history (and the vote)");
    store.drop_group(AM, false, None).await.unwrap();
    let again = store.group(AM, next, None).unwrap();
    assert_eq!(
        again.generation(),
        next,
        "dropped: a group asked for anew is of the new history"
    );
    assert_eq!(again.initial_state().unwrap().conf_state.voters, Vec::<u64>::new());
    w.stop().await;
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_groups_log_hard_state_conf_state_and_applied_index_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (p, q) = (put("apple", "k", "v1"), put("kiwi", "x", "y"));
    {
        let store = Store::open(dir.path()).unwrap();
        let w = writer(&store);
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
        assert_eq!(g.applied(), 1);
        assert_eq!((g.first_index().unwrap(), g.last_index().unwrap()), (2, 1));
        let entries = vec![entry(2, 2, None), entry(3, 2, Some(&p)), entry(4, 2, Some(&q))];
        round(&store, &mut g, write(AM, None, entries, Some(hard(2, 11, 3)))).await;
        g.apply(2, None).unwrap();
        g.apply(3, Some(&p)).unwrap();
        let other = store.group(NZ, Generation::LEGACY, None).unwrap();
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
    let g = store.group(AM, Generation::LEGACY, None).unwrap();
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
        fences: Arc::default(),
        ended: Arc::default(),
    };
    let _g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
    let _h = store.group(NZ, Generation::LEGACY, Some(&VOTERS)).unwrap();
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
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
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
            check(&store.group(AM, Generation::LEGACY, None).unwrap());
            let tail = store.range_log_keys(AM);
            assert_eq!(tail, [2, 3, 4, 5], "the replaced entry 6 is gone from raft_log");
        }
    }
}

#[tokio::test]
async fn compaction_drops_applied_entries_and_entries_below_answer_compacted() {
    for (store, dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
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
            check(&store.group(AM, Generation::LEGACY, None).unwrap());
            assert_eq!(store.range_log_keys(AM), [7, 8, 9, 10]);
        }
    }
}

/// The data a snapshot of `from`'s group carries, in parts of about `budget` bytes: in memory
/// the snapshot holds it whole (one part); on disk it is streamed from the view the snapshot
/// was taken with.
fn snapshot_parts(from: &Store, range: RangeId, snap: &Snapshot, budget: usize) -> Vec<RangeData> {
    if !snap.get_data().is_empty() {
        return vec![kvnode_replica::decode_range(snap.get_data()).unwrap()];
    }
    let view = from
        .snapshot_view(range, snap.get_metadata().index)
        .expect("the snapshot's view");
    let (mut parts, mut cursor) = (vec![], None);
    loop {
        let (part, next) = view.part(cursor.as_ref(), budget).unwrap();
        parts.push(part);
        match next {
            Some(c) => cursor = Some(c),
            None => return parts,
        }
    }
}

/// The parts put together (a bucket may go on from one part into the next).
fn joined(parts: Vec<RangeData>) -> RangeData {
    let mut all = RangeData::new();
    for part in parts {
        for (bucket, keys) in part {
            all.entry(bucket).or_default().extend(keys);
        }
    }
    all
}

/// Installs `snap` into `to`'s group `h` as the node does: a snapshot with data in its round;
/// a streamed one part by part under the marker, then its round with the data in place.
async fn install(to: &Store, h: &mut NodeGroupStore, mut snap: Snapshot, parts: Vec<RangeData>) {
    if snap.get_data().is_empty() {
        to.begin_install(AM).await.unwrap();
        for part in parts {
            to.install_part(AM, part).await.unwrap();
        }
        snap.set_data(kvnode_replica::INSTALLED.to_vec().into());
    }
    round(to, h, write(AM, Some(snap), vec![], None)).await;
}

#[tokio::test]
async fn a_snapshot_is_of_the_moment_it_was_asked_for_whatever_is_applied_while_it_is_built() {
    for (store, _dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
        let first = put("apple", "k", "1");
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(2, 2, Some(&first))], Some(hard(2, 11, 2))),
        )
        .await;
        g.apply(2, Some(&first)).unwrap();
        let snap = g.snapshot(2, 22).unwrap();
        let later = put("apple", "k", "2");
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(3, 2, Some(&later))], Some(hard(2, 11, 3))),
        )
        .await;
        g.apply(3, Some(&later)).unwrap();
        assert_eq!(snap.get_metadata().index, 2, "{}", store.describe());
        let data = joined(snapshot_parts(&store, AM, &snap, 1 << 20));
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
        let mut g = from.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
        let cmds = [put("apple", "k", "1"), put("kiwi", "x", "2"), put("apple", "j", "3")];
        let entries: Vec<_> = cmds.iter().zip(2..).map(|(c, i)| entry(i, 2, Some(c))).collect();
        round(&from, &mut g, write(AM, None, entries, Some(hard(2, 11, 4)))).await;
        for (c, i) in cmds.iter().zip(2..) {
            g.apply(i, Some(c)).unwrap();
        }
        from.put(b"zebra", b"z", Bytes::from_static(b"other range"))
            .await
            .unwrap();
        let snap = g.snapshot(4, 22).unwrap();
        assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (4, 2));
        // Parts of one key each: buckets go on from one part into the next.
        let parts = snapshot_parts(&from, AM, &snap, 1);
        assert_eq!(joined(parts.clone()), from.range_data(AM).unwrap());
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
        let mut h = to.group(AM, Generation::LEGACY, None).unwrap();
        install(&to, &mut h, snap, parts).await;
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
            check(&to, &to.group(AM, Generation::LEGACY, None).unwrap());
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
    // One entry at a time, and all in one run (a leader's round): the same effects.
    for (one_run, (store, _dir)) in [false, true]
        .into_iter()
        .flat_map(|r| stores().into_iter().map(move |s| (r, s)))
    {
        let w = writer(&store);
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
        let entries: Vec<Entry> = (0..steps.len())
            .map(|i| entry(2 + i as u64, 2, Some(&steps[i].0)))
            .collect();
        round(&store, &mut g, write(AM, None, entries, Some(hard(2, 11, 11)))).await;
        if one_run {
            let run: Vec<(u64, Option<&Command>)> = steps
                .iter()
                .enumerate()
                .map(|(i, (c, _))| (2 + i as u64, Some(c)))
                .collect();
            let want: Vec<Effect> = steps.iter().map(|(_, e)| *e).collect();
            assert_eq!(g.apply_run(&run).unwrap(), want);
            assert_eq!(g.applied(), 11);
        } else {
            for (i, (command, effect)) in steps.iter().enumerate() {
                assert_eq!(
                    g.apply(2 + i as u64, Some(command)).unwrap(),
                    *effect,
                    "step {i}: {command:?}"
                );
            }
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
    let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
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
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
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
    let g = store.group(AM, Generation::LEGACY, None).unwrap();
    assert_eq!(g.initial_state().unwrap().conf_state, moved);
    assert_eq!(g.applied(), 2);
}

#[tokio::test]
async fn a_replicated_write_goes_to_its_range_feed_by_log_index_and_not_to_the_nodes() {
    for (store, _dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
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

/// A fjall store with its writer, holding `keys` (`bucket/key`, each valued `1`) and the
/// empty `buckets`.
#[cfg(feature = "fjall")]
async fn fjall_with(keys: &[&str], buckets: &[&str]) -> (tempfile::TempDir, Store, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), EngineKind::Fjall).unwrap();
    let w = writer(&store);
    for (b, k) in keys.iter().filter_map(|bk| bk.split_once('/')) {
        store
            .put(b.as_bytes(), k.as_bytes(), Bytes::from_static(b"1"))
            .await
            .unwrap();
    }
    for b in buckets {
        store.create_bucket(b.as_bytes()).await.unwrap();
    }
    (dir, store, w)
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_range_view_reads_the_range_as_it_was_when_taken_in_parts_of_any_size() {
    let (_dir, store, _w) = fjall_with(&["apple/k", "apple/l", "apple/m", "cherry/c", "zoo/z"], &["banana"]).await;
    let Backend::Disk(d) = &store.backend else {
        unreachable!("a fjall store is on disk")
    };
    let view = d.engine().range_view(b'a', b'm').unwrap();
    store.put(b"apple", b"k", Bytes::from_static(b"2")).await.unwrap();
    store.put(b"date", b"x", Bytes::from_static(b"3")).await.unwrap();
    let walk = |budget: usize| {
        let (mut all, mut cursor, mut parts) = (RangeData::new(), None, 0);
        loop {
            let (part, next) = view.part(cursor.as_ref(), budget).unwrap();
            parts += 1;
            assert!(!part.is_empty(), "every part moves on");
            for (bucket, keys) in part {
                all.entry(bucket).or_default().extend(keys);
            }
            match next {
                Some(c) => cursor = Some(c),
                None => return (all, parts),
            }
        }
    };
    let (whole, one) = walk(1 << 20);
    assert_eq!(one, 1);
    assert_eq!(whole[&b"apple".to_vec()][&b"k".to_vec()], b"1".to_vec());
    assert!(
        whole[&b"banana".to_vec()].is_empty(),
        "an empty bucket is part of the range"
    );
    assert!(!whole.contains_key(b"date".as_slice()), "{whole:?}");
    assert!(!whole.contains_key(b"zoo".as_slice()), "{whole:?}");
    assert_eq!(whole.values().map(BTreeMap::len).sum::<usize>(), 4);
    for budget in [1, 10, 30] {
        let (small, parts) = walk(budget);
        assert_eq!(small, whole, "budget {budget}");
        assert!(parts > 1, "budget {budget}: {parts} part(s)");
    }
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_streamed_install_cut_short_leaves_the_group_empty_at_the_next_start_keeping_term_and_vote() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), EngineKind::Fjall).unwrap();
        let w = writer(&store);
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
        let cmd = put("apple", "k", "old");
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(2, 2, Some(&cmd))], Some(hard(2, 11, 2))),
        )
        .await;
        g.apply(2, Some(&cmd)).unwrap();
        store
            .put(b"zoo", b"z", Bytes::from_static(b"other range"))
            .await
            .unwrap();
        store.begin_install(AM).await.unwrap();
        let mut part = RangeData::new();
        part.entry(b"banana".to_vec())
            .or_default()
            .insert(b"b".to_vec(), b"new".to_vec());
        store.install_part(AM, part).await.unwrap();
        // The node stops here: the snapshot's round never comes.
        drop(g);
        w.stop().await;
    }
    let store = Store::open(dir.path()).unwrap();
    let g = store.group(AM, Generation::LEGACY, None).unwrap();
    let state = g.initial_state().unwrap();
    assert!(state.conf_state.voters.is_empty(), "uninitialised: {state:?}");
    assert_eq!(
        (state.hard_state.term, state.hard_state.vote, state.hard_state.commit),
        (2, 11, 0)
    );
    assert_eq!((g.first_index().unwrap(), g.last_index().unwrap()), (1, 0));
    assert!(store.range_data(AM).unwrap().is_empty());
    assert!(store.range_log_keys(AM).is_empty());
    assert_eq!(
        store.get(b"zoo", b"z").await.unwrap(),
        Lookup::Found(Bytes::from_static(b"other range"))
    );
    // And the marker went with it: the next start finds the group as it is now.
    drop(g);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .group(AM, Generation::LEGACY, None)
            .unwrap()
            .initial_state()
            .unwrap()
            .hard_state
            .term,
        2
    );
}

#[tokio::test]
async fn a_group_wiped_after_a_failed_install_is_asked_for_again_uninitialised() {
    for (store, _dir) in stores() {
        let _w = writer(&store);
        let mut g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
        let cmd = put("apple", "k", "old");
        round(
            &store,
            &mut g,
            write(AM, None, vec![entry(2, 2, Some(&cmd))], Some(hard(2, 11, 2))),
        )
        .await;
        g.apply(2, Some(&cmd)).unwrap();
        store.begin_install(AM).await.unwrap();
        store.wipe_group(AM).await.unwrap();
        let h = store.group(AM, Generation::LEGACY, None).unwrap();
        let state = h.initial_state().unwrap();
        assert!(state.conf_state.voters.is_empty(), "{}", store.describe());
        assert_eq!(
            (state.hard_state.term, state.hard_state.vote),
            (2, 11),
            "{}",
            store.describe()
        );
        assert!(store.range_data(AM).unwrap().is_empty(), "{}", store.describe());
    }
}

#[tokio::test]
async fn a_ranges_size_counts_its_keys_and_their_bytes_and_nothing_outside_it() {
    for (store, _dir) in stores() {
        let _w = writer(&store);
        store.put(b"apple", b"k", Bytes::from_static(b"12345")).await.unwrap();
        store.put(b"apple", b"kk", Bytes::from_static(b"1")).await.unwrap();
        store.put(b"mango", b"x", Bytes::from_static(b"")).await.unwrap();
        store.put(b"zoo", b"z", Bytes::from_static(b"outside")).await.unwrap();
        store.create_bucket(b"banana").await.unwrap();
        assert_eq!(store.range_size(AM).await.unwrap(), (3, 10), "{}", store.describe());
        assert_eq!(store.range_size(NZ).await.unwrap(), (1, 8), "{}", store.describe());
    }
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_range_is_cleared_in_batches_each_going_on_where_the_last_stopped_and_nothing_else() {
    let (_dir, store, _w) = fjall_with(
        &["apple/a", "apple/b", "apple/c", "cherry/x", "zoo/z"],
        &["banana", "Apple"],
    )
    .await;
    let Backend::Disk(d) = &store.backend else {
        unreachable!("a fjall store is on disk")
    };
    let (mut from, mut batches) = (None, 0);
    loop {
        batches += 1;
        assert!(batches < 20, "clearing goes on");
        match d.engine().clear_range_part(b'a', b'm', 2, from.as_ref()).unwrap() {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    // 4 keys and 3 buckets, 2 a batch.
    assert_eq!(batches, 4);
    assert!(store.range_data(AM).unwrap().is_empty());
    assert_eq!(
        store.get(b"zoo", b"z").await.unwrap(),
        Lookup::Found(Bytes::from_static(b"1"))
    );
    assert!(d.engine().bucket_exists(b"Apple").unwrap(), "'A' is before the range");
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn a_snapshots_view_is_let_go_once_its_stream_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), EngineKind::Fjall).unwrap();
    let _w = writer(&store);
    let g = store.group(AM, Generation::LEGACY, Some(&VOTERS)).unwrap();
    let snap = g.snapshot(1, 22).unwrap();
    let index = snap.get_metadata().index;
    assert!(snap.get_data().is_empty(), "streamed");
    assert!(store.snapshot_view(AM, index).is_some());
    // A view no stream took lives on only until it expires.
    g.expire_views();
    assert!(store.snapshot_view(AM, index).is_some(), "young views stay");
    store.release_view(AM, index);
    assert!(store.snapshot_view(AM, index).is_none());
}
