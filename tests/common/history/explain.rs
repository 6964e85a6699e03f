//! Explaining a violation: the few operations of one key that no order can satisfy, and why.
//!
//! First the shapes a broken register usually shows, each a proof by itself (so they are
//! also checked before the search, and refute a history the search could not finish); then,
//! for anything else, the reads are whittled down while the search still fails.

use std::collections::HashMap;

use super::check::{Budget, KeyHistory, Kind, NEVER, Search, State, ms, search};

/// A violation of a shape that needs no search, as the operations (indices into
/// `history.ops`) and the reason; `None` if there is none of these shapes. O(n · values).
pub(super) fn obvious_violation(history: &KeyHistory) -> Option<(Vec<usize>, String)> {
    let ops = &history.ops;
    let name = |s: State| history.value_name(s);
    let at = |i: usize| span(ops[i].call, ops[i].ret);
    let mut writers: HashMap<State, Vec<usize>> = HashMap::new();
    let mut readers: HashMap<State, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op.kind {
            Kind::Write(s) => writers.entry(s).or_default().push(i),
            Kind::Read(s) => readers.entry(s).or_default().push(i),
        }
    }
    let earliest_end = EarliestEnd::new(history);
    let mut values: Vec<State> = readers.keys().copied().filter(Option::is_some).collect();
    values.sort_unstable();
    for found in values {
        let reads = &readers[&found];
        let p = match writers.get(&found).map(Vec::as_slice) {
            None => {
                let r = reads[0];
                return Some((
                    vec![r],
                    format!(
                        "get at {} returned {}, which no put of the key wrote (but for any that certainly failed)",
                        at(r),
                        name(found)
                    ),
                ));
            }
            Some(&[p]) => p,
            Some(_) => continue, // a value written twice: these shapes assume unique values
        };
        // Read before it was written.
        if let Some(&r) = reads.iter().find(|&&r| ops[p].call > ops[r].ret) {
            return Some((
                vec![r, p],
                format!(
                    "get at {} returned {}, but {} was written by a put that began at {}, after the get had ended",
                    at(r),
                    name(found),
                    name(found),
                    ms(ops[p].call)
                ),
            ));
        }
        // Something certainly after the put saw or made another value, and ended before
        // a read of the put's value began: the earliest-ending such thing is the best witness.
        let replaced = earliest_end.after(ops[p].ret, found);
        let last_read = reads.iter().copied().max_by_key(|&r| ops[r].call).unwrap();
        if let Some(x) = replaced
            && ops[x].ret < ops[last_read].call
        {
            let r = last_read;
            let what = match ops[x].kind {
                Kind::Write(None) => "a delete".to_string(),
                Kind::Write(w) => format!("a put of {}", name(w)),
                Kind::Read(s) => format!("a get that found {}", name(s)),
            };
            return Some((
                vec![p, x, r],
                format!(
                    "get at {} returned {}, but its put at {} was acknowledged before {what} at {} began, \
                     which ended before the get began: {} had been replaced, and no put writes it again",
                    at(r),
                    name(found),
                    at(p),
                    at(x),
                    name(found)
                ),
            ));
        }
    }
    // Found nothing: after a value was certainly there, some delete must fit between. The
    // witness that began last (among those over before the read) leaves the least room.
    let mut witnesses: Vec<usize> = (0..ops.len())
        .filter(|&w| matches!(ops[w].kind, Kind::Write(Some(_)) | Kind::Read(Some(_))) && ops[w].is_determinate())
        .collect();
    witnesses.sort_unstable_by_key(|&w| ops[w].ret);
    let mut latest_call: Vec<usize> = Vec::with_capacity(witnesses.len());
    for &w in &witnesses {
        let best = match latest_call.last() {
            Some(&b) if ops[b].call >= ops[w].call => b,
            _ => w,
        };
        latest_call.push(best);
    }
    let deletes = writers.get(&None).map(Vec::as_slice).unwrap_or(&[]);
    for &r in readers.get(&None).map(Vec::as_slice).unwrap_or(&[]) {
        let before = witnesses.partition_point(|&w| ops[w].ret < ops[r].call);
        if before == 0 {
            continue;
        }
        let w = latest_call[before - 1];
        if deletes
            .iter()
            .any(|&d| ops[d].ret >= ops[w].call && ops[d].call <= ops[r].ret)
        {
            continue;
        }
        let what = match ops[w].kind {
            Kind::Write(s) => format!("put of {} was acknowledged", name(s)),
            Kind::Read(s) => format!("get found {}", name(s)),
        };
        return Some((
            vec![w, r],
            format!(
                "get at {} found nothing, but a {what} at {}, before it began, and no delete of the key \
                 could fall between them",
                at(r),
                at(w)
            ),
        ));
    }
    None
}

/// Answers "of the operations invoked after t, other than reads of v, which ends first?" in
/// O(log n): operations sorted by invocation, and for each suffix the earliest-ending one and
/// the earliest-ending one of another kind (the kinds: a read of each value, each write alone),
/// so that excluding one kind leaves an answer.
struct EarliestEnd<'a> {
    history: &'a KeyHistory,
    by_call: Vec<usize>,
    /// For the suffix from each position: (best, best of another kind than best's).
    suffix: Vec<(Option<usize>, Option<usize>)>,
}

impl<'a> EarliestEnd<'a> {
    fn new(history: &'a KeyHistory) -> Self {
        let ops = &history.ops;
        let mut by_call: Vec<usize> = (0..ops.len()).collect();
        by_call.sort_unstable_by_key(|&i| ops[i].call);
        let kind = |i: usize| match ops[i].kind {
            Kind::Read(s) => (0, s.map_or(0, |v| u64::from(v) + 1)),
            Kind::Write(_) => (1, i as u64),
        };
        let mut suffix: Vec<(Option<usize>, Option<usize>)> = vec![(None, None); ops.len() + 1];
        for pos in (0..ops.len()).rev() {
            let i = by_call[pos];
            let (best, other) = suffix[pos + 1];
            suffix[pos] = match best {
                Some(b) if ops[b].ret <= ops[i].ret => {
                    let other = match other {
                        _ if kind(i) == kind(b) => other,
                        Some(o) if ops[o].ret <= ops[i].ret => other,
                        _ => Some(i),
                    };
                    (best, other)
                }
                Some(b) if kind(b) != kind(i) => (Some(i), Some(b)),
                _ => (Some(i), other),
            };
        }
        Self {
            history,
            by_call,
            suffix,
        }
    }

    /// The earliest-ending operation invoked after `t` that is not a read of `found`.
    fn after(&self, t: u64, found: State) -> Option<usize> {
        let ops = &self.history.ops;
        let pos = self.by_call.partition_point(|&i| ops[i].call <= t);
        let (best, other) = self.suffix[pos];
        match best {
            Some(b) if ops[b].kind == Kind::Read(found) => other,
            best => best,
        }
    }
}

/// How many searches the whittling may run, and the budget of each.
const MAX_TRIES: usize = 200;

/// For a violation of no known shape: the smallest set of reads (with every write) that still
/// fails, found by dropping reads while the search keeps failing (dropping a read never makes
/// a linearizable history fail, so what is left is a real contradiction), shown with the
/// writes of the values they read and the writes around them.
pub(super) fn minimal_core(history: &KeyHistory, budget: Budget) -> (Vec<usize>, String) {
    let ops = &history.ops;
    let writes: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].kind, Kind::Write(_)))
        .collect();
    let mut reads: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].kind, Kind::Read(_)))
        .collect();
    let per_try = (budget.steps_per_key / 10).max(10_000);
    let fails = |reads: &[usize]| {
        let mut chosen: Vec<usize> = writes.iter().chain(reads).copied().collect();
        chosen.sort_unstable();
        let sub: Vec<_> = chosen.iter().map(|&i| ops[i].clone()).collect();
        search(&sub, per_try) == Search::Violation
    };
    let mut tries = 0;
    let mut chunk = reads.len().div_ceil(2).max(1);
    'whittle: loop {
        let mut i = 0;
        while i < reads.len() {
            if tries == MAX_TRIES {
                break 'whittle;
            }
            tries += 1;
            let trial: Vec<usize> = reads[..i]
                .iter()
                .chain(reads[(i + chunk).min(reads.len())..].iter())
                .copied()
                .collect();
            if fails(&trial) {
                reads = trial;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    // The writes that matter to these reads: those of the values read, those overlapping
    // the reads' time, and the last acknowledged ones before it.
    let read_values: Vec<State> = reads
        .iter()
        .filter_map(|&r| match ops[r].kind {
            Kind::Read(s @ Some(_)) => Some(s),
            _ => None,
        })
        .collect();
    let sources: Vec<usize> = writes
        .iter()
        .copied()
        .filter(|&w| matches!(ops[w].kind, Kind::Write(s) if read_values.contains(&s)))
        .collect();
    let lo = reads.iter().chain(&sources).map(|&i| ops[i].call).min().unwrap_or(0);
    let hi = reads.iter().map(|&i| ops[i].ret).max().unwrap_or(NEVER);
    let before = |w: usize| ops[w].ret < lo;
    let shown: Vec<usize> = writes
        .iter()
        .copied()
        .filter(|&w| {
            sources.contains(&w)
                || (ops[w].call <= hi && !before(w))
                || (before(w) && !writes.iter().any(|&w2| ops[w].ret < ops[w2].call && before(w2)))
        })
        .chain(reads.iter().copied())
        .collect();
    let why = format!(
        "no order of the operations below fits a register: {} read{} that cannot all be satisfied \
         (each is needed for the contradiction), with the writes that could have given them their values{}",
        reads.len(),
        if reads.len() == 1 { "" } else { "s" },
        if tries == MAX_TRIES {
            " (whittling stopped early: there may be a smaller set)"
        } else {
            ""
        }
    );
    (shown, why)
}

/// `[1.000 ms, 2.000 ms]`, or `[1.000 ms, ?]` for an operation that never ended.
fn span(call: u64, ret: u64) -> String {
    let end = if ret == NEVER { "?".to_string() } else { ms(ret) };
    format!("[{}, {end}]", ms(call))
}
