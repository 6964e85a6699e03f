//! Properties of the checker on generated histories: a sequential register run with random
//! overlap is always accepted, and rejected once one read is made impossible; on small random
//! histories the checker agrees with a brute-force search of every order.

use proptest::prelude::*;

use crate::history::{Budget, Op, Outcome, Record, check, search_key};

/// One generated operation: what, when, and how it ends.
#[derive(Clone, Debug)]
struct Planned {
    kind: u8,    // 0..=3 put, 4 delete, 5..=9 get
    key: u8,     // 0..3
    before: u64, // how long before its linearization point it is invoked
    after: u64,  // how long after it completes
    fate: u8,    // 0..=79 ok, 80..=89 indeterminate and applied, 90..=94 indeterminate and not, else failed
}

fn planned() -> impl Strategy<Value = Planned> {
    (0u8..10, 0u8..3, 0u64..150, 1u64..150, 0u8..100).prop_map(|(kind, key, before, after, fate)| Planned {
        kind,
        key,
        before,
        after,
        fate,
    })
}

/// Runs the plan on a sequential register, operation i taking effect at 200 + 100 i, each
/// invoked and completed around that point (so neighbours overlap): linearizable by
/// construction.
fn run_sequentially(plan: &[Planned]) -> Vec<Record> {
    let mut state: [Option<String>; 3] = Default::default();
    let mut records = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let point = 200 + 100 * i as u64;
        let key = format!("k{}", p.key);
        let slot = &mut state[p.key as usize];
        let (op, applies) = match p.kind {
            0..=3 => (Op::put(&key, &format!("v{i}")), p.fate < 90),
            4 => (Op::delete(&key), p.fate < 90),
            _ => (Op::get(&key), false),
        };
        let outcome = match (&op, p.fate) {
            (Op::Get { .. }, 0..=89) => Outcome::read(slot.as_deref()),
            (Op::Get { .. }, _) => Outcome::indeterminate("timed out"),
            (_, 0..=79) => Outcome::ok(),
            (_, 80..=94) => Outcome::indeterminate("timed out"),
            _ => Outcome::failed("refused"),
        };
        if applies {
            *slot = match &op {
                Op::Put { value, .. } => Some(value.clone()),
                _ => None,
            };
        }
        records.push(Record {
            id: i,
            client: i % 8,
            op,
            invoked: point - p.before,
            completed: Some(point + p.after),
            outcome,
        });
    }
    records
}

fn of_key(records: &[Record], key: &str) -> Vec<Record> {
    records.iter().filter(|r| r.op.key() == key).cloned().collect()
}

/// Replaces one successful get's value with one it surely cannot have read: the value of a
/// put that began after the get ended, or of an acknowledged put that an acknowledged write
/// certainly followed before the get began; if the history has no such pair, a put of a new
/// value is added after everything and the last get made to read it.
fn make_one_read_impossible(records: &mut Vec<Record>, choice: usize) -> String {
    let acked = |r: &Record| matches!(r.outcome, Outcome::Ok { .. });
    let mut pairs = Vec::new();
    for (g, get) in records.iter().enumerate() {
        let (Op::Get { key }, Outcome::Ok { read }) = (&get.op, &get.outcome) else {
            continue;
        };
        for put in records.iter() {
            let Op::Put { key: k, value } = &put.op else { continue };
            if k != key || read.as_ref() == Some(value) || matches!(put.outcome, Outcome::Failed { .. }) {
                continue;
            }
            let from_the_future = put.invoked > get.completed.unwrap();
            let overwritten = acked(put)
                && records.iter().any(|w| {
                    w.op.is_write()
                        && w.op.key() == key
                        && acked(w)
                        && put.completed.unwrap() < w.invoked
                        && w.completed.unwrap() < get.invoked
                });
            if from_the_future || overwritten {
                pairs.push((g, value.clone()));
            }
        }
    }
    if pairs.is_empty() {
        let end = records.iter().filter_map(|r| r.completed).max().unwrap_or(0);
        let key = "k0".to_string();
        records.push(Record {
            id: records.len(),
            client: 0,
            op: Op::get(&key),
            invoked: end + 10,
            completed: Some(end + 20),
            outcome: Outcome::read(None),
        });
        records.push(Record {
            id: records.len(),
            client: 1,
            op: Op::put(&key, "late"),
            invoked: end + 30,
            completed: Some(end + 40),
            outcome: Outcome::ok(),
        });
        pairs.push((records.len() - 2, "late".to_string()));
    }
    let (g, value) = pairs[choice % pairs.len()].clone();
    records[g].outcome = Outcome::read(Some(&value));
    records[g].op.key().to_string()
}

/// Whether some order of `records` (one key) respects real time and a register: the
/// definition, tried exhaustively. Indeterminate writes may be left out; failed operations
/// and indeterminate gets are.
fn brute_force_linearizable(records: &[Record]) -> bool {
    let ops: Vec<&Record> = records
        .iter()
        .filter(|r| match r.outcome {
            Outcome::Failed { .. } => false,
            Outcome::Indeterminate { .. } => r.op.is_write(),
            Outcome::Ok { .. } => true,
        })
        .collect();
    let end = |r: &Record| match r.outcome {
        Outcome::Ok { .. } => r.completed.unwrap(),
        _ => u64::MAX,
    };
    fn extend(ops: &[&Record], done: &mut Vec<bool>, state: Option<String>, end: &dyn Fn(&Record) -> u64) -> bool {
        if (0..ops.len()).all(|i| done[i] || end(ops[i]) == u64::MAX) {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] || (0..ops.len()).any(|j| !done[j] && end(ops[j]) < ops[i].invoked) {
                continue;
            }
            let next = match (&ops[i].op, &ops[i].outcome) {
                (Op::Put { value, .. }, _) => Some(Some(value.clone())),
                (Op::Delete { .. }, _) => Some(None),
                (Op::Get { .. }, Outcome::Ok { read }) => (*read == state).then(|| state.clone()),
                _ => unreachable!(),
            };
            if let Some(next) = next {
                done[i] = true;
                if extend(ops, done, next, end) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }
    extend(&ops, &mut vec![false; ops.len()], None, &end)
}

/// A small random history of one key, linearizable or not: values read are mostly ones
/// written, sometimes nothing or a value never written.
fn small_history() -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec((0u8..10, 0u64..20, 1u64..10, 0u8..100, 0usize..8), 1..7).prop_map(|ops| {
        ops.iter()
            .enumerate()
            .map(|(i, &(kind, from, long, fate, pick))| {
                let (op, outcome) = match kind {
                    0..=3 => (Op::put("k", &format!("v{i}")), Outcome::ok()),
                    4 => (Op::delete("k"), Outcome::ok()),
                    _ => {
                        let read = match pick {
                            0 => None,
                            7 => Some("never".to_string()),
                            p => Some(format!("v{}", p % 6)),
                        };
                        (Op::get("k"), Outcome::read(read.as_deref()))
                    }
                };
                let outcome = match fate {
                    0..=74 => outcome,
                    75..=89 => Outcome::indeterminate("timed out"),
                    _ => Outcome::failed("refused"),
                };
                Record {
                    id: i,
                    client: i,
                    op,
                    invoked: from,
                    completed: Some(from + long),
                    outcome,
                }
            })
            .collect()
    })
}

// 256 cases each; PROPTEST_CASES=N runs more.
proptest! {
    #[test]
    fn a_sequential_register_with_overlapping_operations_is_always_accepted(
        plan in prop::collection::vec(planned(), 1..60)
    ) {
        let records = run_sequentially(&plan);
        let report = check(&records, Budget::default());
        prop_assert!(report.is_linearizable(), "{}", report);
        for key in ["k0", "k1", "k2"] {
            prop_assert_eq!(search_key(&of_key(&records, key), Budget::default()), Some(true));
        }
    }

    #[test]
    fn the_same_with_one_impossible_read_is_always_rejected(
        plan in prop::collection::vec(planned(), 1..60),
        choice in 0usize..1000,
    ) {
        let mut records = run_sequentially(&plan);
        let key = make_one_read_impossible(&mut records, choice);
        let report = check(&records, Budget::default());
        let violation = report.violations().into_iter().find(|e| e.key == key);
        prop_assert!(violation.is_some(), "{}", report);
        // Explained by the few operations that prove it, not by the whole history.
        let explanation = violation.unwrap();
        prop_assert!(explanation.ops.len() <= 3, "{}", explanation);
        // The search alone, without the shapes the explanation knows, rejects it too.
        prop_assert_eq!(search_key(&of_key(&records, &key), Budget::default()), Some(false));
    }

    #[test]
    fn the_checker_agrees_with_a_brute_force_search_on_small_histories(records in small_history()) {
        let expected = brute_force_linearizable(&records);
        prop_assert_eq!(search_key(&records, Budget::default()), Some(expected));
        let report = check(&records, Budget::default());
        prop_assert_eq!(report.is_linearizable(), expected, "{}", report);
    }
}

#[test]
fn small_histories_are_linearizable_about_as_often_as_not() {
    // So that the brute-force comparison has teeth on both sides.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut yes, mut no) = (0, 0);
    for _ in 0..500 {
        let records = small_history().new_tree(&mut runner).unwrap().current();
        if brute_force_linearizable(&records) {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(yes >= 100 && no >= 100, "{yes} linearizable, {no} not");
}
