//! kvnode's replica core (issue 25, `docs/design/replication.md`): every Raft group a node
//! holds, one per replicated range, over tikv's raft-rs, sans-IO, with its wire form and a
//! deterministic simulator.
//!
//! Nothing here touches tokio, a clock, a socket or a disk: ticks come from the caller's
//! timer, frames from its transport, and durability is the caller's to provide. Randomness
//! (the election timeouts) comes from a caller-seeded generator. A crate of its own, so the
//! compiler keeps it so; kvnode's node module drives it (step 4 of the design).
//!
//! # The contract
//!
//! [`Replicas`] holds the groups, keyed by [`RangeId`], each a raft-rs `RawNode` on a
//! [`GroupStore`]. The caller:
//!
//! 1. feeds inputs: [`Replicas::handle_tick`] every tick for all groups (50 ms by default:
//!    elections after 10–20 silent ticks, heartbeats every 2), [`Replicas::handle_frame`] for
//!    each [`Frame`] from a peer (all groups' messages of one round), and the requests:
//!    [`Replicas::propose`] of a [`Command`] (a [`ProposalId`] back, or `NotLeader` with the
//!    leader's id), [`Replicas::read_index`], [`Replicas::campaign`],
//!    [`Replicas::transfer_leader`];
//! 2. drains a round: [`Replicas::poll_round`] gives one [`Persist`], every group's new log
//!    entries, hard states and snapshots, to write in ONE batch with one sync, and the
//!    leaders' messages it may send before that sync;
//! 3. once durable, calls [`Replicas::handle_persisted`], which gives an [`Output`]: frames
//!    to send (one per peer: heartbeats of all groups together, votes and acknowledgements
//!    that had to wait for the sync), entries applied, proposals acknowledged (each at most
//!    once, only once applied on this node) or failed, reads now safe to serve, reads a
//!    deposed leader will never confirm, and leader changes. Then back to 2 until `None`.
//!
//! One round is outstanding at a time; inputs are taken meanwhile. A group's store is written
//! only in `handle_persisted`, so a node killed before it has lost exactly that round, as
//! its disk would. raft-rs's own log lines go to the `slog::Logger` in [`ReplicaConfig`]
//! (discarded by default); the node will hand in a small slog drain that forwards to tracing.
//!
//! Replay: raft-rs draws election timeouts from `thread_rng`; the core overrides each draw
//! with one from its seeded generator (`redraw_timeout`), so the same seed and inputs replay
//! the same elections, and the simulator's seeds reproduce whole runs.
//!
//! - `core`: [`Replicas`], its inputs and rounds; `output`: what a round hands back.
//! - `store`: [`GroupStore`] and the in-memory [`MemGroupStore`] (fjall is step 3).
//! - `wire`: the postcard mirror of raft messages (protobuf is never decoded off the network).
//! - `command`: what entries carry; `ids`: range ids and node ids from names.

mod change;
mod command;
mod core;
mod ids;
mod output;
mod store;
#[cfg(test)]
mod tests;
mod wire;

pub use self::change::{ChangeKind, ReplicaChange};
pub use self::command::{Command, Effect, ProposalId};
pub use self::core::{
    ENDED_NOTED, InstallRefused, LeaseStanding, ProposeError, ReplicaConfig, Replicas, Role, RoundError,
};
pub use self::ids::{Generation, IdError, NodeIds, RangeId, node_id};
pub use self::output::{Applied, Failure, GroupWrite, Output, Persist};
pub use self::store::{
    BOOTSTRAP_INDEX, GroupStore, INSTALLED, MemGroupStore, RangeData, StoreError, decode_range, encode_range,
};
pub use self::wire::{
    DecodeError, Frame, LogState, MAX_FRAME, MAX_SNAPSHOT, Probe, RaftEntry, RaftMsg, RaftSnapshot, Removed,
    SNAPSHOT_CHUNK, SnapshotHead, SnapshotPart,
};
