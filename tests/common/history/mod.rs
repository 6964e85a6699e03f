//! A recorded history of client operations, Jepsen style, and its checker: each client says
//! when it invokes an operation and how it completed; afterwards [`check`] says whether the
//! history is linearizable per key and whether an acknowledged write was lost. Knows nothing
//! of how operations reach a node, except [`outcome_of`], which reads a kvnode client answer.
//!
//! Included by the test files that use it, not by `common` (every test binary would compile it):
//! `#[path = "common/history/mod.rs"] mod history;`.
//!
//! The model is a register per key: `put` writes a value, `delete` writes "absent", `get`
//! reads. Values must be unique per key (the checker names a read's write by its value).
//! A definite failure never took effect and is left out; an indeterminate outcome (a timeout,
//! a lost connection) may take effect at any time after its invocation, so it counts as an
//! operation that completes at the end of time, and an indeterminate `get` says nothing.
//!
//! Timestamps are nanoseconds since the history began, taken under the recorder's lock and
//! made strictly increasing: an operation that completed before another was invoked has the
//! smaller completion time, so the recorded order is the real-time order.
//!
//! Limits, each a choice:
//! - A delete is a blind write: kvnode answers "not found" to a delete of an absent key, and
//!   [`outcome_of`] records that as ok, so whether a delete found its key is not checked.
//! - The search is exponential in writes that overlap one another: with the default budget,
//!   about 16 writes all overlapping (and a read that needs a particular one last) still end
//!   in a verdict (1.5 s in a debug build); more end as `Unknown`, which [`Report::is_ok`]
//!   does not pass. Eight clients overlap at most eight operations, plus the indeterminate
//!   writes that someone read (those nobody read are left out, as they cannot matter).
//! - A key's final read is found by time (a successful get begun after all of the key's
//!   writes ended); a key without one is listed in [`Report::unread_keys`], not passed as
//!   checked.
//!
//! Saved as JSON Lines (`scripts/faults.sh` keeps a failing history): a first line
//! `{"seed":N}`, then one line per operation, e.g.
//! `{"id":3,"client":1,"op":"put","key":"k","value":"v1","invoked":10,"completed":20,"outcome":"ok"}`.

#![allow(dead_code)] // each test file uses its own part

mod check;
mod explain;

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[allow(unused_imports)] // the API of the module; each test file uses its part
pub use check::{Budget, Explanation, LostWrite, Report, Verdict, check, search_key};

/// One operation on a register per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Put { key: String, value: String },
    Get { key: String },
    Delete { key: String },
}

impl Op {
    pub fn put(key: &str, value: &str) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn get(key: &str) -> Self {
        Op::Get { key: key.into() }
    }

    pub fn delete(key: &str) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Delete { key } => key,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    /// It took effect. `read`: what a `get` found (`None`: not found); `None` for the others.
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read: Option<String>,
    },
    /// It certainly did not take effect (a refused request).
    Failed { reason: String },
    /// It may or may not have taken effect, at any time after its invocation.
    Indeterminate { reason: String },
}

impl Outcome {
    /// A put or delete that took effect.
    pub fn ok() -> Self {
        Outcome::Ok { read: None }
    }

    /// A get's answer: `Some(value)`, or `None` for "not found".
    pub fn read(value: Option<&str>) -> Self {
        Outcome::Ok {
            read: value.map(str::to_string),
        }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Outcome::Failed { reason: reason.into() }
    }

    pub fn indeterminate(reason: impl Into<String>) -> Self {
        Outcome::Indeterminate { reason: reason.into() }
    }
}

/// One operation as recorded: what, by whom, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: usize,
    pub client: usize,
    #[serde(flatten)]
    pub op: Op,
    /// Nanoseconds since the history began.
    pub invoked: u64,
    /// When the client learnt the outcome; `None` if it never did (the test ended first).
    pub completed: Option<u64>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A handle on an invoked operation, to complete it once.
#[derive(Debug)]
#[must_use = "an invoked operation must be completed"]
pub struct OpId(usize);

/// The shared recorder: clients on many threads or tasks record into one history.
pub struct History {
    seed: u64,
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The last timestamp handed out; the next is greater.
    last: u64,
    ops: Vec<Slot>,
}

struct Slot {
    client: usize,
    op: Op,
    invoked: u64,
    end: Option<(u64, Outcome)>,
}

impl History {
    /// An empty history of a run with this seed (saved with it, so a failure replays).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            start: Instant::now(),
            inner: Mutex::new(Inner {
                last: 0,
                ops: Vec::new(),
            }),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Nanoseconds since the history began, on the clock of its records (for events beside
    /// the operations, such as a fault); takes no timestamp of its own.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Records that `client` is about to send `op`; call it before sending.
    pub fn invoke(&self, client: usize, op: Op) -> OpId {
        let mut inner = self.inner.lock().unwrap();
        let invoked = self.tick(&mut inner);
        inner.ops.push(Slot {
            client,
            op,
            invoked,
            end: None,
        });
        OpId(inner.ops.len() - 1)
    }

    /// Records how the operation ended; call it once the answer (or the lack of one) is known.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut inner = self.inner.lock().unwrap();
        let at = self.tick(&mut inner);
        let slot = &mut inner.ops[id.0];
        assert!(
            !(slot.op.is_write() && matches!(outcome, Outcome::Ok { read: Some(_) })),
            "a put or delete reads nothing: {outcome:?}"
        );
        assert!(slot.end.is_none(), "operation {} completed twice", id.0);
        slot.end = Some((at, outcome));
    }

    /// A strictly increasing clock: real time since the start, or one more than the last.
    fn tick(&self, inner: &mut Inner) -> u64 {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        inner.last = now.max(inner.last + 1);
        inner.last
    }

    /// Every operation so far, in invocation order; one not completed yet is indeterminate.
    pub fn records(&self) -> Vec<Record> {
        let inner = self.inner.lock().unwrap();
        inner
            .ops
            .iter()
            .enumerate()
            .map(|(id, slot)| Record {
                id,
                client: slot.client,
                op: slot.op.clone(),
                invoked: slot.invoked,
                completed: slot.end.as_ref().map(|(at, _)| *at),
                outcome: match &slot.end {
                    Some((_, outcome)) => outcome.clone(),
                    None => Outcome::indeterminate("no outcome recorded"),
                },
            })
            .collect()
    }

    /// Checks the history so far (see [`check`]).
    pub fn check(&self, budget: Budget) -> Report {
        check(&self.records(), budget)
    }

    /// Writes the seed line and one line per operation.
    pub fn write_jsonl(&self, out: impl Write) -> io::Result<()> {
        write_jsonl(self.seed, &self.records(), out)
    }

    /// Saves the history as JSON Lines at `path`.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut out = io::BufWriter::new(file);
        self.write_jsonl(&mut out)?;
        out.flush()
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    seed: u64,
}

/// Writes `records` as JSON Lines after a line with the run's seed.
pub fn write_jsonl(seed: u64, records: &[Record], mut out: impl Write) -> io::Result<()> {
    serde_json::to_writer(&mut out, &Header { seed })?;
    out.write_all(b"\n")?;
    for record in records {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads what [`write_jsonl`] wrote: the seed and the records.
pub fn read_jsonl(input: impl BufRead) -> io::Result<(u64, Vec<Record>)> {
    let mut lines = input.lines();
    let first = lines
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "an empty history file"))??;
    let header: Header = serde_json::from_str(&first)?;
    let mut records = Vec::new();
    for line in lines {
        let line = line?;
        if !line.trim().is_empty() {
            records.push(serde_json::from_str(&line)?);
        }
    }
    Ok((header.seed, records))
}

/// A kvnode client's answer to `op` as an outcome. Only answers that prove the request was
/// never applied are failures; anything else that is not an answer (a timeout, a lost
/// connection, a node failing on the way) may have been applied, so it is indeterminate.
pub fn outcome_of(op: &Op, answer: &Result<kvnode::wire::Reply, kvnode::client::ClientError>) -> Outcome {
    use kvnode::client::ClientError;
    use kvnode::wire::{RemoteError, Reply};
    match (op, answer) {
        (Op::Get { .. }, Ok(Reply::Value(v))) => Outcome::read(Some(&String::from_utf8_lossy(v))),
        (Op::Put { .. } | Op::Delete { .. }, Ok(Reply::Done)) => Outcome::ok(),
        // The key (or its bucket) is absent: a get read "absent", a delete left it absent.
        (
            Op::Get { .. } | Op::Delete { .. },
            Err(ClientError::Remote(RemoteError::KeyNotFound { .. } | RemoteError::BucketNotFound { .. })),
        ) => Outcome::read(None),
        (
            _,
            Err(
                e @ (ClientError::Usage(_)
                | ClientError::AuthRefused { .. }
                | ClientError::Remote(
                    RemoteError::InvalidInput { .. } | RemoteError::AuthRefused { .. } | RemoteError::NoRoute { .. },
                )),
            ),
        ) => Outcome::failed(e.to_string()),
        (_, Err(e)) => Outcome::indeterminate(e.to_string()),
        (_, Ok(reply)) => Outcome::indeterminate(format!("an unexpected answer: {reply:?}")),
    }
}
