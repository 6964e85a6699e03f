//! How a Raft group's records lie in the `raft_log` and `raft_state` keyspaces, their encoding
//! at rest, and the writes that make one round of a group durable.
//!
//! Encoding: postcard of small mirror types, not raft-rs's protobuf. protobuf 2.28 has an
//! advisory for unbounded recursion on decode (RUSTSEC-2024-0437), and a damaged or tampered
//! file is input like any other; postcard's flat types cannot recurse, the rest of the store
//! and the wire already use it, and no protobuf dependency is named here. Entry and message
//! types are kept as their numbers and checked when read back.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvnode_replica::{Generation, GroupWrite, RangeData, RangeId};
use raft::prelude::{ConfState, Entry, EntryType, HardState};
use serde::{Deserialize, Serialize};

use super::engine::RaftSpace;

/// The kinds of a group's `raft_state` records (`[range][kind]`).
pub(super) const HARD: u8 = 1;
pub(super) const CONF: u8 = 2;
/// The last applied entry's index and term, written with the data it covers.
pub(super) const APPLIED: u8 = 3;
/// The entry before the log's first (a snapshot's, or the last compacted one): index and term.
pub(super) const TRUNCATED: u8 = 4;
/// Present while a streamed snapshot's data is being written (`store::install`): the range's
/// data is neither the old nor the new, and a restart clears the group.
pub(super) const INSTALLING: u8 = 5;
/// The group's history (`Generation`, issue 26), written when the group is created here;
/// a group with state and no such record is of the generation before generations.
pub(super) const GENERATION: u8 = 6;
/// The range's newest ended history (`store::ended`): kept when the group's other records
/// are dropped.
pub(super) const ENDED: u8 = 7;

pub(super) fn state_key(range: RangeId, kind: u8) -> Vec<u8> {
    vec![range.first, range.last, kind]
}

/// `[range: 2][index: u64 BE]`: a group's entries are contiguous and in index order.
pub(super) fn log_key(range: RangeId, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.extend_from_slice(&[range.first, range.last]);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The index of a `raft_log` key.
pub(super) fn log_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(2..10)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// `raft_log` keys of `range` from `from` on (`to` exclusive).
pub(super) fn log_span(range: RangeId, from: u64, to: Option<u64>) -> (Vec<u8>, Vec<u8>) {
    let end = match to {
        Some(to) => log_key(range, to),
        // Past every index of the range: the next range's prefix.
        None => {
            let mut k = vec![range.first, range.last];
            k.extend_from_slice(&[0xff; 9]);
            k
        }
    };
    (log_key(range, from), end)
}

#[derive(Serialize, Deserialize)]
struct EntryRec {
    entry_type: u8,
    term: u64,
    index: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    #[serde(with = "serde_bytes")]
    context: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct HardRec {
    term: u64,
    vote: u64,
    commit: u64,
}

#[derive(Serialize, Deserialize)]
struct ConfRec {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct IndexTerm {
    pub index: u64,
    pub term: u64,
}

fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of integers and byte vectors always serialise.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub(super) fn encode_entry(e: &Entry) -> Vec<u8> {
    to_bytes(&EntryRec {
        entry_type: e.get_entry_type() as u8,
        term: e.term,
        index: e.index,
        data: e.get_data().to_vec(),
        context: e.get_context().to_vec(),
    })
}

pub(super) fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    let rec: EntryRec = postcard::from_bytes(bytes).map_err(|e| format!("a log entry is damaged ({e})"))?;
    let entry_type = match rec.entry_type {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        n => return Err(format!("a log entry has the unknown type {n}")),
    };
    let mut e = Entry::default();
    e.set_entry_type(entry_type);
    e.term = rec.term;
    e.index = rec.index;
    e.set_data(rec.data.into());
    e.set_context(rec.context.into());
    Ok(e)
}

pub(super) fn encode_hard(hs: &HardState) -> Vec<u8> {
    to_bytes(&HardRec {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    })
}

pub(super) fn decode_hard(bytes: &[u8]) -> Result<HardState, String> {
    let rec: HardRec = postcard::from_bytes(bytes).map_err(|e| format!("the hard state is damaged ({e})"))?;
    Ok(HardState {
        term: rec.term,
        vote: rec.vote,
        commit: rec.commit,
        ..Default::default()
    })
}

pub(super) fn encode_conf(cs: &ConfState) -> Vec<u8> {
    to_bytes(&ConfRec {
        voters: cs.get_voters().to_vec(),
        learners: cs.get_learners().to_vec(),
        voters_outgoing: cs.get_voters_outgoing().to_vec(),
        learners_next: cs.get_learners_next().to_vec(),
        auto_leave: cs.auto_leave,
    })
}

pub(super) fn decode_conf(bytes: &[u8]) -> Result<ConfState, String> {
    let rec: ConfRec = postcard::from_bytes(bytes).map_err(|e| format!("the conf state is damaged ({e})"))?;
    let mut cs = ConfState::default();
    cs.set_voters(rec.voters);
    cs.set_learners(rec.learners);
    cs.set_voters_outgoing(rec.voters_outgoing);
    cs.set_learners_next(rec.learners_next);
    cs.auto_leave = rec.auto_leave;
    Ok(cs)
}

pub(super) fn encode_generation(generation: Generation) -> Vec<u8> {
    to_bytes(&generation)
}

pub(super) fn decode_generation(bytes: &[u8]) -> Result<Generation, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("the generation record is damaged ({e})"))
}

pub(super) fn encode_index_term(index: u64, term: u64) -> Vec<u8> {
    to_bytes(&IndexTerm { index, term })
}

pub(super) fn decode_index_term(bytes: &[u8]) -> Result<IndexTerm, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("an index record is damaged ({e})"))
}

/// What a group's log and state are before a round: enough to plan its writes.
pub(super) struct LogBounds {
    /// The entry before the log's first: (index, term).
    pub truncated: (u64, u64),
    /// The last entry's index (`truncated.0` for an empty log).
    pub last: u64,
    pub hard: HardState,
}

/// One group's round as engine writes: a snapshot's range data (to replace the range's
/// buckets), and records set or removed, each key once.
pub(super) struct GroupRound {
    pub replace: Option<Arc<RangeData>>,
    pub records: Vec<(RaftSpace, Vec<u8>, Option<Vec<u8>>)>,
}

/// Plans one group's round the way raft-rs's `MemStorage` applies it (snapshot, then
/// entries replacing a suffix from the first one's index, then the hard state), refusing
/// what it would refuse. Keys are netted out: a log index the snapshot clears and an entry
/// sets again is written once, as the entry.
pub(super) fn plan_round(range: RangeId, before: &LogBounds, w: &GroupWrite) -> Result<GroupRound, String> {
    let (mut first, mut last) = (before.truncated.0 + 1, before.last);
    let mut log: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
    let mut state: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut hard = before.hard.clone();
    let mut replace = None;
    let mut installed = false;
    if let Some(snap) = &w.snapshot {
        let meta = snap.get_metadata();
        if meta.index < first {
            return Err(format!(
                "a snapshot at index {} is older than the log, which starts at {first}",
                meta.index
            ));
        }
        if snap.get_data() == kvnode_replica::INSTALLED {
            // Streamed: the data is in place already, written under the marker this removes.
            installed = true;
        } else {
            let data: RangeData = kvnode_replica::decode_range(snap.get_data())
                .ok_or_else(|| format!("the snapshot at index {} does not hold a range's data", meta.index))?;
            replace = Some(Arc::new(data));
        }
        log.extend((first..=last).map(|i| (i, None)));
        (first, last) = (meta.index + 1, meta.index);
        state.insert(TRUNCATED, encode_index_term(meta.index, meta.term));
        state.insert(APPLIED, encode_index_term(meta.index, meta.term));
        state.insert(CONF, encode_conf(meta.get_conf_state()));
        hard.term = hard.term.max(meta.term);
        hard.commit = meta.index;
        state.insert(HARD, encode_hard(&hard));
    }
    if let Some(tail) = w.entries.last() {
        check_append(first, last, &w.entries)?;
        // The old entries past the new last go; those at the new indices are overwritten.
        log.extend((tail.index + 1..=last).map(|i| (i, None)));
        log.extend(w.entries.iter().map(|e| (e.index, Some(encode_entry(e)))));
    }
    if let Some(hs) = &w.hard_state {
        state.insert(HARD, encode_hard(hs));
    }
    let records = log
        .into_iter()
        .map(|(i, v)| (RaftSpace::Log, log_key(range, i), v))
        .chain(
            state
                .into_iter()
                .map(|(kind, v)| (RaftSpace::State, state_key(range, kind), Some(v))),
        )
        .chain(installed.then(|| (RaftSpace::State, state_key(range, INSTALLING), None)))
        .collect();
    Ok(GroupRound { replace, records })
}

/// Whether `entries` may be appended to a log of `first..=last`: contiguous, not below the
/// first entry (compacted ones cannot be replaced), and leaving no hole after the last.
pub(super) fn check_append(first: u64, last: u64, entries: &[Entry]) -> Result<(), String> {
    let Some(head) = entries.first() else {
        return Ok(());
    };
    if head.index < first {
        return Err(format!(
            "entries from index {} would replace compacted ones (the log starts at {first})",
            head.index
        ));
    }
    if head.index > last + 1 {
        return Err(format!(
            "entries from index {} would leave a hole after the last, {last}",
            head.index
        ));
    }
    if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
        return Err(format!("entries from index {} are not contiguous", head.index));
    }
    Ok(())
}
