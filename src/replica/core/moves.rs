//! A move's steps at the range's leader ([`crate::change`]): the core's side of issue 26.

use raft::StateRole;
use raft::prelude::{Message, MessageType};

use super::Group;
use crate::change::{Step, next_step};
use crate::store::GroupStore;

/// At the leader of a range with a target ([`Replicas::set_target`]), takes the next step of
/// the move: proposes a configuration change (one at a time: none while one is proposed and
/// not yet applied) or hands leadership over (none while a hand-over is under way).
pub(super) fn drive_move<S: GroupStore>(g: &mut Group<S>) {
    let raft = &g.node.raft;
    let Some(target) = &g.target else { return };
    if raft.state != StateRole::Leader || raft.pending_conf_index > raft.raft_log.applied {
        return;
    }
    let committed = raft.raft_log.committed;
    let prs = raft.prs();
    let caught_up = |id: u64| prs.get(id).is_some_and(|p| p.recent_active && p.matched >= committed);
    match next_step(&prs.conf().to_conf_state(), target, raft.id, caught_up) {
        Step::Change(change) => {
            // Refused only while another change is pending: taken again next round.
            let _ = g.node.propose_conf_change(change.encode(), change.to_raft());
        }
        Step::Transfer(to) if raft.lead_transferee.is_none() => super::transfer(g, to),
        Step::Transfer(_) | Step::Wait | Step::Done => {}
    }
}

/// A message only a leader sends to its followers and learners.
pub(super) fn is_from_leader(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
    )
}
