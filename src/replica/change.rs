//! Changing a group's replicas (issue 26): the target set a range should be held by, and the
//! steps its leader takes to get there, one Raft configuration change at a time.
//!
//! The steps, from the group's configuration (voters, learners) to a target set:
//! 1. a learner the target does not name is removed (what is left of an abandoned move);
//! 2. each target node that is neither voter nor learner is added as a learner, one at a
//!    time: it catches up (by snapshot and log) without counting towards any majority;
//! 3. once every such learner has the leader's committed entries, one change promotes them
//!    and removes the voters the target does not name, through joint consensus (raft-rs's
//!    `ConfChangeV2` with more than one change, left automatically, or by the next leader
//!    when its predecessor fell before leaving it);
//! 4. a leader the target does not name hands leadership to a target voter that is caught
//!    up, and the new leader removes it (raft-rs leaves a removed leader leading: never ask).
//!
//! Any replica that leads takes the next step from the configuration it sees, so a move
//! survives a change of leader. The change travels in the entry's context as postcard
//! ([`ReplicaChange`]): protobuf is never decoded from peers' bytes here (see `wire`), and
//! the entry's protobuf data is written for raft-rs's sake only.

use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState};
use serde::{Deserialize, Serialize};

/// One replica's part in a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// Becomes (or stays) a voter.
    AddVoter,
    /// Becomes a learner: receives the log, votes for nothing, counts for no majority.
    AddLearner,
    /// Leaves the group.
    Remove,
}

/// A configuration change: one step of a move ([`next_step`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaChange {
    /// Each replica's change. More than one enters joint consensus, left automatically.
    pub changes: Vec<(ChangeKind, u64)>,
}

impl ReplicaChange {
    /// The entry context that carries it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serialising plain structs into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The change an entry's context carries; an empty context is raft-rs's own "leave the
    /// joint configuration" entry. `None` for bytes that are no change.
    pub(crate) fn decode(context: &[u8]) -> Option<Self> {
        if context.is_empty() {
            return Some(ReplicaChange { changes: vec![] });
        }
        match postcard::take_from_bytes::<ReplicaChange>(context) {
            Ok((change, [])) => Some(change),
            _ => None,
        }
    }

    /// raft-rs's form: `Auto` transition (joint consensus, left by itself, when more than one
    /// replica changes); no changes at all leave a joint configuration.
    pub(crate) fn to_raft(&self) -> ConfChangeV2 {
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        let changes = self
            .changes
            .iter()
            .map(|&(kind, id)| {
                let mut single = ConfChangeSingle::default();
                single.set_change_type(match kind {
                    ChangeKind::AddVoter => ConfChangeType::AddNode,
                    ChangeKind::AddLearner => ConfChangeType::AddLearnerNode,
                    ChangeKind::Remove => ConfChangeType::RemoveNode,
                });
                single.node_id = id;
                single
            })
            .collect::<Vec<_>>();
        cc.set_changes(changes.into());
        cc
    }
}

/// What the leader does next to bring its group to a target set of replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Propose this change.
    Change(ReplicaChange),
    /// Hand leadership to this replica (a caught-up voter of the target).
    Transfer(u64),
    /// Nothing to do until a learner catches up (or a change under way applies).
    Wait,
    /// The group's voters are the target, and it has no learners.
    Done,
}

/// The next step from the configuration `conf` towards `target` at leader `leader`;
/// `caught_up` says whether a replica holds the leader's committed entries.
pub(crate) fn next_step(conf: &ConfState, target: &[u64], leader: u64, caught_up: impl Fn(u64) -> bool) -> Step {
    if !conf.voters_outgoing.is_empty() {
        // Joint: leave it (raft-rs proposes this by itself, unless its leader fell first).
        return Step::Change(ReplicaChange { changes: vec![] });
    }
    let (voters, learners) = (&conf.voters, &conf.learners);
    if let Some(&stray) = learners.iter().find(|l| !target.contains(l)) {
        return Step::Change(ReplicaChange {
            changes: vec![(ChangeKind::Remove, stray)],
        });
    }
    if let Some(&new) = target.iter().find(|n| !voters.contains(n) && !learners.contains(n)) {
        return Step::Change(ReplicaChange {
            changes: vec![(ChangeKind::AddLearner, new)],
        });
    }
    let promote: Vec<u64> = target.iter().copied().filter(|n| learners.contains(n)).collect();
    if promote.iter().any(|&n| !caught_up(n)) {
        return Step::Wait;
    }
    let remove = voters.iter().copied().filter(|v| !target.contains(v) && *v != leader);
    let changes: Vec<(ChangeKind, u64)> = promote
        .iter()
        .map(|&n| (ChangeKind::AddVoter, n))
        .chain(remove.map(|v| (ChangeKind::Remove, v)))
        .collect();
    if !changes.is_empty() {
        return Step::Change(ReplicaChange { changes });
    }
    if !target.contains(&leader) {
        return match target.iter().copied().find(|&t| voters.contains(&t) && caught_up(t)) {
            Some(to) => Step::Transfer(to),
            None => Step::Wait,
        };
    }
    Step::Done
}
