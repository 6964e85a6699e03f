//! What a round hands the caller: [`Persist`] (to make durable, and messages that may leave
//! before the sync) and [`Output`] (released only after the sync).

use std::collections::BTreeMap;

use raft::prelude::{ConfState, Entry, HardState, Message, Snapshot};

use crate::command::{Command, Effect, ProposalId};
use crate::ids::{Generation, RangeId};
use crate::wire::{Frame, RaftMsg};

/// Why an accepted proposal will never be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Another entry was committed at its index, or an entry of a newer term before it (its
    /// leader was deposed first): never applied.
    Overwritten,
    /// A snapshot covered its index; it may or may not be in the state.
    Unknown,
}

/// One group's durable part of a round.
#[derive(Clone, Debug)]
pub struct GroupWrite {
    /// The group.
    pub range: RangeId,
    /// A snapshot to install before the entries (a follower far behind).
    pub snapshot: Option<Snapshot>,
    /// New log entries (they may replace a suffix from the first one's index on).
    pub entries: Vec<Entry>,
    /// The new term, vote or commit index.
    pub hard_state: Option<HardState>,
}

/// What the caller must make durable, in one write and one sync, before
/// [`Replicas::handle_persisted`]; and messages it may send before that sync.
#[derive(Clone, Debug, Default)]
pub struct Persist {
    /// Names the round for `handle_persisted`.
    pub round: u64,
    /// Every group's writes.
    pub groups: Vec<GroupWrite>,
    /// A leader's appends and heartbeats, one frame per peer: safe to send before the sync
    /// (raft-rs counts the leader's own write only once it is told).
    pub send_early: Vec<(u64, Frame)>,
}

/// An entry applied by this replica (every replica applies every committed entry in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The group.
    pub range: RangeId,
    /// The entry's index and term.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The proposal it came from, whoever proposed it.
    pub proposal: Option<ProposalId>,
    /// Its command; `None` for a new leader's empty entry or a conf change.
    pub command: Option<Command>,
}

/// What a round released once durable.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages, one frame per peer (votes and acknowledgements among them).
    pub frames: Vec<(u64, Frame)>,
    /// Entries applied this round, in order per group.
    pub applied: Vec<Applied>,
    /// Snapshots installed this round: the range's state jumped to this index.
    pub installed: Vec<(RangeId, u64)>,
    /// This node's proposals now applied, with what each did: acknowledge them, once.
    pub acked: Vec<(ProposalId, Effect)>,
    /// This node's proposals that will never be acknowledged.
    pub failed: Vec<(ProposalId, Failure)>,
    /// Reads confirmed by a quorum and now covered by the applied state: serve them.
    pub reads: Vec<(RangeId, u64)>,
    /// Reads that will never be confirmed here (the leader stepped down): retry elsewhere.
    pub failed_reads: Vec<(RangeId, u64, Option<u64>)>,
    /// Groups whose leader or term changed: `(range, leader, term)`.
    pub leaders: Vec<(RangeId, Option<u64>, u64)>,
    /// Groups found new by the lost-state rule and bootstrapped: the preferred leader may
    /// campaign now.
    pub bootstrapped: Vec<RangeId>,
    /// Configuration changes applied this round, with the group's configuration after each
    /// (a move's progress; a node that is neither voter nor learner has left the group).
    pub configured: Vec<(RangeId, ConfState)>,
    /// Ranges not held here whose leader sent this node a message (`(range, leader)`): a
    /// move adding it; the caller may add the group, uninitialised, to receive a snapshot.
    pub unknown: Vec<(RangeId, u64)>,
    /// Groups a voter of whose configuration (`(range, voter, last)`) said its applied
    /// configuration leaves this node out, while this node's log held nothing past it (its
    /// last index `last` then): this node was removed (a move called off or re-aimed while it
    /// was down), and may drop the group while its log is still that.
    pub removed: Vec<(RangeId, u64, u64)>,
}

impl Output {
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
            && self.applied.is_empty()
            && self.installed.is_empty()
            && self.acked.is_empty()
            && self.failed.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.leaders.is_empty()
            && self.bootstrapped.is_empty()
            && self.configured.is_empty()
            && self.unknown.is_empty()
            && self.removed.is_empty()
    }
}

/// Adds raft's messages to the frames of their destinations (one frame per peer per round).
pub(crate) fn add_frames(
    frames: &mut BTreeMap<u64, Frame>,
    range: RangeId,
    generation: Generation,
    msgs: Vec<Message>,
) {
    for m in msgs {
        frames
            .entry(m.to)
            .or_default()
            .msgs
            .push((range, generation, RaftMsg::from_raft(&m)));
    }
}
