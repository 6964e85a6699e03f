//! Streamed snapshots (issue 26): a range's data too large to hold in memory travels as a
//! stream of parts that the receiving node writes into its store as they come, while the
//! group waits. The core decides whether such a snapshot would be taken *before* any of it is
//! written ([`Replicas::begin_install`]), holds the group still meanwhile (no ticks, no
//! messages, no rounds), and steps the snapshot only once its data is in place
//! ([`Replicas::end_install`]): raft-rs then takes it exactly as it said it would, since
//! nothing reached the group in between.

use raft::StateRole;
use raft::eraftpb::Message;

use super::{Replicas, may_step};
use crate::ids::{Generation, RangeId};
use crate::store::{GroupStore, INSTALLED};
use crate::wire::RaftMsg;

/// Why a streamed snapshot is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallRefused {
    #[error("this node holds no group of range {0}")]
    NoGroup(RangeId),
    #[error("range {0} is taking another snapshot")]
    Busy(RangeId),
    #[error("the message is not a streamed snapshot from its sender to this node")]
    NotForMe,
    #[error("range {0}'s group here is of another history (generation) than the snapshot's")]
    OtherHistory(RangeId),
    #[error("the group would not take it (it holds that much already, or is not in its configuration)")]
    NotNeeded,
}

impl<S: GroupStore> Replicas<S> {
    /// A streamed snapshot `msg` (its data empty, [`crate::SnapshotHead`]) from `from` has
    /// begun to arrive for `range`: `Ok` when raft-rs would restore it now, and the group is
    /// then held still until [`Replicas::end_install`] or [`Replicas::abort_install`]; the
    /// caller may then replace the range's data. Mirrors raft-rs 0.7's `step` and `restore`:
    /// a term not older than the group's, not a leader of that term, an index not below the
    /// commit index, this replica in the snapshot's configuration, and not an entry the log
    /// already holds (which raft-rs takes as "commit up to there", with no data); and the
    /// group's own history, `generation`.
    pub fn begin_install(
        &mut self,
        range: RangeId,
        generation: Generation,
        from: u64,
        msg: &RaftMsg,
    ) -> Result<(), InstallRefused> {
        let me = self.config.id;
        let g = self.groups.get_mut(&range).ok_or(InstallRefused::NoGroup(range))?;
        if g.generation != generation {
            return Err(InstallRefused::OtherHistory(range));
        }
        if g.installing {
            return Err(InstallRefused::Busy(range));
        }
        let m = msg.to_raft().map_err(|_| InstallRefused::NotForMe)?;
        if !is_streamed(&m)
            || m.get_snapshot().get_data() == INSTALLED
            || m.from != from
            || m.to != me
            || !may_step(g, &m, me)
        {
            return Err(InstallRefused::NotForMe);
        }
        if !would_restore(&g.node.raft, &m) {
            return Err(InstallRefused::NotNeeded);
        }
        g.installing = true;
        Ok(())
    }

    /// The data of the snapshot `begin_install` took is in the store: the message is stepped
    /// with [`INSTALLED`] as its data (the store then writes only the group's records), and
    /// the group goes on. `false` (and the group held still) if raft-rs did not restore it
    /// after all, which `begin_install`'s check rules out: the caller must then clear the
    /// range (its data is the snapshot's, its log is not).
    pub fn end_install(&mut self, range: RangeId, from: u64, msg: &RaftMsg) -> bool {
        let Some(g) = self.groups.get_mut(&range).filter(|g| g.installing) else {
            return false;
        };
        let Ok(mut m) = msg.to_raft() else {
            return false;
        };
        if m.from != from {
            return false;
        }
        let index = m.get_snapshot().get_metadata().index;
        m.mut_snapshot().set_data(INSTALLED.to_vec().into());
        let _ = g.node.step(m);
        let restored = g
            .node
            .raft
            .raft_log
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| s.get_metadata().index == index);
        if restored {
            g.installing = false;
            super::redraw_timeout(&mut self.rng, self.config.election_tick, g);
        }
        restored
    }

    /// The snapshot `begin_install` took did not arrive whole: the group goes on as it was.
    /// Only for a caller that has not touched the range's data yet; one that has must clear
    /// the group and start it again empty.
    pub fn abort_install(&mut self, range: RangeId) {
        if let Some(g) = self.groups.get_mut(&range) {
            g.installing = false;
        }
    }

    /// Holds `range`'s group still as `begin_install` does, without its check: a streamed
    /// snapshot taken before the caller started this core (its driver restarted) is still
    /// being written. `false` for a range not held.
    pub fn hold(&mut self, range: RangeId) -> bool {
        self.groups.get_mut(&range).map(|g| g.installing = true).is_some()
    }

    /// Whether `range`'s group is held still for a streamed snapshot.
    pub fn installing(&self, range: RangeId) -> bool {
        self.groups.get(&range).is_some_and(|g| g.installing)
    }
}

/// A snapshot message whose data is a stream's (empty) or says it was installed in place:
/// such a message is taken only through [`Replicas::begin_install`] and
/// [`Replicas::end_install`], never from a frame.
pub(super) fn is_streamed(m: &Message) -> bool {
    m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
        && (m.get_snapshot().get_data().is_empty() || m.get_snapshot().get_data() == INSTALLED)
}

/// Whether raft-rs 0.7 would restore the snapshot `m` carries (`Raft::step`, then
/// `handle_snapshot` and `restore`).
fn would_restore<S: raft::Storage>(raft: &raft::Raft<S>, m: &Message) -> bool {
    if m.term < raft.term || (m.term == raft.term && raft.state == StateRole::Leader) {
        return false;
    }
    let meta = m.get_snapshot().get_metadata();
    if meta.index < raft.raft_log.committed {
        return false;
    }
    let cs = meta.get_conf_state();
    let named = cs
        .get_voters()
        .iter()
        .chain(cs.get_learners())
        .chain(cs.get_voters_outgoing())
        .any(|&id| id == raft.id);
    if !named {
        return false;
    }
    !(raft.pending_request_snapshot == raft::INVALID_INDEX && raft.raft_log.match_term(meta.index, meta.term))
}
