//! The lost-state rule (`docs/design/replication.md`): a replica created without stored state
//! asks the others what they hold before it bootstraps or votes, and the vote checks that
//! follow from what they said.

use std::collections::BTreeMap;

use raft::RawNode;
use raft::prelude::{Message, MessageType};

use super::{Group, Replicas, redraw_timeout};
use crate::ids::RangeId;
use crate::store::{BOOTSTRAP_INDEX, GroupStore};
use crate::wire::{LogState, Probe};

/// A group asking the other replicas what they hold.
pub(super) struct Probing {
    /// Every replica of the range (this one too): the voters if the range turns out new.
    pub(super) voters: Vec<u64>,
    /// Each other replica's answer, once it came.
    pub(super) answers: BTreeMap<u64, Option<LogState>>,
}

impl Probing {
    pub(super) fn others(&self, me: u64) -> impl Iterator<Item = u64> + '_ {
        self.voters.iter().copied().filter(move |&id| id != me)
    }

    /// Enough answers: every majority of the group that could have committed an entry
    /// (this replica perhaps among it, having lost the entry) has a member among those that
    /// answered, i.e. half the group, rounded up, answered. The rest may be down.
    pub(super) fn complete(&self) -> bool {
        self.answers.len() >= self.voters.len().div_ceil(2)
    }
}

impl<S: GroupStore> Replicas<S> {
    /// The groups whose probing is complete: decide each (see [`Replicas::add_group`]).
    /// Only between rounds: a bootstrap replaces the group's `RawNode`.
    pub(super) fn settle_probes(&mut self) -> Result<(), raft::Error> {
        let done: Vec<RangeId> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.installing && g.probing.as_ref().is_some_and(Probing::complete))
            .map(|(&r, _)| r)
            .collect();
        for range in done {
            let Some(probing) = self.groups.get_mut(&range).and_then(|g| g.probing.take()) else {
                continue;
            };
            let reported: Vec<LogState> = probing.answers.values().flatten().copied().collect();
            let top_term = reported.iter().map(|l| l.term).max().unwrap_or(0);
            let best = reported
                .iter()
                .map(|l| (l.last_term, l.last_index))
                .max()
                .unwrap_or((0, 0));
            let new = reported.iter().all(|l| l.last_index <= BOOTSTRAP_INDEX);
            if new {
                let g = self.groups.get_mut(&range).expect("the group probing");
                g.node
                    .mut_store()
                    .bootstrap(&probing.voters)
                    .map_err(|e| raft::Error::ConfChangeError(e.to_string()))?;
                let store = g.node.store().clone();
                let node = self.raw_node(range, store)?;
                let g = self.groups.get_mut(&range).expect("the group probing");
                g.node = node;
                g.initialised = true;
                // No replica holds an entry past the bootstrap, so no leader ever committed
                // one of its term: no lease stands on this replica's answers.
                g.votes_held = 0;
                redraw_timeout(&mut self.rng, self.config.election_tick, g);
                self.pending.bootstrapped.push(range);
            }
            let g = self.groups.get_mut(&range).expect("the group probing");
            g.floor = Some(LogState {
                term: top_term,
                last_term: best.0,
                last_index: best.1,
            });
        }
        Ok(())
    }

    /// A probe from `from`: a question is answered with what this node holds of that history
    /// of the range (nothing while it is itself asking, or holds no group of that generation);
    /// an answer about the asking group's own history is recorded, any other dropped.
    pub(super) fn handle_probe(&mut self, from: u64, probe: Probe) {
        let (range, generation) = (probe.range, probe.generation);
        match probe.answer {
            None => {
                let group = self.groups.get(&range).filter(|g| g.generation == generation);
                if self.ended_here(range, generation) && group.is_none_or(|g| !g.initialised) {
                    // This node held that history, which ended, and holds nothing of it now
                    // (or waits for a live leader's snapshot): not new, and nothing to say.
                    return;
                }
                let held = group.filter(|g| g.probing.is_none()).map(|g| log_state(&g.node));
                self.probes.push((
                    from,
                    Probe {
                        range,
                        generation,
                        answer: Some(held),
                    },
                ));
            }
            Some(answer) => {
                let me = self.config.id;
                if let Some(p) = self
                    .groups
                    .get_mut(&range)
                    .filter(|g| g.generation == generation)
                    .and_then(|g| g.probing.as_mut())
                    && p.others(me).any(|id| id == from)
                {
                    p.answers.insert(from, answer);
                }
            }
        }
    }
}

/// What an uninitialised replica answers a leader's heartbeat with: a rejected append at the
/// heartbeat's commit index with a snapshot request, which raft-rs's leader takes (in
/// `Progress::maybe_decr_to`) as "send this follower a snapshot".
pub(super) fn ask_for_snapshot(heartbeat: &Message) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppendResponse);
    m.to = heartbeat.from;
    m.from = heartbeat.to;
    m.term = heartbeat.term;
    m.reject = true;
    m.index = heartbeat.commit;
    m.request_snapshot = heartbeat.commit.max(crate::store::BOOTSTRAP_INDEX);
    m
}

pub(super) fn is_vote(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    )
}

/// Whether the group may take `m`: anything but a (pre-)vote request; a vote request only as
/// the lost-state rule allows (none while probing; above the floor after; none at all for an
/// uninitialised group that has no floor).
///
/// And a pre-vote from a candidate whose log is exactly this replica's own (last term and
/// index) is left unanswered when the candidate ranks below this replica in the table's
/// order ([`outranks`]): two survivors with equal logs would otherwise both pass pre-vote,
/// split the vote, and, drawing equal timeouts, split it again (the failover's tail: 3.5 s
/// in 200 simulated kills, 1.0 s with this). A candidate with a better log is never held
/// back (raft-rs's own `priority` holds back any log of the same length, even a newer one,
/// which can leave two survivors unable to elect each other).
pub(super) fn may_step<S: GroupStore>(g: &mut Group<S>, m: &Message, me: u64) -> bool {
    if !is_vote(m) {
        return true;
    }
    if g.votes_held > 0 {
        return false;
    }
    if g.probing.is_some() {
        return false;
    }
    let floor = match g.floor {
        Some(f) => m.term > f.term && (m.log_term, m.index) >= (f.last_term, f.last_index),
        None => g.initialised,
    };
    // Counted only for a pre-vote the rules above would let through.
    if floor && outranks(g, m, me) {
        g.rank_holds += 1;
        return false;
    }
    floor
}

/// How many pre-votes in a row a replica leaves unanswered by rank ([`outranks`]) before it
/// answers them anyway: a lower-ranked candidate asks again after each of its election
/// timeouts, so this replica has one to two of its own to be elected first.
pub(super) const RANK_HOLDS: u32 = 2;

/// Whether pre-vote `m` is left unanswered because this replica ranks above its candidate
/// and their logs are equal ([`may_step`]), on the ground that this replica is itself a
/// candidate as good and will be elected soon. Only while that holds: it is a voter, not
/// muted ([`crate::Replicas::mute`]: it asks for no votes), with no committed entry left to
/// apply (raft-rs refuses to campaign with a configuration change committed and not
/// applied), and it has not held back [`RANK_HOLDS`] pre-votes in a row
/// without a leader since. Without that bound, a higher-ranked replica that could not win
/// (its campaign refused, or never reaching the other voter) left the group with no leader
/// for good: the two-voter stall of issue 26's fault runs.
pub(super) fn outranks<S: GroupStore>(g: &Group<S>, m: &Message, me: u64) -> bool {
    let raft = &g.node.raft;
    let log = &raft.raft_log;
    m.get_msg_type() == MessageType::MsgRequestPreVote
        && (m.log_term, m.index) == (log.last_term(), log.last_index())
        && rank(&g.order, m.from) < rank(&g.order, me)
        && raft.promotable()
        && !g.muted
        && log.applied >= log.committed
        && g.rank_holds < RANK_HOLDS
}

/// A replica's rank in its group's table order (the preferred leader first): higher for
/// earlier names, 0 for a node the order does not name.
pub(super) fn rank(order: &[u64], id: u64) -> usize {
    order.iter().position(|&o| o == id).map_or(0, |i| order.len() - i)
}

/// What a replica holds of its group, as a probe's answer says it.
pub(super) fn log_state<S: GroupStore>(node: &RawNode<S>) -> LogState {
    let log = &node.raft.raft_log;
    LogState {
        term: node.raft.term,
        last_term: log.last_term(),
        last_index: log.last_index(),
    }
}
