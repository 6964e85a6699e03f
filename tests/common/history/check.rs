//! The checker: linearizability of a register per key, and acknowledged writes present at the
//! end. Reads only recorded histories; no clock, no network.
//!
//! Linearizability is the Wing–Gong search with Lowe's memoization, as Porcupine does it:
//! keys are checked one by one (a history is linearizable iff each key's is, P-compositionality);
//! calls and returns of a key sit in one list in time order; the search linearizes the first
//! call it can, lifting it out of the list, and backtracks when it meets a return whose
//! operation is not linearized yet. A configuration (the set of linearized operations and the
//! register's value) that was explored once is never explored again; the set is kept as a
//! 128-bit Zobrist hash (a wrapping sum of per-operation keys) rather than a bitset, so a step
//! costs O(1) whatever the history's length (two sets would have to collide in 128 bits to
//! be confused); indeterminate deletes share one key, since any two are interchangeable. A step budget per key
//! ends a pathological search with [`Verdict::Unknown`] rather than hanging.
//!
//! Why not `stateright`'s `LinearizabilityTester`: it is built for histories its own model
//! checker makes. Its search recurses once per operation and clones its maps at every step,
//! with no memoization (exponential in concurrent operations, and a stack as deep as the
//! history), no budget and no explanation of a failure; it orders operations by the sequence
//! of `on_invoke`/`on_return` calls rather than by timestamps, lets only a thread's last
//! operation be in flight (a client that times out and goes on would need a new thread id per
//! timeout), and has no notion of a definite failure. It would also bring the whole model
//! checker into the tests. The search here is ~100 lines.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::explain;
use super::{Op, Outcome, Record};

/// The completion time of an operation whose outcome is unknown: the end of time.
pub const NEVER: u64 = u64::MAX;

/// How much search one key may take.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Steps of the search (each tries one call or undoes one) before a key is `Unknown`.
    pub steps_per_key: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            steps_per_key: 2_000_000,
        }
    }
}

/// A register's value: an interned value of its key, or `None` for absent.
pub(super) type State = Option<u32>;

/// One operation of one key as the search sees it.
#[derive(Clone, Debug)]
pub(super) struct KeyOp {
    /// Index into the records checked.
    pub record: usize,
    pub call: u64,
    /// [`NEVER`] for an operation that may take effect at any time after its call.
    pub ret: u64,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A put (`Some`) or a delete (`None`); valid in any state.
    Write(State),
    /// A get that found this.
    Read(State),
}

impl KeyOp {
    pub fn is_determinate(&self) -> bool {
        self.ret != NEVER
    }
}

/// One key's operations, ready for the search, with the names of its interned values.
pub(super) struct KeyHistory {
    pub ops: Vec<KeyOp>,
    pub values: Vec<String>,
}

impl KeyHistory {
    pub fn value_name(&self, state: State) -> String {
        match state {
            Some(v) => format!("{:?}", self.values[v as usize]),
            None => "nothing".into(),
        }
    }
}

/// Splits `records` by key, leaving out what cannot matter: definite failures and
/// indeterminate gets.
pub(super) fn by_key(records: &[Record]) -> BTreeMap<String, KeyHistory> {
    let mut keys: BTreeMap<String, (KeyHistory, HashMap<String, u32>)> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        let (history, interned) = keys.entry(record.op.key().to_string()).or_insert_with(|| {
            (
                KeyHistory {
                    ops: Vec::new(),
                    values: Vec::new(),
                },
                HashMap::new(),
            )
        });
        let mut intern = |value: &str| -> u32 {
            *interned.entry(value.to_string()).or_insert_with(|| {
                history.values.push(value.to_string());
                (history.values.len() - 1) as u32
            })
        };
        let determinate = match &record.outcome {
            Outcome::Failed { .. } => continue,
            Outcome::Ok { .. } => true,
            Outcome::Indeterminate { .. } => false,
        };
        let kind = match (&record.op, &record.outcome) {
            (Op::Put { value, .. }, _) => Kind::Write(Some(intern(value))),
            (Op::Delete { .. }, _) => Kind::Write(None),
            (Op::Get { .. }, Outcome::Ok { read }) => Kind::Read(read.as_deref().map(&mut intern)),
            (Op::Get { .. }, _) => continue,
        };
        let ret = match (determinate, record.completed) {
            (true, Some(at)) => {
                assert!(at > record.invoked, "operation {} completed before it began", record.id);
                at
            }
            _ => NEVER,
        };
        history.ops.push(KeyOp {
            record: index,
            call: record.invoked,
            ret,
            kind,
        });
    }
    keys.into_iter()
        .map(|(k, (mut h, _))| {
            drop_unread_indeterminate_writes(&mut h.ops);
            settle_read_indeterminate_puts(&mut h.ops);
            (k, h)
        })
        .collect()
}

/// Makes an indeterminate put that a read found determinate, due by the end of its first
/// reader: values are unique, so the read proves the put took effect, and before the read
/// did. Left as it is when that reader ended before the put began (a violation the search
/// must find). Without a due time, such a put may be placed anywhere after its call, and the
/// search tries it at every place a dead end sends it back to.
fn settle_read_indeterminate_puts(ops: &mut [KeyOp]) {
    let mut first_read_end: HashMap<u32, u64> = HashMap::new();
    for o in ops.iter() {
        if let Kind::Read(Some(v)) = o.kind {
            let end = first_read_end.entry(v).or_insert(o.ret);
            *end = (*end).min(o.ret);
        }
    }
    for o in ops.iter_mut().filter(|o| !o.is_determinate()) {
        if let Kind::Write(Some(v)) = o.kind
            && let Some(&end) = first_read_end.get(&v)
            && end > o.call
        {
            o.ret = end;
        }
    }
}

/// Leaves out the indeterminate writes whose value no read found: in a linearization with
/// one, no read sits between it and the next write (it would have found its value), so the
/// same order without it is one too; and leaving it out never hurts. Many timed-out writes
/// overlapping everything after them would otherwise make the search try their subsets.
fn drop_unread_indeterminate_writes(ops: &mut Vec<KeyOp>) {
    let read: HashSet<State> = ops
        .iter()
        .filter_map(|o| match o.kind {
            Kind::Read(s) => Some(s),
            Kind::Write(_) => None,
        })
        .collect();
    ops.retain(|o| o.is_determinate() || matches!(o.kind, Kind::Write(s) if read.contains(&s)));
}

/// What the search found for one key.
#[derive(Clone, Debug)]
pub enum Verdict {
    Linearizable,
    Violation(Explanation),
    /// The budget ran out: neither proven nor refuted.
    Unknown {
        steps: u64,
    },
}

/// Why a key's history is not linearizable: the operations involved and the reason.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub key: String,
    pub ops: Vec<Record>,
    pub why: String,
}

/// An acknowledged write missing after healing.
#[derive(Clone, Debug)]
pub struct LostWrite {
    pub key: String,
    /// The final read that should have found it.
    pub final_read: Record,
    /// The acknowledged writes of which one should have been found.
    pub lost: Vec<Record>,
    pub why: String,
}

/// What [`check`] found.
#[derive(Clone, Debug)]
pub struct Report {
    pub ops: usize,
    pub keys: BTreeMap<String, Verdict>,
    pub lost_writes: Vec<LostWrite>,
    /// Keys with writes but no final read (a successful get that began after every write of
    /// the key had ended): their writes could not be checked for loss.
    pub unread_keys: Vec<String>,
}

impl Report {
    pub fn violations(&self) -> Vec<&Explanation> {
        self.keys
            .values()
            .filter_map(|v| match v {
                Verdict::Violation(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    pub fn unknown_keys(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Unknown { .. }))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// Every key proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.values().all(|v| matches!(v, Verdict::Linearizable))
    }

    /// Linearizable, and no acknowledged write lost.
    pub fn is_ok(&self) -> bool {
        self.is_linearizable() && self.lost_writes.is_empty()
    }
}

/// Checks every key: linearizability within `budget`, and the lost-write check.
pub fn check(records: &[Record], budget: Budget) -> Report {
    let mut keys = BTreeMap::new();
    for (key, history) in by_key(records) {
        let verdict = match explain::obvious_violation(&history) {
            Some((ops, why)) => Verdict::Violation(explanation(&key, &history, records, ops, why)),
            None => match search(&history.ops, budget.steps_per_key) {
                Search::Linearizable => Verdict::Linearizable,
                Search::Unknown { steps } => Verdict::Unknown { steps },
                Search::Violation => {
                    let (ops, why) = explain::minimal_core(&history, budget);
                    Verdict::Violation(explanation(&key, &history, records, ops, why))
                }
            },
        };
        keys.insert(key, verdict);
    }
    let (lost_writes, unread_keys) = lost_writes(records);
    Report {
        ops: records.len(),
        keys,
        lost_writes,
        unread_keys,
    }
}

fn explanation(key: &str, history: &KeyHistory, records: &[Record], ops: Vec<usize>, why: String) -> Explanation {
    let mut ops: Vec<Record> = ops.iter().map(|&i| records[history.ops[i].record].clone()).collect();
    ops.sort_by_key(|r| r.invoked);
    Explanation {
        key: key.to_string(),
        ops,
        why,
    }
}

/// The raw search on one key's records (all of one key), for tests of the search itself.
pub fn search_key(records: &[Record], budget: Budget) -> Option<bool> {
    let keys = by_key(records);
    assert!(keys.len() <= 1, "search_key takes one key's records");
    match keys.values().next().map(|h| search(&h.ops, budget.steps_per_key)) {
        None | Some(Search::Linearizable) => Some(true),
        Some(Search::Violation) => Some(false),
        Some(Search::Unknown { .. }) => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Search {
    Linearizable,
    Violation,
    Unknown { steps: u64 },
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// The Wing–Gong–Lowe search over one key's operations.
pub(super) fn search(ops: &[KeyOp], budget: u64) -> Search {
    let n = ops.len();
    // Entries: 0 is the head; an operation's call is 1 + 2i, its return 2 + 2i.
    let call_entry = |op: usize| 1 + 2 * op;
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, 1 + 2 * i));
        events.push((op.ret, true, 2 + 2 * i));
    }
    // By time; at equal times calls first, so operations that touch are concurrent.
    events.sort_unstable();
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = HEAD;
    for &(_, _, entry) in &events {
        next[last] = entry;
        prev[entry] = last;
        last = entry;
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        next[prev[e]] = next[e];
        if next[e] != NIL {
            prev[next[e]] = prev[e];
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        next[prev[e]] = e;
        if next[e] != NIL {
            prev[next[e]] = e;
        }
    };

    // Indeterminate deletes all share one key, and the set is a wrapping sum rather than a
    // xor: two of them are interchangeable (same effect, both may take effect at any time
    // after a call the search has passed), so a configuration needs only how many were used,
    // not which. Keyed apart, the search would try every subset of them.
    let mut zobrist = zobrist_keys(n + 1);
    let any_delete = zobrist[n];
    for (key, op) in zobrist.iter_mut().zip(ops) {
        if !op.is_determinate() && op.kind == Kind::Write(None) {
            *key = any_delete;
        }
    }
    let mut linearized: u128 = 0;
    let mut seen: HashSet<(u128, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    // Determinate operations not linearized yet; once none is left, the indeterminate rest
    // (writes, valid in any state) can all go at the end.
    let mut remaining = ops.iter().filter(|o| o.is_determinate()).count();
    let mut entry = next[HEAD];
    let mut steps = 0u64;
    while remaining > 0 {
        steps += 1;
        if steps > budget {
            return Search::Unknown { steps: budget };
        }
        assert_ne!(entry, NIL, "a determinate return is always ahead");
        let op = (entry - 1) / 2;
        if entry == call_entry(op) {
            let after = match ops[op].kind {
                Kind::Write(v) => Some(v),
                Kind::Read(v) => (v == state).then_some(state),
            };
            if let Some(after) = after
                && seen.insert((linearized.wrapping_add(zobrist[op]), after))
            {
                linearized = linearized.wrapping_add(zobrist[op]);
                stack.push((op, state));
                state = after;
                unlink(&mut next, &mut prev, entry);
                unlink(&mut next, &mut prev, entry + 1);
                if ops[op].is_determinate() {
                    remaining -= 1;
                }
                entry = next[HEAD];
            } else {
                entry = next[entry];
            }
        } else {
            // The return of an operation not linearized: what came before must change.
            let Some((undone, before)) = stack.pop() else {
                return Search::Violation;
            };
            linearized = linearized.wrapping_sub(zobrist[undone]);
            state = before;
            relink(&mut next, &mut prev, call_entry(undone) + 1);
            relink(&mut next, &mut prev, call_entry(undone));
            if ops[undone].is_determinate() {
                remaining += 1;
            }
            entry = next[call_entry(undone)];
        }
    }
    Search::Linearizable
}

/// A random 128-bit key per operation, from a fixed seed (splitmix64).
fn zobrist_keys(n: usize) -> Vec<u128> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

/// The lost-write check. For each key, its final read is the last successful get that began
/// after every write of the key had ended (indeterminate ones included). The last write in
/// any linearization is one that no acknowledged write strictly follows; so the final read
/// must find the value of one of those, or nothing if one of them is a delete or none of
/// the key's writes was acknowledged. Anything else means an acknowledged write was lost.
pub fn lost_writes(records: &[Record]) -> (Vec<LostWrite>, Vec<String>) {
    let mut per_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if !matches!(r.outcome, Outcome::Failed { .. }) {
            per_key.entry(r.op.key()).or_default().push(r);
        }
    }
    let (mut lost, mut unread) = (Vec::new(), Vec::new());
    for (key, ops) in per_key {
        let writes: Vec<&Record> = ops.iter().copied().filter(|r| r.op.is_write()).collect();
        if writes.is_empty() {
            continue;
        }
        let acked = |r: &Record| matches!(r.outcome, Outcome::Ok { .. });
        let end = |r: &Record| if acked(r) { r.completed.unwrap_or(NEVER) } else { NEVER };
        let writes_end = writes.iter().map(|r| r.completed.unwrap_or(NEVER)).max().unwrap();
        let final_read = ops
            .iter()
            .copied()
            .filter(|r| matches!(r.op, Op::Get { .. }) && acked(r) && r.invoked > writes_end)
            .max_by_key(|r| r.invoked);
        let Some(final_read) = final_read else {
            unread.push(key.to_string());
            continue;
        };
        let Outcome::Ok { read: found } = &final_read.outcome else {
            unreachable!()
        };
        let last: Vec<&Record> = writes
            .iter()
            .copied()
            .filter(|w| !writes.iter().any(|w2| acked(w2) && end(w) < w2.invoked))
            .collect();
        let value_of = |w: &Record| match &w.op {
            Op::Put { value, .. } => Some(value.clone()),
            _ => None,
        };
        let possible =
            last.iter().any(|w| value_of(w) == *found) || (found.is_none() && !writes.iter().any(|w| acked(w)));
        if possible {
            continue;
        }
        let lost_ones: Vec<Record> = last.iter().filter(|w| acked(w)).map(|w| (*w).clone()).collect();
        let names: Vec<String> = lost_ones.iter().map(describe).collect();
        let why = match found {
            None => format!(
                "the final read {} found nothing, but no delete can have been the last write, \
                 and {} was acknowledged with no acknowledged write after it",
                describe(final_read),
                names.join(" or ")
            ),
            Some(v) => match writes.iter().find(|w| value_of(w).as_ref() == Some(v)) {
                Some(old) => format!(
                    "the final read {} found {v:?}, written by {}, which an acknowledged write certainly \
                     followed; the last write was one of {}",
                    describe(final_read),
                    describe(old),
                    names.join(" or ")
                ),
                None => format!(
                    "the final read {} found {v:?}, which no put wrote; expected the value of {}",
                    describe(final_read),
                    names.join(" or ")
                ),
            },
        };
        lost.push(LostWrite {
            key: key.to_string(),
            final_read: final_read.clone(),
            lost: lost_ones,
            why,
        });
    }
    (lost, unread)
}

/// `put k="v" by client 2 at [1.000 ms, 2.000 ms]`, as explanations name an operation.
pub fn describe(r: &Record) -> String {
    let what = match &r.op {
        Op::Put { key, value } => format!("put {key}={value:?}"),
        Op::Get { key } => match &r.outcome {
            Outcome::Ok { read: Some(v) } => format!("get {key} -> {v:?}"),
            Outcome::Ok { read: None } => format!("get {key} -> nothing"),
            _ => format!("get {key}"),
        },
        Op::Delete { key } => format!("delete {key}"),
    };
    let end = match (&r.outcome, r.completed) {
        (Outcome::Ok { .. }, Some(at)) => ms(at),
        (Outcome::Failed { .. }, _) => "failed".into(),
        _ => "?".into(),
    };
    format!("{what} by client {} at [{}, {end}]", r.client, ms(r.invoked))
}

/// Nanoseconds as milliseconds with microseconds.
pub fn ms(ns: u64) -> String {
    format!("{}.{:03} ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} is not linearizable: {}", self.key, self.why)?;
        for r in &self.ops {
            writeln!(f, "    {}", describe(r))?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let violations = self.violations();
        writeln!(
            f,
            "{} operations on {} keys: {} not linearizable, {} unknown (budget ran out), {} lost writes, {} keys without a final read",
            self.ops,
            self.keys.len(),
            violations.len(),
            self.unknown_keys().len(),
            self.lost_writes.len(),
            self.unread_keys.len()
        )?;
        for e in violations {
            write!(f, "{e}")?;
        }
        for (key, verdict) in &self.keys {
            if let Verdict::Unknown { steps } = verdict {
                writeln!(f, "key {key:?}: unknown after {steps} steps")?;
            }
        }
        for l in &self.lost_writes {
            writeln!(f, "key {:?} lost an acknowledged write: {}", l.key, l.why)?;
        }
        Ok(())
    }
}
