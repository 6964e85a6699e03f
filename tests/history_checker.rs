//! Issue 25's history recorder and linearizability checker, tested on histories known to be
//! good and known to be bad, by properties against a sequential register and a brute-force
//! checker, and once against a real single node (which must be linearizable).

mod common;
#[path = "common/history/mod.rs"]
mod history;
/// Generated histories: against a sequential register, and against a brute-force search.
#[path = "history_checker/properties.rs"]
mod properties;

use std::time::Duration;

use history::{Budget, History, Op, Outcome, Record, check, read_jsonl, search_key, write_jsonl};

/// Hand-written histories: times in milliseconds, recorded in nanoseconds.
#[derive(Default)]
struct Hand {
    records: Vec<Record>,
}

impl Hand {
    fn add(&mut self, client: usize, op: Op, from: u64, to: Option<u64>, outcome: Outcome) -> &mut Self {
        self.records.push(Record {
            id: self.records.len(),
            client,
            op,
            invoked: from * 1_000_000,
            completed: to.map(|t| t * 1_000_000),
            outcome,
        });
        self
    }

    fn put(&mut self, client: usize, key: &str, value: &str, from: u64, to: u64) -> &mut Self {
        self.add(client, Op::put(key, value), from, Some(to), Outcome::ok())
    }

    /// A put whose client gave up at `to`, not knowing whether it took effect.
    fn put_unknown(&mut self, client: usize, key: &str, value: &str, from: u64, to: u64) -> &mut Self {
        self.add(
            client,
            Op::put(key, value),
            from,
            Some(to),
            Outcome::indeterminate("timed out"),
        )
    }

    fn put_failed(&mut self, client: usize, key: &str, value: &str, from: u64, to: u64) -> &mut Self {
        self.add(client, Op::put(key, value), from, Some(to), Outcome::failed("refused"))
    }

    fn delete(&mut self, client: usize, key: &str, from: u64, to: u64) -> &mut Self {
        self.add(client, Op::delete(key), from, Some(to), Outcome::ok())
    }

    fn get(&mut self, client: usize, key: &str, found: Option<&str>, from: u64, to: u64) -> &mut Self {
        self.add(client, Op::get(key), from, Some(to), Outcome::read(found))
    }

    fn check(&self) -> history::Report {
        check(&self.records, Budget::default())
    }
}

#[track_caller]
fn assert_linearizable(hand: &Hand) {
    let report = hand.check();
    assert!(report.is_linearizable(), "{report}");
    assert!(report.lost_writes.is_empty(), "{report}");
}

/// Asserts `key` is not linearizable and returns the explanation, printed.
#[track_caller]
fn assert_violation(hand: &Hand, key: &str) -> String {
    let report = hand.check();
    let found = report.violations().into_iter().find(|e| e.key == key);
    let explanation = found.unwrap_or_else(|| panic!("expected a violation on {key}: {report}"));
    explanation.to_string()
}

// ---- known good ----

#[test]
fn a_sequential_history_is_linearizable() {
    let mut h = Hand::default();
    h.get(1, "k", None, 0, 1)
        .put(1, "k", "a", 2, 3)
        .get(2, "k", Some("a"), 4, 5)
        .put(2, "k", "b", 6, 7)
        .get(1, "k", Some("b"), 8, 9)
        .delete(1, "k", 10, 11)
        .get(2, "k", None, 12, 13)
        .put(3, "other", "x", 0, 13)
        .get(3, "other", Some("x"), 14, 15);
    assert_linearizable(&h);
    assert!(h.check().unread_keys.is_empty());
}

#[test]
fn a_get_overlapping_a_put_may_see_either_value() {
    for seen in [Some("a"), Some("b")] {
        let mut h = Hand::default();
        h.put(1, "k", "a", 0, 1).put(1, "k", "b", 2, 10).get(2, "k", seen, 3, 8);
        assert_linearizable(&h);
    }
    // Two overlapping puts, then reads that agree on the order b, a.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 10)
        .put(2, "k", "b", 0, 10)
        .get(3, "k", Some("b"), 1, 2)
        .get(3, "k", Some("a"), 11, 12);
    assert_linearizable(&h);
}

#[test]
fn an_indeterminate_put_may_or_may_not_have_taken_effect() {
    // It did, even long after its client gave up.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .put_unknown(2, "k", "b", 2, 3)
        .get(1, "k", Some("a"), 4, 5)
        .get(1, "k", Some("b"), 20, 21);
    assert_linearizable(&h);
    // It did not.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .put_unknown(2, "k", "b", 2, 3)
        .get(1, "k", Some("a"), 20, 21);
    assert_linearizable(&h);
    // One never completed at all (the test ended first).
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .add(2, Op::put("k", "b"), 2, None, Outcome::indeterminate("no answer"))
        .get(1, "k", Some("b"), 20, 21);
    assert_linearizable(&h);
}

#[test]
fn failed_operations_and_indeterminate_gets_are_left_out() {
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .put_failed(2, "k", "b", 2, 3)
        .add(3, Op::get("k"), 2, Some(3), Outcome::indeterminate("connection lost"))
        .get(1, "k", Some("a"), 4, 5);
    assert_linearizable(&h);
}

// ---- known bad ----

#[test]
fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .put(1, "k", "b", 2, 3)
        .get(2, "k", Some("a"), 4, 5);
    let why = assert_violation(&h, "k");
    assert!(why.contains(r#"get at [4.000 ms, 5.000 ms] returned "a""#), "{why}");
    assert!(why.contains(r#"a put of "b" at [2.000 ms, 3.000 ms]"#), "{why}");
}

#[test]
fn a_read_of_a_value_never_written_is_a_violation() {
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1).get(2, "k", Some("ghost"), 4, 5);
    let why = assert_violation(&h, "k");
    assert!(
        why.contains(r#"returned "ghost", which no put of the key wrote"#),
        "{why}"
    );
    // Nor by a put that certainly failed.
    let mut h = Hand::default();
    h.put_failed(1, "k", "a", 0, 1).get(2, "k", Some("a"), 4, 5);
    assert_violation(&h, "k");
}

#[test]
fn a_read_from_the_future_is_a_violation() {
    let mut h = Hand::default();
    h.get(2, "k", Some("a"), 0, 1).put(1, "k", "a", 2, 3);
    let why = assert_violation(&h, "k");
    assert!(
        why.contains("written by a put that began at 2.000 ms, after the get had ended"),
        "{why}"
    );
}

#[test]
fn a_read_going_back_in_time_is_a_violation() {
    // Either order of the puts would do, but the reads see b, then a: only the two gets'
    // order shows the violation.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 10)
        .put(2, "k", "b", 0, 10)
        .get(3, "k", Some("b"), 11, 12)
        .get(3, "k", Some("a"), 13, 14);
    let why = assert_violation(&h, "k");
    assert!(
        why.contains(r#"get at [13.000 ms, 14.000 ms] returned "a""#)
            && why.contains(r#"before a get that found "b" at [11.000 ms, 12.000 ms] began"#),
        "{why}"
    );
}

#[test]
fn a_read_of_nothing_after_an_acknowledged_put_is_a_violation() {
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .delete(3, "k", 0, 1)
        .get(2, "k", None, 4, 5)
        .put(1, "k", "b", 6, 7);
    assert_linearizable(&h); // the delete may come after the put
    let mut h = Hand::default();
    h.delete(3, "k", 0, 1).put(1, "k", "a", 2, 3).get(2, "k", None, 4, 5);
    let why = assert_violation(&h, "k");
    assert!(why.contains("no delete of the key could fall between them"), "{why}");
}

/// No pattern sees this one; only the search does: two overlapping puts, and reads that see
/// a, then b, then a again (a is written once).
#[test]
fn a_violation_only_the_search_finds_is_explained_by_its_reads() {
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 100)
        .put(2, "k", "b", 0, 100)
        .get(3, "k", Some("a"), 10, 20)
        .get(3, "k", Some("b"), 30, 40)
        .get(3, "k", Some("a"), 50, 60)
        .get(4, "k", Some("a"), 10, 20) // not needed for the contradiction
        .get(4, "k", Some("b"), 90, 99);
    assert_eq!(search_key(&h.records, Budget::default()), Some(false));
    let report = h.check();
    let explanation = report.violations()[0].clone();
    assert!(
        explanation.why.contains("3 reads that cannot all be satisfied"),
        "{explanation}"
    );
    assert_eq!(explanation.ops.len(), 5, "{explanation}");
}

#[test]
fn a_lost_acknowledged_write_is_reported() {
    // Acknowledged, never overwritten, and the final read finds the value before it.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .put(1, "k", "b", 2, 3)
        .get(2, "k", Some("a"), 10, 11);
    let report = h.check();
    assert!(!report.is_ok());
    let lost = &report.lost_writes[0];
    assert_eq!(lost.lost.len(), 1);
    assert_eq!(lost.lost[0].op, Op::put("k", "b"));
    assert!(lost.why.contains(r#"found "a""#), "{}", lost.why);
    // Or finds nothing.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1).get(2, "k", None, 10, 11);
    let report = h.check();
    assert_eq!(report.lost_writes.len(), 1, "{report}");
    // Overlapping acknowledged puts: either may win, but one of them must be there.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 5)
        .put(2, "k", "b", 1, 6)
        .get(3, "k", Some("a"), 10, 11);
    assert!(h.check().is_ok());
    // An indeterminate put may win too; a key with no final read is named as unchecked.
    let mut h = Hand::default();
    h.put(1, "k", "a", 0, 1)
        .put_unknown(2, "k", "b", 2, 3)
        .get(3, "k", Some("b"), 10, 11)
        .put(1, "j", "x", 0, 1);
    let report = h.check();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.unread_keys, ["j"]);
}

#[test]
fn a_search_over_its_budget_says_unknown_not_linearizable() {
    // Twelve overlapping acknowledged puts and a read of one of them: the search tries
    // orders of the puts until it finds one that ends with the value read.
    let mut h = Hand::default();
    for i in 0..12 {
        h.put(i, "k", &format!("v{i}"), 0, 100);
    }
    h.get(30, "k", Some("v3"), 101, 102);
    let report = check(&h.records, Budget { steps_per_key: 5 });
    assert!(!report.is_linearizable());
    assert_eq!(report.unknown_keys(), ["k"]);
    assert!(report.violations().is_empty());
    assert!(report.to_string().contains("unknown after 5 steps"), "{report}");
    assert!(h.check().is_linearizable());
}

#[test]
fn indeterminate_writes_nobody_read_cost_the_search_nothing() {
    // Sixty timed-out puts overlapping everything after them would be 2^60 subsets to the
    // plain search; none was read, so none needs a place.
    let mut h = Hand::default();
    h.put(0, "k", "a", 0, 1);
    for i in 0..60 {
        h.put_unknown(i, "k", &format!("lost{i}"), 2 + i as u64, 3 + i as u64);
        h.add(
            i,
            Op::delete("k"),
            2 + i as u64,
            Some(3 + i as u64),
            Outcome::indeterminate("timed out"),
        );
    }
    h.get(99, "k", Some("a"), 100, 101);
    let report = check(&h.records, Budget { steps_per_key: 1_000 });
    assert!(report.is_linearizable(), "{report}");
}

#[test]
fn indeterminate_puts_that_were_read_take_effect_before_their_readers() {
    // Forty timed-out puts, each read soon after: each overlaps everything after it, yet the
    // search, which tries calls in time order, places each just before its read at once.
    let mut h = Hand::default();
    for i in 0..40 {
        let t = 10 * i as u64;
        h.put_unknown(i, "k", &format!("v{i}"), t, t + 1);
        h.get(i, "k", Some(&format!("v{i}")), t + 5, t + 6);
    }
    assert_eq!(search_key(&h.records, Budget { steps_per_key: 10_000 }), Some(true));
    // The first read of v1 ended before its put began: no bound makes that right.
    h.get(99, "k", Some("v1"), 0, 1);
    assert_eq!(search_key(&h.records, Budget::default()), Some(false));
}

#[test]
fn indeterminate_deletes_are_interchangeable_to_the_search() {
    // Forty timed-out deletes, then a read that none of them may precede, then a read of
    // nothing that one of them explains. The search places deletes before the first read in
    // every way it can before giving that up; told apart, the deletes would make that 2^40
    // configurations (a fault test's key ran out of budget so, after a partition healed).
    let mut h = Hand::default();
    h.put(0, "k", "a", 0, 1);
    for i in 0..40 {
        h.add(
            i,
            Op::delete("k"),
            2 + i as u64,
            Some(3 + i as u64),
            Outcome::indeterminate("timed out"),
        );
    }
    h.get(50, "k", Some("a"), 100, 101);
    h.get(50, "k", None, 200, 201);
    assert_eq!(search_key(&h.records, Budget { steps_per_key: 100_000 }), Some(true));
    // And a history no delete can save is still refused: "a" read after the read of nothing.
    h.get(51, "k", Some("a"), 300, 301);
    assert_eq!(search_key(&h.records, Budget { steps_per_key: 100_000 }), Some(false));
}

// ---- the recorder ----

#[test]
fn the_recorder_orders_events_as_they_happened_and_saves_them_with_the_seed() {
    let history = History::new(42);
    std::thread::scope(|s| {
        for client in 0..4 {
            let history = &history;
            s.spawn(move || {
                for i in 0..50 {
                    let value = format!("c{client}.{i}");
                    let id = history.invoke(client, Op::put("k", &value));
                    history.complete(id, Outcome::ok());
                    let id = history.invoke(client, Op::get("k"));
                    history.complete(id, Outcome::read(Some(&value)));
                }
            });
        }
    });
    let unfinished = history.invoke(9, Op::delete("k"));
    let records = history.records();
    assert_eq!(records.len(), 401);
    let mut times: Vec<u64> = records
        .iter()
        .map(|r| r.invoked)
        .chain(records.iter().filter_map(|r| r.completed))
        .collect();
    let n = times.len();
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), n, "every timestamp is distinct");
    for r in &records {
        assert!(r.completed.is_none_or(|c| c > r.invoked));
    }
    assert_eq!(records[400].outcome, Outcome::indeterminate("no outcome recorded"));

    let mut saved = Vec::new();
    history.write_jsonl(&mut saved).unwrap();
    let text = String::from_utf8(saved.clone()).unwrap();
    assert!(text.starts_with("{\"seed\":42}\n"), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .contains(r#""op":"put","key":"k","value":"c"#),
        "{text}"
    );
    let (seed, loaded) = read_jsonl(saved.as_slice()).unwrap();
    assert_eq!((seed, &loaded), (42, &records));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    history.save(&path).unwrap();
    let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    assert_eq!(read_jsonl(file).unwrap(), (42, records));
    history.complete(unfinished, Outcome::ok());
}

// ---- against a real node ----

/// A tiny seeded generator (splitmix64), so a run replays from its printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[test]
fn eight_clients_on_one_in_memory_node_make_a_linearizable_history() {
    use kvnode::client::{Client, Target};
    use kvnode::secret::SecretSource;
    use kvnode::wire::{BucketOp, BucketRequest, Request};
    use tokio::time::Instant;

    let seed = std::env::var("KVNODE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
    println!("seed {seed} (set KVNODE_TEST_SEED to replay)");
    let home = common::Home::new();
    let node = home.start("lin", &["--in-memory"]);
    let secret = SecretSource::Home(home.secret_path()).load().unwrap();
    let target = Target {
        addr: node.addr(),
        name: None,
    };
    let history = History::new(seed);
    let run_for = Duration::from_secs(2);
    std::thread::scope(|s| {
        for client in 0..8 {
            let (history, secret, target) = (&history, secret.clone(), target.clone());
            s.spawn(move || {
                let mut rng = Rng(seed ^ (client as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let deadline = Instant::now() + common::PATIENCE;
                    let conn = Client::connect_with(&secret, "checker", &target, deadline)
                        .await
                        .unwrap();
                    let stop = Instant::now() + run_for;
                    let mut i = 0;
                    while Instant::now() < stop {
                        let key = format!("k{}", rng.below(5));
                        let (op, bucket_op) = match rng.below(10) {
                            0..=3 => {
                                let value = format!("c{client}.{i}");
                                let bucket_op = BucketOp::Put {
                                    key: key.clone().into_bytes(),
                                    value: value.clone().into_bytes(),
                                };
                                (Op::put(&key, &value), bucket_op)
                            }
                            4 => (
                                Op::delete(&key),
                                BucketOp::Delete {
                                    key: key.clone().into_bytes(),
                                },
                            ),
                            _ => (
                                Op::get(&key),
                                BucketOp::Get {
                                    key: key.clone().into_bytes(),
                                },
                            ),
                        };
                        let request = Request::Bucket(BucketRequest {
                            bucket: b"lin".to_vec(),
                            op: bucket_op,
                            path: vec![],
                        });
                        let id = history.invoke(client, op.clone());
                        let answer = conn.call_within(request, Duration::from_secs(5)).await;
                        history.complete(id, history::outcome_of(&op, &answer));
                        i += 1;
                    }
                    conn.close().await;
                });
            });
        }
    });
    // The final reads, once every client is done: each key as the node keeps it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = Client::connect_with(&secret, "checker", &target, Instant::now() + common::PATIENCE)
            .await
            .unwrap();
        for k in 0..5 {
            let key = format!("k{k}");
            let request = Request::Bucket(BucketRequest {
                bucket: b"lin".to_vec(),
                op: BucketOp::Get {
                    key: key.clone().into_bytes(),
                },
                path: vec![],
            });
            let id = history.invoke(8, Op::get(&key));
            let answer = conn.call_within(request, common::PATIENCE).await;
            history.complete(id, history::outcome_of(&Op::get(&key), &answer));
        }
        conn.close().await;
    });
    let records = history.records();
    let checking = std::time::Instant::now();
    let report = check(&records, Budget::default());
    println!("{report}checked in {:?}", checking.elapsed());
    let path = std::env::temp_dir().join(format!("kvnode-history-{seed}.jsonl"));
    if !report.is_ok() {
        history.save(&path).unwrap();
    }
    assert!(report.is_ok(), "history kept at {}:\n{report}", path.display());
    assert!(report.unread_keys.is_empty(), "{report}");
    assert!(records.len() >= 80, "only {} operations in {run_for:?}", records.len());
    assert!(
        records.iter().all(|r| matches!(r.outcome, Outcome::Ok { .. })),
        "a healthy node answers everything"
    );
    // The round trip through JSON Lines keeps the verdict.
    let mut saved = Vec::new();
    write_jsonl(seed, &records, &mut saved).unwrap();
    let (_, loaded) = read_jsonl(saved.as_slice()).unwrap();
    assert!(check(&loaded, Budget::default()).is_linearizable());
}

/// Checks a history a fault test kept: `CHECK_HISTORY=path cargo test --test history_checker
/// -- --ignored a_kept_history` (with `--release` for a long one).
#[test]
#[ignore = "checks the history named by CHECK_HISTORY"]
fn a_kept_history_is_linearizable_with_nothing_lost() {
    let path = std::env::var("CHECK_HISTORY").expect("CHECK_HISTORY names a history.jsonl a fault test kept");
    let file = std::io::BufReader::new(std::fs::File::open(&path).expect("open CHECK_HISTORY"));
    let (seed, records) = read_jsonl(file).expect("a history.jsonl");
    let started = std::time::Instant::now();
    let report = check(&records, Budget::default());
    println!("seed {seed}: checked in {:?}\n{report}", started.elapsed());
    assert!(report.is_ok(), "{report}");
}
