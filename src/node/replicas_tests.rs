//! The driver in one process: three nodes' drivers joined by channels instead of QUIC.

use std::sync::Mutex;

use super::*;

/// Frames into the other drivers' inboxes; a node in `cut` neither sends nor receives.
struct Wires {
    from: NodeName,
    to: Mutex<HashMap<NodeName, mpsc::Sender<Input>>>,
    cut: Arc<Mutex<Vec<NodeName>>>,
}

impl Outbox for Wires {
    fn send(&self, to: &NodeName, frame: Frame) {
        let cut = self.cut.lock().unwrap();
        if cut.contains(to) || cut.contains(&self.from) {
            return;
        }
        if let Some(tx) = self.to.lock().unwrap().get(to) {
            let _ = tx.try_send(Input::Frame {
                from: self.from.clone(),
                frame,
            });
        }
    }
}

struct Cluster {
    names: Vec<NodeName>,
    handles: Vec<Arc<ReplicasHandle>>,
    stops: Vec<CancellationToken>,
    cut: Arc<Mutex<Vec<NodeName>>>,
}

const RANGE: RangeId = RangeId {
    first: b'a',
    last: b'z',
};

fn cluster() -> Cluster {
    // Each node's own in-memory store, as an `--in-memory` node has.
    cluster_on([Store::in_memory(), Store::in_memory(), Store::in_memory()])
}

fn cluster_on(stores: [Store; 3]) -> Cluster {
    cluster_keeping(stores, LOG_KEEP)
}

fn cluster_keeping(stores: [Store; 3], log_keep: u64) -> Cluster {
    let names: Vec<NodeName> = ["n1", "n2", "n3"].map(|n| n.parse().unwrap()).into();
    let entries = vec![Entry::new(b'a', b'z', names.clone()).unwrap()];
    let handles: Vec<Arc<ReplicasHandle>> = names
        .iter()
        .map(|_| {
            let mut h = ReplicasHandle::new();
            h.log_keep = log_keep;
            Arc::new(h)
        })
        .collect();
    let cut = Arc::new(Mutex::new(vec![]));
    let mut stops = vec![];
    for (i, name) in names.iter().enumerate() {
        let to = names
            .iter()
            .zip(&handles)
            .map(|(n, h)| (n.clone(), h.inbox.clone()))
            .collect();
        let wires = Arc::new(Wires {
            from: name.clone(),
            to: Mutex::new(to),
            cut: Arc::clone(&cut),
        });
        let stop = CancellationToken::new();
        let (h, name, entries, s) = (Arc::clone(&handles[i]), name.clone(), entries.clone(), stop.clone());
        let store = stores[i].clone();
        h.set_table(Arc::new(RoutingTable::new(entries, 1, "test").unwrap()));
        tokio::spawn(async move { h.run(name, store, wires, s).await });
        stops.push(stop);
    }
    Cluster {
        names,
        handles,
        stops,
        cut,
    }
}

impl Cluster {
    /// Hands every node `table`.
    fn set_table(&self, table: &Arc<RoutingTable>) {
        for h in &self.handles {
            h.set_table(Arc::clone(table));
        }
    }

    /// Waits until every node agrees node `i` leads (the preferred leader campaigns at its
    /// bootstrap, and is handed the range back if another won the first election).
    async fn led_by(&self, i: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let views: Vec<Option<NodeName>> = (0..3)
                .map(|j| {
                    self.handles[j]
                        .leaders()
                        .borrow()
                        .get(&RANGE)
                        .and_then(|v| v.leader.clone())
                })
                .collect();
            if views.iter().all(|v| v.as_ref() == Some(&self.names[i])) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} does not lead: {views:?}",
                self.names[i]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leader every live node agrees on, polled until `within`.
    async fn leader(&self, except: Option<usize>, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let views: Vec<Option<NodeName>> = (0..3)
                .filter(|&i| Some(i) != except)
                .map(|i| {
                    self.handles[i]
                        .leaders()
                        .borrow()
                        .get(&RANGE)
                        .and_then(|v| v.leader.clone())
                })
                .collect();
            if let Some(Some(l)) = views.first()
                && views.iter().all(|v| v.as_ref() == Some(l))
                && let Some(i) = self.names.iter().position(|n| n == l)
                && Some(i) != except
            {
                return i;
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader agreed on: {views:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn put(key: &str) -> Command {
    Command::Put {
        bucket: b"apples".to_vec(),
        key: key.as_bytes().to_vec(),
        value: b"1".to_vec(),
    }
}

#[tokio::test]
async fn the_preferred_leader_leads_and_writes_and_reads_go_through_it() {
    let c = cluster();
    c.led_by(0, Duration::from_secs(10)).await;
    let leader = 0;
    c.handles[leader].propose(RANGE, put("k1")).await.unwrap();
    c.handles[leader].read(RANGE).await.unwrap();
    // A follower refuses, naming the leader.
    let refused = c.handles[1].propose(RANGE, put("k2")).await;
    assert_eq!(
        refused,
        Err(Refused::NotLeader {
            range: RANGE,
            leader: Some(c.names[0].clone())
        })
    );
    let refused = c.handles[2].read(RANGE).await;
    assert!(matches!(refused, Err(Refused::NotLeader { .. })), "{refused:?}");
    let other = RangeId {
        first: b'0',
        last: b'9',
    };
    assert_eq!(c.handles[0].read(other).await, Err(Refused::NoGroup(other)));
    for s in &c.stops {
        s.cancel();
    }
}

#[tokio::test]
async fn a_cut_off_leader_is_replaced_and_writes_go_on() {
    let c = cluster();
    let old = c.leader(None, Duration::from_secs(5)).await;
    c.handles[old].propose(RANGE, put("before")).await.unwrap();
    c.cut.lock().unwrap().push(c.names[old].clone());
    let started = std::time::Instant::now();
    let new = c.leader(Some(old), Duration::from_secs(10)).await;
    println!("a new leader after {:?}", started.elapsed());
    assert_ne!(new, old);
    c.handles[new].propose(RANGE, put("after")).await.unwrap();
    c.handles[new].read(RANGE).await.unwrap();
    // The old leader cannot confirm a read without its majority.
    let stale = tokio::time::timeout(Duration::from_secs(3), c.handles[old].read(RANGE)).await;
    assert!(
        !matches!(stale, Ok(Ok(()))),
        "a cut-off leader served a read: {stale:?}"
    );
    for s in &c.stops {
        s.cancel();
    }
}

#[tokio::test]
async fn applied_writes_reach_every_replicas_durable_store() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: [Store; 3] = std::array::from_fn(|i| Store::open(dirs[i].path()).unwrap());
    let writers = CancellationToken::new();
    for store in &stores {
        let (store, stop) = (store.clone(), writers.clone());
        tokio::spawn(async move { store.run_writer(stop).await });
    }
    let c = cluster_on(stores.clone());
    let leader = c.leader(None, Duration::from_secs(5)).await;
    c.handles[leader].propose(RANGE, put("k1")).await.unwrap();
    // Acknowledged once applied on the leader; the followers apply at the next commit index
    // they hear of (a heartbeat at most 100 ms later).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for (i, store) in stores.iter().enumerate() {
        loop {
            match store.get(b"apples", b"k1").await.unwrap() {
                crate::store::Lookup::Found(v) => {
                    assert_eq!(&v[..], b"1");
                    break;
                }
                other => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "node {i} never applied k1: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    for s in &c.stops {
        s.cancel();
    }
    writers.cancel();
}

#[tokio::test]
async fn a_groups_log_is_compacted_on_every_replica_as_writes_go_on() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_keeping(stores.clone(), 40);
    let leader = c.leader(None, Duration::from_secs(5)).await;
    for i in 0..200 {
        c.handles[leader].propose(RANGE, put(&format!("k{i}"))).await.unwrap();
    }
    // Every replica drops its older entries once past 40 applied ones.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for store in &stores {
        let group = store.group(RANGE, Generation::LEGACY, None).unwrap();
        loop {
            let (first, applied) = (raft::Storage::first_index(&group).unwrap(), group.applied());
            if applied >= 200 && applied - first <= 40 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log from {first} to {applied} kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for s in &c.stops {
        s.cancel();
    }
}

#[tokio::test]
async fn leadership_goes_back_to_the_preferred_leader_once_it_is_back() {
    let c = cluster();
    c.led_by(0, Duration::from_secs(10)).await;
    c.cut.lock().unwrap().push(c.names[0].clone());
    let other = c.leader(Some(0), Duration::from_secs(10)).await;
    c.handles[other].propose(RANGE, put("meanwhile")).await.unwrap();
    c.cut.lock().unwrap().clear();
    // Caught up, n1 is handed the range back (checked once a second).
    c.led_by(0, Duration::from_secs(10)).await;
    for s in &c.stops {
        s.cancel();
    }
}

/// The three nodes' entry for `RANGE`, or the first node's alone.
fn all_three(c: &Cluster) -> Vec<Entry> {
    vec![Entry::new(b'a', b'z', c.names.clone()).unwrap()]
}

fn first_alone(c: &Cluster) -> Vec<Entry> {
    vec![Entry::single(b'a', b'z', c.names[0].clone())]
}

#[tokio::test]
async fn a_group_of_an_ended_history_is_retired_and_the_tables_group_starts_afresh() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    let leader = c.leader(None, Duration::from_secs(5)).await;
    c.handles[leader].propose(RANGE, put("old")).await.unwrap();
    // The range's group ended (held by one node) and was born again, in tables these nodes
    // get only the last of: each drops the running group and its data, and the new group
    // starts as a new range.
    let first = RoutingTable::new(all_three(&c), 1, "test").unwrap();
    let between = RoutingTable::new(first_alone(&c), 2, "test")
        .unwrap()
        .with_generations(Some(&first));
    let table = RoutingTable::new(all_three(&c), 3, "test")
        .unwrap()
        .with_generations(Some(&between));
    let generation = table.generation_of(b'a', b'z');
    assert_ne!(generation, Generation::LEGACY);
    assert!(table.has_ended(b'a', b'z', Generation::LEGACY));
    let table = Arc::new(table);
    c.set_table(&table);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leader = c.leader(None, Duration::from_secs(10)).await;
        if c.handles[leader].propose(RANGE, put("new")).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write taken by the new group"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, store) in stores.iter().enumerate() {
        let group = store.group(RANGE, Generation::LEGACY, None).unwrap();
        assert_eq!(group.generation(), generation, "node {i}'s group");
        let old = store.get(b"apples", b"old").await.unwrap();
        assert!(!matches!(old, crate::store::Lookup::Found(_)), "node {i} kept {old:?}");
    }
    for s in &c.stops {
        s.cancel();
    }
}

#[tokio::test]
async fn a_group_whose_history_the_table_does_not_say_ended_is_kept_and_goes_on() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    c.led_by(0, Duration::from_secs(10)).await;
    c.handles[0].propose(RANGE, put("before")).await.unwrap();
    // A table giving the range another history without saying this one ended (a start-up
    // table behind the cluster's, or a coordinator that never saw this group): nothing is
    // dropped, the table's group waits, and this one still takes writes.
    let single = RoutingTable::new(first_alone(&c), 8, "x").unwrap();
    let table = RoutingTable::new(all_three(&c), 9, "x")
        .unwrap()
        .with_generations(Some(&single));
    assert_ne!(table.generation_of(b'a', b'z'), Generation::LEGACY);
    assert!(!table.has_ended(b'a', b'z', Generation::LEGACY));
    let table = Arc::new(table);
    c.set_table(&table);
    // Taken after the table (a driver looks at a new table before its next input).
    c.handles[0].propose(RANGE, put("after")).await.unwrap();
    for (i, store) in stores.iter().enumerate() {
        let group = store.group(RANGE, Generation::LEGACY, None).unwrap();
        assert_eq!(group.generation(), Generation::LEGACY, "node {i}'s group");
        let before = store.get(b"apples", b"before").await.unwrap();
        assert!(matches!(before, crate::store::Lookup::Found(_)), "node {i}: {before:?}");
    }
    for s in &c.stops {
        s.cancel();
    }
}

/// A node away while its group's history ended elsewhere (it never saw the move off it),
/// back with a table that cuts the bytes differently and starts a group of some of them
/// here: the old group's records go first (its log must never be applied over the bytes'
/// newer data), the data stays for the new group, which then starts.
#[tokio::test]
async fn a_group_of_an_ended_history_on_disk_goes_before_a_group_of_overlapping_bytes_starts() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    let leader = c.leader(None, Duration::from_secs(5)).await;
    c.handles[leader].propose(RANGE, put("old")).await.unwrap();
    let n3 = stores[2].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !matches!(n3.get(b"apples", b"old").await.unwrap(), crate::store::Lookup::Found(_)) {
        assert!(tokio::time::Instant::now() < deadline, "n3 never applied the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in &c.stops {
        s.cancel();
    }
    // The group ended onto n1 (version 2); version 3 re-cuts the bytes, n3 the owner of
    // a-m, which starts moving (a group of one over n3's data).
    let first = RoutingTable::new(all_three(&c), 1, "test").unwrap();
    let ended = RoutingTable::new(first_alone(&c), 2, "test")
        .unwrap()
        .with_generations(Some(&first));
    let (a_m, n_z) = (
        Entry::single(b'a', b'm', c.names[2].clone()),
        Entry::single(b'n', b'z', c.names[0].clone()),
    );
    let moving = Entry::new(b'a', b'm', vec![c.names[2].clone(), c.names[0].clone()]).unwrap();
    let table = RoutingTable::new(vec![a_m, n_z], 3, "test")
        .unwrap()
        .with_moves(vec![moving])
        .unwrap()
        .with_generations(Some(&ended));
    assert!(table.has_ended(b'a', b'z', Generation::LEGACY));
    let handle = Arc::new(ReplicasHandle::new());
    handle.set_table(Arc::new(table));
    let wires = Arc::new(Wires {
        from: c.names[2].clone(),
        to: Mutex::new(HashMap::new()),
        cut: Arc::new(Mutex::new(vec![])),
    });
    let stop = CancellationToken::new();
    let (h, name, store, s) = (Arc::clone(&handle), c.names[2].clone(), n3.clone(), stop.clone());
    tokio::spawn(async move { h.run(name, store, wires, s).await });
    let a_m = RangeId {
        first: b'a',
        last: b'm',
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while n3.groups().unwrap() != vec![a_m] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "n3's groups: {:?}",
            n3.groups().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = n3.get(b"apples", b"old").await.unwrap();
    assert!(matches!(old, crate::store::Lookup::Found(_)), "{old:?}");
    // The new group leads alone and takes writes over the data in place.
    handle.propose(a_m, put("new")).await.unwrap();
    stop.cancel();
}

/// While a range's group runs on a node, a plain write of its bytes there is refused, not
/// applied (a write the table routed to a single owner just before a move made the range a
/// group must not reach the data behind the group's back, nor after its snapshot went to the
/// move's new node). Once the group has ended onto a node alone, its plain writes go in.
#[tokio::test]
async fn plain_writes_of_a_running_groups_bytes_are_refused_until_it_has_ended() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    let leader = c.leader(None, Duration::from_secs(5)).await;
    c.handles[leader].propose(RANGE, put("k")).await.unwrap();
    let plain = |s: &Store| {
        let s = s.clone();
        async move { s.put(b"apples", b"plain", bytes::Bytes::from_static(b"1")).await }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for (i, store) in stores.iter().enumerate() {
        // Fenced before the group's first round: by now every node has written one.
        while !matches!(plain(store).await, Err(crate::store::StoreError::Moving { .. })) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i} took a plain write of a-z"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            store.get(b"apples", b"plain").await.unwrap(),
            crate::store::Lookup::NoKey,
            "node {i}"
        );
    }
    // The group ends onto n1, the range's single owner now.
    let first = RoutingTable::new(all_three(&c), 1, "test").unwrap();
    let alone = Arc::new(
        RoutingTable::new(first_alone(&c), 2, "test")
            .unwrap()
            .with_generations(Some(&first)),
    );
    c.set_table(&alone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = plain(&stores[0]).await {
        assert!(tokio::time::Instant::now() < deadline, "n1 never wrote a-z again: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stores[0].groups().unwrap().is_empty(),
        "written only once the group is gone"
    );
    // The table ended the history onto n1 without a seal there (made by hand here): n1
    // remembers it ended, and claims nothing (only a seal says where a history's data is).
    let ended = Ended {
        generation: Generation::LEGACY,
        here: false,
    };
    assert_eq!(stores[0].ended(RANGE).unwrap(), vec![ended]);
    for s in &c.stops {
        s.cancel();
    }
}

/// A write waiting in the log of a group this node then leaves is answered "unknown", never
/// "dropped": its entry may be in the other replicas' logs and commit there, and a caller
/// told "dropped" proposes it again (the request path does), applying it twice.
#[tokio::test]
async fn a_write_waiting_in_a_group_this_node_leaves_is_answered_unknown() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    let leader = c.leader(None, Duration::from_secs(5)).await;
    let log_end = |i: usize| {
        let group = stores[i].group(RANGE, Generation::LEGACY, None).unwrap();
        raft::Storage::last_index(&group).unwrap()
    };
    let before = log_end(leader);
    // Cut off, the leader takes a write into its log that it cannot commit.
    c.cut.lock().unwrap().push(c.names[leader].clone());
    let h = Arc::clone(&c.handles[leader]);
    let waiting = tokio::spawn(async move { h.propose(RANGE, put("maybe")).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log_end(leader) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write never reached the log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The table moves the range to the two others: the leader leaves the group.
    let others: Vec<NodeName> = (0..3).filter(|&i| i != leader).map(|i| c.names[i].clone()).collect();
    let table = RoutingTable::new(vec![Entry::new(b'a', b'z', others).unwrap()], 2, "test").unwrap();
    c.handles[leader].set_table(Arc::new(table));
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered once the group is gone")
        .unwrap();
    assert_eq!(answer, Err(Refused::Unknown(RANGE)));
    for s in &c.stops {
        s.cancel();
    }
}

/// A group started again after a streamed snapshot failed to install (its data cleared)
/// answers the writes that waited in it "unknown", as a group dropped does: the core's record
/// of them went with the group it removed.
#[tokio::test]
async fn a_write_waiting_in_a_group_restarted_after_a_failed_install_is_answered_unknown() {
    let c = cluster();
    let leader = c.leader(None, Duration::from_secs(5)).await;
    c.handles[leader].propose(RANGE, put("k")).await.unwrap();
    // Cut off, the leader holds its next write without a majority to commit it.
    c.cut.lock().unwrap().push(c.names[leader].clone());
    let waiting = c.handles[leader].propose(RANGE, put("waits"));
    tokio::pin!(waiting);
    let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
    assert!(early.is_err(), "answered before the restart: {early:?}");
    c.handles[leader]
        .inbox
        .send(Input::InstallFailed { range: RANGE })
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert_eq!(answer, Ok(Err(Refused::Unknown(RANGE))));
    for s in &c.stops {
        s.cancel();
    }
}

/// What node `i` publishes as finished, polled until `wanted` or `within`.
async fn finished_as(c: &Cluster, i: usize, wanted: &[Finished], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let mut finished = c.handles[i].finished();
    loop {
        if finished.borrow_and_update().as_slice() == wanted {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "{} publishes {:?}, not {wanted:?}",
            c.names[i],
            *finished.borrow()
        );
        let _ = tokio::time::timeout(left, finished.changed()).await;
    }
}

/// The configuration node `i` applied, as its store holds it.
fn conf_of(stores: &[Store], i: usize) -> raft::prelude::ConfState {
    let group = stores[i].group(RANGE, Generation::LEGACY, None).unwrap();
    raft::Storage::initial_state(&group).unwrap().conf_state
}

/// Moves the range into n1 alone by a table of `version` (its generations from `prev`, when
/// given), handed to every node; returns once n1 has sealed the group and says so: the
/// table, n1's entry, and what n1 publishes.
async fn sealed_onto_n1(
    c: &Cluster,
    version: u64,
    prev: Option<&RoutingTable>,
) -> (Arc<RoutingTable>, Entry, Finished) {
    let n1 = Entry::single(b'a', b'z', c.names[0].clone());
    let mut table = RoutingTable::new(all_three(c), version, "test")
        .unwrap()
        .with_moves(vec![n1.clone()])
        .unwrap();
    if let Some(prev) = prev {
        table = table.with_generations(Some(prev));
    }
    let table = Arc::new(table);
    c.set_table(&table);
    let sealed = Finished {
        entry: n1.clone(),
        ended: Some(Generation::LEGACY),
    };
    finished_as(c, 0, std::slice::from_ref(&sealed), Duration::from_secs(20)).await;
    (table, n1, sealed)
}

/// The coordinator's table finishing `into` with n1's seal, handed to every node; returns
/// once every node has dropped the group.
async fn finished_onto_n1(c: &Cluster, stores: &[Store], into: &RoutingTable, n1: &Entry) -> Arc<RoutingTable> {
    let planned = into
        .finish_move(n1, Some(Generation::LEGACY), (0, ""))
        .unwrap()
        .unwrap();
    let done = Arc::new(
        RoutingTable::new(planned.entries, into.version() + 1, "test")
            .unwrap()
            .with_generations(Some(into)),
    );
    assert!(done.has_ended(b'a', b'z', Generation::LEGACY));
    c.set_table(&done);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stores.iter().any(|s| !s.groups().unwrap().is_empty()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group was not dropped everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done
}

/// A move into one node ends the range's group there: before the node says so, it seals the
/// group (`store::ended`), which then never changes its configuration again. A table of
/// another coordinator that re-aims the move after the seal (a partition) moves nothing:
/// the group's data stays on that node alone, which says the history ended onto it, and
/// writes go on there. Before, the group followed the re-aimed move while the stale
/// coordinator's table said its history had ended, and a later birth of the range retired
/// the copies holding the writes acknowledged since.
#[tokio::test]
async fn a_group_sealed_onto_one_node_never_follows_a_re_aimed_move() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    c.leader(None, Duration::from_secs(5)).await;
    let (_, _, sealed) = sealed_onto_n1(&c, 2, None).await;
    assert_eq!(
        stores[0].ended(RANGE).unwrap(),
        vec![Ended {
            generation: Generation::LEGACY,
            here: true
        }]
    );
    // The other coordinator's table, which re-aimed the move at n2 and n3.
    let re_aimed = Arc::new(
        RoutingTable::new(all_three(&c), 3, "other")
            .unwrap()
            .with_moves(vec![Entry::new(b'a', b'z', c.names[1..].to_vec()).unwrap()])
            .unwrap(),
    );
    c.set_table(&re_aimed);
    // Taken after the table (the driver looks at tables before its inbox).
    c.handles[0].propose(RANGE, put("after")).await.unwrap();
    finished_as(&c, 0, std::slice::from_ref(&sealed), Duration::from_secs(1)).await;
    // A leader with a target takes its first step within a tick or two: watched for a
    // second (twenty ticks), the configuration stays n1 alone.
    let n1_id = node_id(c.names[0].as_str());
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        let conf = conf_of(&stores, 0);
        assert_eq!(
            (conf.voters.as_slice(), conf.learners.as_slice()),
            (&[n1_id][..], &[][..]),
            "the sealed group changed its configuration"
        );
        c.handles[0].propose(RANGE, put("more")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &c.stops {
        s.cancel();
    }
}

/// Once a history ended (the table says so) and every node dropped its group, a table that
/// runs that history again (another coordinator's, kept by gossip over the one that ended
/// it) finds no replica to bootstrap it: each starts it empty, asking no one whether the
/// range is new, and answers no one who asks (agreeing it was new, they would bootstrap it
/// over nothing, and reads would miss every write of the range). The node the history was
/// sealed onto says so, for the table to name it again.
#[tokio::test]
async fn a_history_that_ended_is_not_started_again_over_nothing() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    let leader = c.leader(None, Duration::from_secs(5)).await;
    c.handles[leader].propose(RANGE, put("kept")).await.unwrap();
    let first = RoutingTable::new(all_three(&c), 1, "test").unwrap();
    let (into_n1, n1, sealed) = sealed_onto_n1(&c, 2, Some(&first)).await;
    // The coordinator's finished table: every node drops the group, n1 keeping the data.
    finished_onto_n1(&c, &stores, &into_n1, &n1).await;
    for (i, store) in stores.iter().enumerate() {
        let here = i == 0;
        assert_eq!(
            store.ended(RANGE).unwrap(),
            vec![Ended {
                generation: Generation::LEGACY,
                here
            }],
            "node {i}"
        );
    }
    // The other lineage's table, running the ended history on all three (newer: kept).
    let again = Arc::new(RoutingTable::new(all_three(&c), 4, "other").unwrap());
    c.set_table(&again);
    finished_as(&c, 0, std::slice::from_ref(&sealed), Duration::from_secs(5)).await;
    // Asking one another whether the range is new, the three would bootstrap it within an
    // election or two (about a second): watched for two, no group of it has a leader, and
    // n1 still holds the range's data.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        for (i, h) in c.handles.iter().enumerate() {
            let leader = h.leaders().borrow().get(&RANGE).and_then(|v| v.leader.clone());
            assert_eq!(leader, None, "node {i} sees the ended history running again");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        stores[0].get(b"apples", b"kept").await.unwrap(),
        crate::store::Lookup::Found(_)
    ));
    // A table that gives the range's bytes to another node: n1 no longer says the history
    // ended onto it (the bytes may leave it from there).
    let elsewhere =
        Arc::new(RoutingTable::new(vec![Entry::single(b'a', b'z', c.names[1].clone())], 5, "other").unwrap());
    c.set_table(&elsewhere);
    let given_up = vec![Ended {
        generation: Generation::LEGACY,
        here: false,
    }];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stores[0].ended(RANGE).unwrap() != given_up {
        assert!(tokio::time::Instant::now() < deadline, "n1 still claims the history");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    finished_as(&c, 0, &[], Duration::from_secs(5)).await;
    for s in &c.stops {
        s.cancel();
    }
}

/// A group sealed onto this node holds the range's only copy: a table that names this node
/// nowhere for the range (another coordinator's, which never saw the move) does not make it
/// drop the group or the data, however it was named before; it says the history ended here.
#[tokio::test]
async fn a_group_sealed_here_is_kept_with_its_data_by_a_table_that_names_other_nodes() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    let leader = c.leader(None, Duration::from_secs(5)).await;
    c.handles[leader].propose(RANGE, put("kept")).await.unwrap();
    let (_, _, sealed) = sealed_onto_n1(&c, 2, None).await;
    // The range's group on n2 and n3 alone, in a table of the other lineage.
    let others =
        Arc::new(RoutingTable::new(vec![Entry::new(b'a', b'z', c.names[1..].to_vec()).unwrap()], 3, "other").unwrap());
    c.set_table(&others);
    c.handles[0].propose(RANGE, put("after")).await.unwrap();
    finished_as(&c, 0, std::slice::from_ref(&sealed), Duration::from_secs(1)).await;
    // `settle` looks every ten ticks: watched for a second, n1 keeps the group and the data.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        assert_eq!(stores[0].groups().unwrap(), vec![RANGE], "n1 dropped the sealed group");
        for key in ["kept", "after"] {
            assert!(matches!(
                stores[0].get(b"apples", key.as_bytes()).await.unwrap(),
                crate::store::Lookup::Found(_)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &c.stops {
        s.cancel();
    }
}

/// A seal says the history's data is this node's bytes of the range: once another history of
/// the range starts here (born over those bytes, or taking a snapshot into them), the seal
/// is given up, and a table that runs the sealed history again hears no claim from it.
#[tokio::test]
async fn a_seal_is_given_up_when_another_history_of_the_range_starts_here() {
    let stores: [Store; 3] = std::array::from_fn(|_| Store::in_memory());
    let c = cluster_on(stores.clone());
    c.leader(None, Duration::from_secs(5)).await;
    let first = RoutingTable::new(all_three(&c), 1, "test").unwrap();
    let (into_n1, n1, _) = sealed_onto_n1(&c, 2, Some(&first)).await;
    let done = finished_onto_n1(&c, &stores, &into_n1, &n1).await;
    // The range replicated again: a new history, started on n1 over its bytes.
    let reborn = Arc::new(
        RoutingTable::new(all_three(&c), 4, "test")
            .unwrap()
            .with_generations(Some(&done)),
    );
    assert_ne!(reborn.generation_of(b'a', b'z'), Generation::LEGACY);
    c.set_table(&reborn);
    let given_up = vec![Ended {
        generation: Generation::LEGACY,
        here: false,
    }];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stores[0].ended(RANGE).unwrap() != given_up {
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1 still claims the ended history"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other lineage's table, running the sealed history again: watched for a second
    // (claims are published at every tick), no claim.
    let again = Arc::new(RoutingTable::new(all_three(&c), 5, "other").unwrap());
    c.set_table(&again);
    let finished = c.handles[0].finished();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            *finished.borrow(),
            vec![],
            "n1 claims a history its bytes are no longer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &c.stops {
        s.cancel();
    }
}
