//! The raft messages' wire form: a serde/postcard mirror of `eraftpb::Message`'s fields, and
//! the [`Frame`] that carries one round's messages of many groups to one peer.
//!
//! protobuf 2.28 (raft-rs's codec) has an advisory for unbounded recursion on decode
//! (RUSTSEC-2024-0437), so nothing from the network is ever parsed as protobuf: bytes become a
//! [`Frame`] by postcard, whose types are flat (no recursion), then are checked field by field
//! (message and entry types by number) before a raft `Message` is built. Knows no quinn.

use raft::prelude::{ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata};
use serde::{Deserialize, Serialize};

use crate::ids::{Generation, RangeId};

/// The largest frame a peer may send (the transport's frame limit bounds it too): raft-rs caps
/// entries per append by `max_size_per_msg` (1 MiB), and one frame carries a round of many
/// groups. Snapshots travel on streams of their own ([`Frame::take_snapshots`]).
pub const MAX_FRAME: usize = 16 << 20;

/// The size of each chunk of a streamed snapshot's data.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// The largest snapshot a node sends or takes whole (an in-memory node's: its data is held in
/// memory on both sides while it travels). A range on disk streams in parts
/// ([`SnapshotPart`]), of any size.
pub const MAX_SNAPSHOT: u64 = 2 << 30;

/// One round's raft messages from one node to one peer, of every group they share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Each message with the range whose group it belongs to, and the group's generation
    /// (a replica steps only its own history's messages).
    pub msgs: Vec<(RangeId, Generation, RaftMsg)>,
    /// Probes of replicas that may have lost their state, and answers to them (the core's
    /// lost-state rule; `docs/design/replication.md`).
    pub probes: Vec<Probe>,
    /// Answers to vote requests from a node the sender's group no longer counts.
    pub removed: Vec<Removed>,
}

/// "Your vote request is from a node my group of `range` does not count: my applied
/// configuration, at `applied`, leaves you out." A replica that a move made a voter and
/// removed again while it was down learns so this way (`Replicas::handle_frame`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The range.
    pub range: RangeId,
    /// The sender's group's history: only a replica of the same one takes it.
    pub generation: Generation,
    /// The sender's applied index: its configuration, which leaves the receiver out, is
    /// committed, and so is every entry up to here.
    pub applied: u64,
}

/// A replica without stored state for `range` asks every other replica what it holds; each
/// answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The range asked about.
    pub range: RangeId,
    /// The asking group's generation: the answer is what the answering node holds of that
    /// history of the range (nothing, if it holds another).
    pub generation: Generation,
    /// `None`: a question. `Some`: the answer, itself `None` when the answering node holds
    /// no state for the range (or is itself still asking).
    pub answer: Option<Option<LogState>>,
}

/// What a replica holds of a group: its term and the last entry of its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogState {
    /// Its hard state's term.
    pub term: u64,
    /// The term of its last log entry (or snapshot).
    pub last_term: u64,
    /// The index of its last log entry (or snapshot).
    pub last_index: u64,
}

/// `eraftpb::Message`, field for field, in types postcard can carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMsg {
    /// `MessageType` as its number; checked on decode.
    pub msg_type: u8,
    pub to: u64,
    pub from: u64,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    pub entries: Vec<RaftEntry>,
    pub commit: u64,
    pub commit_term: u64,
    pub snapshot: Option<RaftSnapshot>,
    pub request_snapshot: u64,
    pub reject: bool,
    pub reject_hint: u64,
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
    pub priority: i64,
}

/// `eraftpb::Entry` (without the deprecated `sync_log`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftEntry {
    /// `EntryType` as its number; checked on decode.
    pub entry_type: u8,
    pub term: u64,
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
}

/// `eraftpb::Snapshot` with its metadata and conf state flattened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftSnapshot {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

/// Why bytes from a peer are not a frame of raft messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`MAX_FRAME`].
    #[error("raft frame of {0} bytes is over the limit")]
    TooLong(usize),
    /// Not postcard of a [`Frame`], or bytes left over after it.
    #[error("raft frame is malformed")]
    Malformed,
    /// A message type no raft-rs 0.7 message has.
    #[error("unknown raft message type {0}")]
    MessageType(u8),
    /// An entry type no raft-rs 0.7 entry has.
    #[error("unknown raft entry type {0}")]
    EntryType(u8),
    /// A message type that never crosses the network (`MsgHup`, `MsgBeat`, ...).
    #[error("raft message type {0} is local only")]
    LocalOnly(u8),
    /// A snapshot stream's head that is not a snapshot message without its data.
    #[error("a snapshot stream's head is not a snapshot message")]
    NotASnapshot,
    /// A snapshot stream announcing more data than [`MAX_SNAPSHOT`].
    #[error("a snapshot of {0} bytes is over the limit")]
    SnapshotTooLarge(u64),
}

impl Frame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// A frame from a peer's bytes: refuses oversize, malformed and trailing bytes and any
    /// message or entry type raft-rs does not know; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        let (frame, rest): (Frame, &[u8]) = postcard::take_from_bytes(bytes).map_err(|_| DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed);
        }
        for (_, _, m) in &frame.msgs {
            m.check()?;
        }
        Ok(frame)
    }
}

impl Frame {
    /// Takes out the messages that carry a snapshot, to travel on streams of their own
    /// ([`SnapshotHead`], then the data in chunks): none meets the frame limit or holds up the
    /// heartbeats behind it, and the sender learns whether it arrived, which raft-rs needs
    /// told (`report_snapshot`). The frame keeps the rest.
    pub fn take_snapshots(&mut self) -> Vec<(RangeId, Generation, RaftMsg)> {
        // Every frame a driver sends passes here; nearly none carries a snapshot.
        if !self.msgs.iter().any(|(_, _, m)| m.snapshot.is_some()) {
            return Vec::new();
        }
        let (out, kept) = std::mem::take(&mut self.msgs)
            .into_iter()
            .partition(|(_, _, m)| m.snapshot.is_some());
        self.msgs = kept;
        out
    }

    /// The frame's bytes, as one frame if it fits in `max`, else as several, each message
    /// whole in one of them (a message over `max` alone in its own, for the sender to drop).
    pub fn encode_within(self, max: usize) -> Vec<Vec<u8>> {
        let bytes = self.encode();
        if bytes.len() <= max || self.msgs.len() + self.probes.len() <= 1 {
            return vec![bytes];
        }
        let mut first = self;
        let second = if first.msgs.len() >= 2 {
            Frame {
                msgs: first.msgs.split_off(first.msgs.len() / 2),
                ..Frame::default()
            }
        } else {
            Frame {
                probes: std::mem::take(&mut first.probes),
                ..Frame::default()
            }
        };
        let mut out = first.encode_within(max);
        out.extend(second.encode_within(max));
        out
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty() && self.probes.is_empty() && self.removed.is_empty()
    }
}

/// The first frame of a snapshot's own stream: the `MsgSnapshot` without its data, and the
/// data's length. The data follows in chunks of at most [`SNAPSHOT_CHUNK`] bytes, then the
/// stream ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHead {
    /// The range whose group the message belongs to.
    pub range: RangeId,
    /// The group's generation.
    pub generation: Generation,
    /// The message, its snapshot's data empty.
    pub msg: RaftMsg,
    /// How many bytes of data follow.
    pub len: u64,
}

impl SnapshotHead {
    /// Splits a snapshot message into its head and its data.
    pub fn split(range: RangeId, generation: Generation, mut msg: RaftMsg) -> (Self, Vec<u8>) {
        let data = msg
            .snapshot
            .as_mut()
            .map(|s| std::mem::take(&mut s.data))
            .unwrap_or_default();
        let len = data.len() as u64;
        (
            SnapshotHead {
                range,
                generation,
                msg,
                len,
            },
            data,
        )
    }

    /// The head's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// A head from a peer's bytes: a snapshot message of known types with no data of its own,
    /// announcing at most [`MAX_SNAPSHOT`] bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        let (head, rest): (SnapshotHead, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|_| DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed);
        }
        head.msg.check()?;
        let is_snapshot = head.msg.msg_type == MessageType::MsgSnapshot as u8
            && head.msg.snapshot.as_ref().is_some_and(|s| s.data.is_empty());
        if !is_snapshot {
            return Err(DecodeError::NotASnapshot);
        }
        if head.len > MAX_SNAPSHOT {
            return Err(DecodeError::SnapshotTooLarge(head.len));
        }
        Ok(head)
    }

    /// The message with its data back in place, as a frame of its own.
    pub fn into_frame(mut self, data: Vec<u8>) -> Frame {
        if let Some(s) = self.msg.snapshot.as_mut() {
            s.data = data;
        }
        Frame {
            msgs: vec![(self.range, self.generation, self.msg)],
            ..Frame::default()
        }
    }
}

impl RaftMsg {
    /// The message's types are ones raft-rs knows and one that travels between nodes.
    fn check(&self) -> Result<(), DecodeError> {
        let t = message_type(self.msg_type)?;
        // As raft-rs's `is_local_msg`: these are a node's messages to itself.
        let local = [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ];
        if local.contains(&t) {
            return Err(DecodeError::LocalOnly(self.msg_type));
        }
        for e in &self.entries {
            entry_type(e.entry_type)?;
        }
        Ok(())
    }

    /// The raft message: fails only as [`Frame::decode`] would have refused it.
    pub fn to_raft(&self) -> Result<Message, DecodeError> {
        self.check()?;
        let mut m = Message::default();
        m.set_msg_type(message_type(self.msg_type)?);
        m.to = self.to;
        m.from = self.from;
        m.term = self.term;
        m.log_term = self.log_term;
        m.index = self.index;
        let entries = self
            .entries
            .iter()
            .map(RaftEntry::to_raft)
            .collect::<Result<Vec<_>, _>>()?;
        m.set_entries(entries.into());
        m.commit = self.commit;
        m.commit_term = self.commit_term;
        if let Some(s) = &self.snapshot {
            m.set_snapshot(s.to_raft());
        }
        m.request_snapshot = self.request_snapshot;
        m.reject = self.reject;
        m.reject_hint = self.reject_hint;
        m.set_context(self.context.clone().into());
        m.priority = self.priority;
        Ok(m)
    }

    /// The mirror of a raft message.
    pub fn from_raft(m: &Message) -> Self {
        RaftMsg {
            msg_type: m.get_msg_type() as u8,
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: m.get_entries().iter().map(RaftEntry::from_raft).collect(),
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot: m.has_snapshot().then(|| RaftSnapshot::from_raft(m.get_snapshot())),
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: m.get_context().to_vec(),
            priority: m.priority,
        }
    }
}

impl RaftEntry {
    fn to_raft(&self) -> Result<Entry, DecodeError> {
        let mut e = Entry::default();
        e.set_entry_type(entry_type(self.entry_type)?);
        e.term = self.term;
        e.index = self.index;
        e.set_data(self.data.clone().into());
        e.set_context(self.context.clone().into());
        Ok(e)
    }

    fn from_raft(e: &Entry) -> Self {
        RaftEntry {
            entry_type: e.get_entry_type() as u8,
            term: e.term,
            index: e.index,
            data: e.get_data().to_vec(),
            context: e.get_context().to_vec(),
        }
    }
}

impl RaftSnapshot {
    fn to_raft(&self) -> Snapshot {
        let mut cs = ConfState::default();
        cs.set_voters(self.voters.clone());
        cs.set_learners(self.learners.clone());
        cs.set_voters_outgoing(self.voters_outgoing.clone());
        cs.set_learners_next(self.learners_next.clone());
        cs.auto_leave = self.auto_leave;
        let mut meta = SnapshotMetadata::default();
        meta.set_conf_state(cs);
        meta.index = self.index;
        meta.term = self.term;
        let mut s = Snapshot::default();
        s.set_data(self.data.clone().into());
        s.set_metadata(meta);
        s
    }

    fn from_raft(s: &Snapshot) -> Self {
        let meta = s.get_metadata();
        let cs = meta.get_conf_state();
        RaftSnapshot {
            data: s.get_data().to_vec(),
            index: meta.index,
            term: meta.term,
            voters: cs.get_voters().to_vec(),
            learners: cs.get_learners().to_vec(),
            voters_outgoing: cs.get_voters_outgoing().to_vec(),
            learners_next: cs.get_learners_next().to_vec(),
            auto_leave: cs.auto_leave,
        }
    }
}

/// The message types of raft-rs 0.7, by number (`eraftpb.proto`).
const MESSAGE_TYPES: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

fn message_type(n: u8) -> Result<MessageType, DecodeError> {
    MESSAGE_TYPES
        .get(usize::from(n))
        .copied()
        .ok_or(DecodeError::MessageType(n))
}

fn entry_type(n: u8) -> Result<EntryType, DecodeError> {
    match n {
        0 => Ok(EntryType::EntryNormal),
        1 => Ok(EntryType::EntryConfChange),
        2 => Ok(EntryType::EntryConfChangeV2),
        _ => Err(DecodeError::EntryType(n)),
    }
}

/// What follows a streamed snapshot's [`SnapshotHead`] (one whose message carries no data and
/// whose `len` is 0; issue 26): parts of the range's data, each written into the receiver's
/// store as it comes, then the end, whose counts the receiver checks against what it took.
/// A part is at most [`MAX_FRAME`] bytes (the sender aims at [`SNAPSHOT_CHUNK`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotPart {
    /// Buckets with some of their keys, in order; a bucket may go on in the next part.
    Data(crate::store::RangeData),
    /// No more parts: how many there were, and how many keys they held.
    End { parts: u64, keys: u64 },
}

impl SnapshotPart {
    /// The part's bytes: a tag, then the range data's encoding or the counts.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            SnapshotPart::Data(data) => {
                let mut out = vec![0];
                out.extend_from_slice(&crate::store::encode_range(data));
                out
            }
            SnapshotPart::End { parts, keys } => {
                let mut out = vec![1];
                // Serialising two integers cannot fail.
                out.extend_from_slice(&postcard::to_allocvec(&(parts, keys)).unwrap_or_default());
                out
            }
        }
    }

    /// A part from a peer's bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        match bytes.split_first() {
            Some((0, rest)) => crate::store::decode_range(rest)
                .map(SnapshotPart::Data)
                .ok_or(DecodeError::Malformed),
            Some((1, rest)) => {
                let (parts, keys): (u64, u64) = postcard::from_bytes(rest).map_err(|_| DecodeError::Malformed)?;
                Ok(SnapshotPart::End { parts, keys })
            }
            _ => Err(DecodeError::Malformed),
        }
    }
}
