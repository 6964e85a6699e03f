//! [`Replicas`]: every Raft group this node holds, fed ticks, frames and proposals, drained one
//! round at a time. See the crate's doc for the contract.

mod install;
mod lost_state;
mod moves;

use std::collections::{BTreeMap, VecDeque};

use raft::prelude::{ConfState, Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, Ready, StateRole};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

pub use self::install::InstallRefused;
use self::install::is_streamed;
use self::lost_state::{Probing, ask_for_snapshot, is_vote, log_state, may_step};
use self::moves::{drive_move, is_from_leader};
use crate::change::ReplicaChange;
use crate::command::{Command, ProposalId};
use crate::ids::{Generation, RangeId};
use crate::output::{Applied, Failure, GroupWrite, Output, Persist, add_frames};
use crate::store::{GroupStore, StoreError};
use crate::wire::{Frame, LogState, Probe, Removed};

/// How this node's groups run. Ticks are the caller's timer (50 ms by default, the design's
/// figure): every timeout here is in ticks.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// This node's Raft id ([`crate::node_id`] of its name).
    pub id: u64,
    /// A follower campaigns after this many to twice as many silent ticks (0.5–1 s at 50 ms).
    pub election_tick: usize,
    /// A leader heartbeats every this many ticks.
    pub heartbeat_tick: usize,
    /// How long a leader's read lease lasts, in ticks, from a heartbeat round a majority
    /// answered ([`Replicas::lease_standing`]); 0: no leases. At most `election_tick - 3`,
    /// so a follower, which refuses votes for `election_tick - 1` ticks at least after it
    /// last heard from its leader, outlasts the lease by two ticks of clock drift. A group
    /// created here gives no vote for `lease_ticks + 2` ticks ([`Group::votes_held`]).
    pub lease_ticks: usize,
    /// Seeds the election timeouts, so a simulation replays exactly (see the crate's doc).
    pub seed: u64,
    /// Differs at every start of the node (a boot counter, or random): part of each
    /// [`ProposalId`], so a proposal of an earlier start is never acknowledged as a new one's.
    pub incarnation: u64,
    /// The most entry bytes in one append (raft-rs's `max_size_per_msg`).
    pub max_size_per_msg: u64,
    /// Where raft-rs's own log lines go; `slog::Discard` unless the node hands in a logger
    /// that forwards to tracing (step 4).
    pub logger: slog::Logger,
}

impl ReplicaConfig {
    /// The design's defaults for node `id`.
    pub fn new(id: u64, seed: u64, incarnation: u64) -> Self {
        ReplicaConfig {
            id,
            election_tick: 10,
            heartbeat_tick: 2,
            lease_ticks: 7,
            seed,
            incarnation,
            max_size_per_msg: 1 << 20,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        }
    }

    /// The lease in ticks, bounded as [`ReplicaConfig::lease_ticks`] says.
    pub fn lease(&self) -> usize {
        self.lease_ticks.min(self.election_tick.saturating_sub(3))
    }

    /// How many ticks a group created here gives no vote for: the longest lease a leader
    /// may hold on this replica's last answer before it went (a restart forgets whom it
    /// answered), counted in ticks that may come early by one.
    pub(crate) fn votes_held(&self) -> usize {
        match self.lease() {
            0 => 0,
            lease => lease + 2,
        }
    }
}

/// Where a leader stands for a read lease ([`Replicas::lease_standing`]): a lease taken at
/// one standing holds only while the standing is the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStanding {
    /// The leader's term.
    pub term: u64,
    /// Changes within the term that end a lease: a configuration applied (a transfer asked
    /// ends leases for the rest of the term).
    pub changes: u64,
}

/// A replica's part in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leads: proposals and reads are taken here.
    Leader,
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks for votes.
    Candidate,
    /// Asks whether it could win before disrupting anyone (pre-vote).
    PreCandidate,
}

/// Why a proposal or read was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node holds no group for the range.
    #[error("range {0} has no group here")]
    UnknownRange(RangeId),
    /// Only the leader takes proposals and reads; `leader` is the one this replica knows of.
    #[error("not the leader of range {range} (leader: {leader:?})")]
    NotLeader {
        /// The range.
        range: RangeId,
        /// The leader's Raft id, if known.
        leader: Option<u64>,
    },
    /// raft-rs refused it (a leader transfer under way, or too much uncommitted).
    #[error("range {0} dropped the proposal (leader transfer or backlog)")]
    Dropped(RangeId),
}

struct Group<S: GroupStore> {
    node: RawNode<S>,
    /// Which history of the range this replica belongs to ([`Generation`]): its messages
    /// carry it, and it steps only messages that carry it.
    generation: Generation,
    /// Accepted proposals of this node by log index and the term they were appended in (a
    /// node leading again may propose at the index of one of its earlier term's, unsettled).
    /// Only what commits settles one ([`apply`], [`settle_older`]): not an entry a new
    /// leader's log overwrote here, which may live on in another replica that a majority can
    /// still elect (five replicas, or a move's joint configuration).
    proposals: BTreeMap<(u64, u64), ProposalId>,
    /// The highest term of an entry this replica has applied (or of a snapshot installed).
    applied_term: u64,
    /// Reads taken since the last batch was asked of raft: (read id, term taken in).
    reads_new: Vec<(u64, u64)>,
    /// Batches of reads asked of raft, not yet confirmed: (the batch's context, the term
    /// asked in, its read ids). One read-index round serves every read of its batch.
    reads_asked: Vec<(u64, u64, Vec<u64>)>,
    /// Reads confirmed, waiting for the applied index to reach theirs: (index, read id).
    reads_confirmed: VecDeque<(u64, u64)>,
    /// The leader and term last reported.
    seen: (u64, u64),
    /// Knows its voters (bootstrapped, or a snapshot installed).
    initialised: bool,
    /// Created without stored state, and still asking the other replicas what they hold
    /// (the lost-state rule, `docs/design/replication.md`): it gives no vote meanwhile.
    probing: Option<Probing>,
    /// The replicas in the table's order (the preferred leader first), as given to
    /// `add_group`: ranks for pre-votes between equal logs.
    order: Vec<u64>,
    /// What the other replicas reported once all had answered: until this replica's own term
    /// and log pass it, it votes only in a later term and for a log at least as up to date.
    floor: Option<LogState>,
    /// The replicas the range is to be held by (a move, issue 26): whenever this replica
    /// leads, it takes the next step there ([`crate::change`]).
    target: Option<Vec<u64>>,
    /// Held still while a streamed snapshot's data is written ([`install`]): no ticks, no
    /// messages, no rounds.
    installing: bool,
    /// Ticks left before this replica gives votes ([`ReplicaConfig::votes_held`]): a replica
    /// that restarted does not know which leader's lease its last answer backs.
    votes_held: usize,
    /// [`LeaseStanding::changes`].
    lease_changes: u64,
    /// The term this replica last asked a leadership transfer in: no lease for the rest of
    /// it ([`transfer`]).
    transferred_in: Option<u64>,
    /// Asks for pre-votes only, never for votes ([`Replicas::mute`]).
    muted: bool,
    /// Pre-votes left unanswered by rank since this replica last knew a leader
    /// ([`lost_state::outranks`]).
    rank_holds: u32,
}

/// The Ready of a group between `poll_round` and `handle_persisted`, emptied of what was
/// handed out.
struct Held {
    range: RangeId,
    ready: Ready,
    write: GroupWrite,
    committed: Vec<Entry>,
    persisted_msgs: Vec<Message>,
}

/// How many ended histories of a range [`Replicas::note_ended`] keeps (the node's store keeps
/// as many).
pub const ENDED_NOTED: usize = 16;

/// Every Raft group this node holds (see the crate's doc).
pub struct Replicas<S: GroupStore> {
    config: ReplicaConfig,
    groups: BTreeMap<RangeId, Group<S>>,
    rng: SmallRng,
    next_proposal: u64,
    next_read: u64,
    next_round: u64,
    held: Option<(u64, Vec<Held>)>,
    /// Messages of the core's own, sent with the next round's early frames.
    outbox: Vec<(RangeId, Generation, Message)>,
    /// Probes and answers to send with the next round's early frames: (to, probe).
    probes: Vec<(u64, Probe)>,
    /// Answers to vote requests from nodes a group no longer counts: (to, answer).
    removed: Vec<(u64, Removed)>,
    /// Each range's histories that ended here, newest last, at most [`ENDED_NOTED`]; `None`
    /// for any history ([`Replicas::note_ended`]).
    ended: BTreeMap<RangeId, Vec<Option<Generation>>>,
    /// Events found while polling, released with the round.
    pending: Output,
}

impl<S: GroupStore> Replicas<S> {
    /// No groups yet.
    pub fn new(config: ReplicaConfig) -> Self {
        let rng = SmallRng::seed_from_u64(config.seed);
        Replicas {
            config,
            groups: BTreeMap::new(),
            rng,
            next_proposal: 1,
            next_read: 1,
            next_round: 1,
            held: None,
            outbox: vec![],
            probes: vec![],
            removed: vec![],
            ended: BTreeMap::new(),
            pending: Output::default(),
        }
    }

    /// Notes that `range`'s history `generation` ended while this node held it (the caller
    /// dropped its group, or remembers doing so): a probe of that history, which asks
    /// whether the range is new, is never answered "nothing held" from here (neither with
    /// no group of it, nor with one started again empty, waiting for a live leader's
    /// snapshot). Replicas that all dropped an ended history (a table that ran it again won
    /// over the one that ended it) so never agree to bootstrap it over nothing.
    ///
    /// `None`: any history of the range (the caller cannot read which: a damaged record).
    pub fn note_ended(&mut self, range: RangeId, generation: Option<Generation>) {
        let noted = self.ended.entry(range).or_default();
        if !noted.contains(&generation) {
            noted.push(generation);
            if noted.len() > ENDED_NOTED {
                noted.remove(0);
            }
        }
    }

    /// Whether `range`'s history `generation` ended here ([`Replicas::note_ended`]).
    pub(crate) fn ended_here(&self, range: RangeId, generation: Generation) -> bool {
        self.ended
            .get(&range)
            .is_some_and(|noted| noted.iter().any(|g| g.is_none_or(|g| g == generation)))
    }

    /// Takes a group on its store, `replicas` being the ids of every replica the table names
    /// for the range (this node among them). A store that holds the group (a restart) runs
    /// as it is. A store without it (no voters: a new range, or one this node held and
    /// forgot) starts uninitialised and asks the other replicas what they hold: once all
    /// have answered, the group bootstraps if the range is new ([`Output::bootstrapped`]),
    /// else it waits for a leader's snapshot, voting meanwhile only as the lost-state rule
    /// allows. With no `replicas`, such a group just waits for a snapshot and never votes.
    /// Replaces nothing: a range already held is refused. `generation` is the group's
    /// history ([`Generation`]), as the table gives it: only its messages reach the group.
    pub fn add_group(
        &mut self,
        range: RangeId,
        generation: Generation,
        store: S,
        replicas: &[u64],
    ) -> Result<(), raft::Error> {
        if self.groups.contains_key(&range) {
            return Err(raft::Error::Exists {
                id: self.config.id,
                set: "groups",
            });
        }
        let state = store.initial_state()?;
        let initialised = !state.conf_state.voters.is_empty();
        // A replica whose stored term is still its bootstrap's never answered a leader (an
        // answer is sent only once the term it learned is durable): it backs no lease.
        let votes_held = if initialised && state.hard_state.term <= crate::store::BOOTSTRAP_INDEX {
            0
        } else {
            self.config.votes_held()
        };
        let node = self.raw_node(range, store)?;
        let probing = (!initialised && !replicas.is_empty()).then(|| Probing {
            voters: replicas.to_vec(),
            answers: BTreeMap::new(),
        });
        let mut group = Group {
            node,
            generation,
            proposals: BTreeMap::new(),
            applied_term: 0,
            reads_new: vec![],
            reads_asked: vec![],
            reads_confirmed: VecDeque::new(),
            seen: (0, 0),
            initialised,
            probing,
            order: replicas.to_vec(),
            floor: None,
            target: None,
            installing: false,
            votes_held,
            lease_changes: 0,
            transferred_in: None,
            muted: false,
            rank_holds: 0,
        };
        redraw_timeout(&mut self.rng, self.config.election_tick, &mut group);
        self.groups.insert(range, group);
        Ok(())
    }

    fn raw_node(&self, range: RangeId, store: S) -> Result<RawNode<S>, raft::Error> {
        let cfg = Config {
            id: self.config.id,
            election_tick: self.config.election_tick,
            heartbeat_tick: self.config.heartbeat_tick,
            applied: store.applied(),
            max_size_per_msg: self.config.max_size_per_msg,
            max_inflight_msgs: 256,
            // Pre-vote and check-quorum: a node back from a partition cannot depose a healthy
            // leader, and a leader cut off from its majority steps down.
            pre_vote: true,
            check_quorum: true,
            // Read-index confirmed by a heartbeat round; raft-rs's `LeaseBased` counts its
            // lease in ticks, which stand still while the process is frozen. The node keeps
            // a lease of its own on the clock ([`Replicas::lease_standing`]).
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Config::default()
        };
        let logger = self.config.logger.new(slog::o!("range" => range.to_string()));
        RawNode::new(&cfg, store, &logger)
    }

    /// Drops the group (this node left it, or its move was abandoned before it joined),
    /// handing back its store for the caller to clear. Refused while a round is outstanding.
    pub fn remove_group(&mut self, range: RangeId) -> Option<S> {
        if self.held.is_some() {
            return None;
        }
        self.groups.remove(&range).map(|g| g.node.store().clone())
    }

    /// Sets the replicas `range` is to be held by (`None`: no move). Every replica is told,
    /// so whichever leads takes the next step; a target with no replica is refused.
    pub fn set_target(&mut self, range: RangeId, target: Option<Vec<u64>>) -> Result<(), ProposeError> {
        let g = self.groups.get_mut(&range).ok_or(ProposeError::UnknownRange(range))?;
        if target.as_ref().is_some_and(Vec::is_empty) {
            return Err(ProposeError::Dropped(range));
        }
        g.target = target;
        Ok(())
    }

    /// The group's configuration as this replica last applied it (voters, learners, and the
    /// outgoing voters while joint).
    pub fn conf(&self, range: RangeId) -> Option<ConfState> {
        self.groups
            .get(&range)
            .map(|g| g.node.raft.prs().conf().to_conf_state())
    }

    /// At a leader: whether a configuration change is in the group's log and not yet
    /// applied (a leader proposes one at a time; a new leader counts its whole log as one
    /// until it has applied it). Meaningless elsewhere (raft-rs keeps the mark at leaders
    /// only). `None` for a range not held.
    pub fn changing(&self, range: RangeId) -> Option<bool> {
        self.groups
            .get(&range)
            .map(|g| g.node.raft.pending_conf_index > g.node.raft.raft_log.applied)
    }

    /// Whether the group knows its voters (bootstrapped, restarted with them, or made whole
    /// by a snapshot); `None` for a range not held.
    pub fn initialised(&self, range: RangeId) -> Option<bool> {
        self.groups.get(&range).map(|g| g.initialised)
    }

    /// The ranges held.
    pub fn ranges(&self) -> impl Iterator<Item = RangeId> + '_ {
        self.groups.keys().copied()
    }

    /// The leader this replica knows of.
    pub fn leader(&self, range: RangeId) -> Option<u64> {
        let g = self.groups.get(&range)?;
        Some(g.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    /// What this replica knows of `range`'s group, for a log line when the group has been
    /// without a leader for long: role, term and vote, its log (last entry, commit, applied),
    /// its configuration, and what holds its votes back.
    pub fn describe(&self, range: RangeId) -> Option<String> {
        let g = self.groups.get(&range)?;
        let raft = &g.node.raft;
        let log = &raft.raft_log;
        let conf = raft.prs().conf().to_conf_state();
        Some(format!(
            "{:?} at term {} (voted for {}), log to {} (term {}), committed {}, applied {}; voters {:?}, outgoing {:?}, learners {:?}; promotable {}, muted {}, pre-votes held by rank {}, votes held {} ticks, probing {}, installing {}",
            raft.state,
            raft.term,
            raft.vote,
            log.last_index(),
            log.last_term(),
            log.committed,
            log.applied,
            conf.voters,
            conf.voters_outgoing,
            conf.learners,
            raft.promotable(),
            g.muted,
            g.rank_holds,
            g.votes_held,
            g.probing.is_some(),
            g.installing,
        ))
    }

    /// This replica's role and term in the group.
    pub fn role(&self, range: RangeId) -> Option<(Role, u64)> {
        let g = self.groups.get(&range)?;
        let role = match g.node.raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        };
        Some((role, g.node.raft.term))
    }

    #[cfg(test)]
    pub(crate) fn debug_progress(&self, range: RangeId) -> String {
        let g = &self.groups[&range];
        format!(
            "{:?}",
            g.node
                .raft
                .prs()
                .iter()
                .map(|(id, p)| (
                    *id,
                    p.matched,
                    p.next_idx,
                    p.state,
                    p.pending_snapshot,
                    p.pending_request_snapshot,
                    p.recent_active
                ))
                .collect::<Vec<_>>()
        ) + &format!(
            " log {} {} {}",
            g.node.raft.raft_log.first_index(),
            g.node.raft.raft_log.last_index(),
            g.node.raft.raft_log.committed
        )
    }

    /// From now on `range`'s replica asks for pre-votes but never for votes, so it can never
    /// lead: for a group the caller runs only to hear whether the others still count it (a
    /// vote request of a node a group leaves out is answered with [`crate::Removed`]).
    pub fn mute(&mut self, range: RangeId) {
        if let Some(g) = self.groups.get_mut(&range) {
            g.muted = true;
        }
    }

    /// The history of `range`'s group held here ([`Generation`]), if one is.
    pub fn generation(&self, range: RangeId) -> Option<Generation> {
        self.groups.get(&range).map(|g| g.generation)
    }

    /// The group's store (for the caller's reads of the applied state).
    pub fn store(&self, range: RangeId) -> Option<&S> {
        self.groups.get(&range).map(|g| g.node.store())
    }

    /// One tick of the caller's timer, for every group. A group still probing asks again
    /// every replica that has not answered.
    pub fn handle_tick(&mut self) {
        let me = self.config.id;
        for (&range, g) in self.groups.iter_mut().filter(|(_, g)| !g.installing) {
            g.node.tick();
            g.votes_held = g.votes_held.saturating_sub(1);
            redraw_timeout(&mut self.rng, self.config.election_tick, g);
            if let Some(p) = &g.probing {
                for to in p.others(me).filter(|id| !p.answers.contains_key(id)) {
                    let probe = Probe {
                        range,
                        generation: g.generation,
                        answer: None,
                    };
                    self.probes.push((to, probe));
                }
            }
            // Past the floor, raft's own vote check covers what the floor stood for.
            if let Some(f) = g.floor {
                let own = log_state(&g.node);
                if own.term > f.term && (own.last_term, own.last_index) >= (f.last_term, f.last_index) {
                    g.floor = None;
                }
            }
        }
    }

    /// A frame from the peer `from` (authenticated by the transport). Messages that claim
    /// another sender, are for another node, a range not held here or another history of it
    /// (generation) are dropped: their count is returned (raft resends what matters).
    pub fn handle_frame(&mut self, from: u64, frame: Frame) -> usize {
        let mut dropped = 0;
        for probe in frame.probes {
            self.handle_probe(from, probe);
        }
        for removed in frame.removed {
            self.handle_removed(from, removed);
        }
        for (range, generation, msg) in frame.msgs {
            let me = self.config.id;
            let group = self.groups.get_mut(&range);
            if group.as_ref().is_some_and(|g| g.generation != generation) {
                dropped += 1;
                continue;
            }
            // Converted once: every message of every round passes here.
            let raft = msg.to_raft();
            // A vote asked by a node this group's applied configuration leaves out: told so.
            if let (Some(g), Ok(m)) = (group.as_ref(), raft.as_ref())
                && is_vote(m)
                && m.from == from
                && let Some(applied) = leaves_out(g, from)
            {
                let removed = Removed {
                    range,
                    generation,
                    applied,
                };
                self.removed.push((from, removed));
            }
            let stepped = match (group, raft) {
                // A leadership transfer is asked by this node's driver alone (hand-backs, a
                // move's steps), never by a peer: it ends the leader's lease for the term.
                (Some(g), Ok(mut m))
                    if m.from == from
                        && m.to == me
                        && !g.installing
                        && !is_streamed(&m)
                        && m.get_msg_type() != MessageType::MsgTransferLeader =>
                {
                    if !may_step(g, &m, me) {
                        dropped += 1;
                        continue;
                    }
                    if !g.initialised && m.get_msg_type() == MessageType::MsgHeartbeat {
                        // Not counted towards a read-index round (its context dropped): the
                        // lost-state rule may yet replace this replica's raft state with a new
                        // range's, which forgets having heard from a leader and votes at once,
                        // so it must back no lease.
                        m.context = Default::default();
                        // The leader still counts what this replica held before it lost its
                        // state: raft-rs panics on a commit index past its log ("lost log"),
                        // and an idle leader would never look. So the commit is clamped, and
                        // the replica answers as raft-rs's `request_snapshot` would have (it
                        // cannot on an empty log): a rejected append asking for a snapshot.
                        self.outbox.push((range, generation, ask_for_snapshot(&m)));
                        m.commit = m.commit.min(g.node.raft.raft_log.last_index());
                    }
                    let ok = g.node.step(m).is_ok();
                    redraw_timeout(&mut self.rng, self.config.election_tick, g);
                    ok
                }
                (None, Ok(m)) if m.from == from && m.to == me && is_from_leader(&m) => {
                    // A leader adding this node to the range's group (a move): the caller
                    // decides whether to hold it ([`Output::unknown`]).
                    if !self.pending.unknown.contains(&(range, from)) {
                        self.pending.unknown.push((range, from));
                    }
                    false
                }
                _ => false,
            };
            dropped += usize::from(!stepped);
        }
        dropped
    }

    /// A replica of `from`'s group says its applied configuration leaves this node out. Taken
    /// (in [`Output::removed`]) only from a voter of this node's own configuration, and only
    /// when this node's log holds nothing past the sender's applied index: every entry it
    /// holds is then held by the majority that committed that configuration, so nothing this
    /// node acknowledged is counted on it alone, and it is not a voter of any configuration
    /// since (it would hold that configuration's entries).
    ///
    /// Of this group's own history only (its generation): a replica of another history is
    /// no voter of this one whatever its id.
    fn handle_removed(&mut self, from: u64, removed: Removed) {
        let Some(g) = self
            .groups
            .get(&removed.range)
            .filter(|g| g.generation == removed.generation)
        else {
            return;
        };
        let raft = &g.node.raft;
        let voter = raft.prs().conf().voters().contains(from);
        let last = raft.raft_log.last_index();
        if g.initialised
            && !g.installing
            && voter
            && raft.state != StateRole::Leader
            && last <= removed.applied
            && !self
                .pending
                .removed
                .iter()
                .any(|&(r, by, _)| (r, by) == (removed.range, from))
        {
            self.pending.removed.push((removed.range, from, last));
        }
    }

    /// Proposes a write to the range; only its leader takes it. Acknowledged in a later
    /// round's [`Output::acked`] once applied here, or reported in [`Output::failed`].
    pub fn propose(&mut self, range: RangeId, command: &Command) -> Result<ProposalId, ProposeError> {
        let id = ProposalId {
            incarnation: self.config.incarnation,
            seq: self.next_proposal,
        };
        let g = self.leading(range)?;
        g.node
            .propose(id.to_context(), command.encode())
            .map_err(|_| ProposeError::Dropped(range))?;
        let index = g.node.raft.raft_log.last_index();
        g.proposals.insert((index, g.node.raft.term), id);
        self.next_proposal += 1;
        Ok(id)
    }

    /// Asks for a linearizable read of the range; only its leader takes it. The returned id
    /// comes back in [`Output::reads`] once a quorum confirmed the leadership and the applied
    /// state covers every write acknowledged before the call, or in `failed_reads`.
    ///
    /// Reads taken between two rounds share one read-index round (asked at the next
    /// `poll_round`): its leadership check and commit index, both taken after every read of
    /// the batch was, serve them all, so many clients' reads cost one heartbeat round.
    pub fn read_index(&mut self, range: RangeId) -> Result<u64, ProposeError> {
        let id = self.next_read;
        let g = self.leading(range)?;
        let term = g.node.raft.term;
        g.reads_new.push((id, term));
        self.next_read += 1;
        Ok(id)
    }

    /// Starts an election for the range now (the preferred leader, at bootstrap). Refused
    /// (`Dropped`) while the group is uninitialised: it knows no voters to ask.
    pub fn campaign(&mut self, range: RangeId) -> Result<(), ProposeError> {
        let g = self.groups.get_mut(&range).ok_or(ProposeError::UnknownRange(range))?;
        if !g.initialised {
            return Err(ProposeError::Dropped(range));
        }
        let started = g.node.campaign().map_err(|_| ProposeError::Dropped(range));
        redraw_timeout(&mut self.rng, self.config.election_tick, g);
        started
    }

    /// Whether replica `id` is heard from (within the last election timeout) and holds every
    /// entry of this leader's log, so a leadership handed to it costs no catch-up and no
    /// wait on a dead node; `false` where this node does not lead the range.
    pub fn caught_up(&self, range: RangeId, id: u64) -> bool {
        let Some(g) = self.groups.get(&range) else { return false };
        let raft = &g.node.raft;
        raft.state == StateRole::Leader
            && raft
                .prs()
                .get(id)
                .is_some_and(|p| p.recent_active && p.matched == raft.raft_log.last_index())
    }

    /// Hands the range's leadership to `to` (the preferred leader, once caught up).
    pub fn transfer_leader(&mut self, range: RangeId, to: u64) -> Result<(), ProposeError> {
        let g = self.leading(range)?;
        transfer(g, to);
        Ok(())
    }

    /// Where this node stands for a read lease on `range`: `Some` only while it leads, has
    /// committed an entry of its term (so its applied state holds every write acknowledged
    /// in earlier terms once it applied that far) and hands its leadership to no one.
    ///
    /// The caller keeps the lease (the core has no clock): a read-index round asked at time
    /// `t` at standing `s` and confirmed (in [`Output::reads`]) while the standing is still
    /// `s` lets this leader serve reads from its applied state until `t` plus
    /// [`ReplicaConfig::lease`] ticks, as long as the standing stays `s`. No other leader can
    /// be elected before then: a majority answered a heartbeat sent after `t`, and each of
    /// them refuses votes for `election_tick - 1` ticks after it (raft-rs's check-quorum
    /// lease), or, restarted since, for [`ReplicaConfig::votes_held`] ticks after its start.
    /// A transfer's campaign passes that refusal, so once one is asked there is no lease for
    /// the rest of the term; applying a configuration, whose majorities are other ones,
    /// changes the standing.
    pub fn lease_standing(&self, range: RangeId) -> Option<LeaseStanding> {
        let g = self.groups.get(&range)?;
        let raft = &g.node.raft;
        (self.config.lease() > 0
            && raft.state == StateRole::Leader
            && raft.lead_transferee.is_none()
            && g.transferred_in != Some(raft.term)
            && raft.commit_to_current_term()
            && !g.installing)
            .then_some(LeaseStanding {
                term: raft.term,
                changes: g.lease_changes,
            })
    }

    /// Where this leader's log must start for the followers it is catching up, so that a
    /// compaction does not leave one needing a(nother) snapshot: the entry after the snapshot
    /// a follower is taking (a move's new node installing a large range takes seconds, while
    /// writes go on), or after what an active follower holds. A follower not heard from within
    /// an election timeout holds nothing back. `None` where this node does not lead.
    pub fn keep_from(&self, range: RangeId) -> Option<u64> {
        let g = self.groups.get(&range)?;
        let raft = &g.node.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let next = raft.raft_log.last_index() + 1;
        let needed = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != raft.id)
            .filter_map(|(_, p)| match p.state {
                raft::ProgressState::Snapshot => Some(p.pending_snapshot + 1),
                _ if p.recent_active => Some(p.matched + 1),
                _ => None,
            });
        Some(needed.fold(next, u64::min))
    }

    /// Drops the range's log up to `index` (at most the applied index).
    pub fn compact(&mut self, range: RangeId, index: u64) -> Result<(), StoreError> {
        match self.groups.get_mut(&range) {
            Some(g) => g.node.mut_store().compact(index),
            None => Ok(()),
        }
    }

    fn leading(&mut self, range: RangeId) -> Result<&mut Group<S>, ProposeError> {
        let g = self.groups.get_mut(&range).ok_or(ProposeError::UnknownRange(range))?;
        if g.node.raft.state != StateRole::Leader {
            let leader = Some(g.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID);
            return Err(ProposeError::NotLeader { range, leader });
        }
        Ok(g)
    }
}

/// Why a round could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// `handle_persisted` named a round that is not the one outstanding.
    #[error("round {0} is not outstanding")]
    UnknownRound(u64),
    /// A group's store refused the round's writes; the core is then unusable (as a node whose
    /// disk fails), and the caller stops it.
    #[error("range {0}: {1}")]
    Store(RangeId, StoreError),
}

impl<S: GroupStore> Replicas<S> {
    /// Drains every group with something to do into one round: what to persist, in one
    /// write. `None` when there is nothing to do, or while a round is outstanding (rounds are
    /// made durable in order, one at a time; inputs are still taken meanwhile).
    pub fn poll_round(&mut self) -> Option<Persist> {
        if self.held.is_some() {
            return None;
        }
        if let Err(e) = self.settle_probes() {
            // A store that cannot write the bootstrap: the group keeps waiting for a snapshot.
            slog::error!(self.config.logger, "bootstrap failed"; "error" => %e);
        }
        let mut held = vec![];
        let mut early: BTreeMap<u64, Frame> = BTreeMap::new();
        for (range, generation, m) in std::mem::take(&mut self.outbox) {
            add_frames(&mut early, range, generation, vec![m]);
        }
        for (to, probe) in std::mem::take(&mut self.probes) {
            early.entry(to).or_default().probes.push(probe);
        }
        for (to, removed) in std::mem::take(&mut self.removed) {
            early.entry(to).or_default().removed.push(removed);
        }
        for g in self.groups.values_mut().filter(|g| !g.installing) {
            drive_move(g);
        }
        for (&range, g) in self.groups.iter_mut().filter(|(_, g)| !g.installing) {
            note_leadership(range, g, &mut self.pending);
            // Asked only once the leader has committed an entry of its term: raft-rs drops a
            // read-index asked before that without a word (a new leader does not know the
            // commit index yet), and the batch would wait for an answer that never comes.
            // Until then (a round trip after the election) the reads wait here.
            if let Some(&(ctx, term)) = g.reads_new.first()
                && g.node.raft.commit_to_current_term()
            {
                // (Still leading in the term they were taken in: `note_leadership` failed
                // them otherwise.)
                g.node.read_index(ctx.to_be_bytes().to_vec());
                let ids = g.reads_new.drain(..).map(|(id, _)| id).collect();
                g.reads_asked.push((ctx, term, ids));
            }
            if !g.node.has_ready() {
                continue;
            }
            let mut ready = g.node.ready();
            add_frames(&mut early, range, g.generation, outgoing(g, ready.take_messages()));
            for rs in ready.take_read_states() {
                let id = rs.request_ctx.as_slice().try_into().ok().map(u64::from_be_bytes);
                if let Some(pos) = g.reads_asked.iter().position(|(ctx, _, _)| Some(*ctx) == id) {
                    let (_, _, ids) = g.reads_asked.remove(pos);
                    g.reads_confirmed.extend(ids.into_iter().map(|id| (rs.index, id)));
                }
            }
            let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
            let write = GroupWrite {
                range,
                snapshot,
                entries: ready.take_entries(),
                hard_state: ready.hs().cloned(),
            };
            let committed = ready.take_committed_entries();
            let persisted_msgs = ready.take_persisted_messages();
            held.push(Held {
                range,
                ready,
                write,
                committed,
                persisted_msgs,
            });
        }
        if held.is_empty() && early.is_empty() && self.pending.is_empty() {
            return None;
        }
        let round = self.next_round;
        self.next_round += 1;
        let groups = held.iter().map(|h| h.write.clone()).collect();
        self.held = Some((round, held));
        Some(Persist {
            round,
            groups,
            send_early: early.into_iter().collect(),
        })
    }

    /// The caller made `round` durable: the core writes it into the groups' stores, applies
    /// what is committed, and releases what had to wait for the sync.
    pub fn handle_persisted(&mut self, round: u64) -> Result<Output, RoundError> {
        let held = match self.held.take() {
            Some((r, held)) if r == round => held,
            other => {
                self.held = other;
                return Err(RoundError::UnknownRound(round));
            }
        };
        let mut out = std::mem::take(&mut self.pending);
        let mut frames = BTreeMap::new();
        for h in held {
            let Some(g) = self.groups.get_mut(&h.range) else {
                continue;
            };
            complete(h, g, &mut frames, &mut out)?;
        }
        out.frames = frames.into_iter().collect();
        Ok(out)
    }

    /// The transport could not deliver a snapshot to `to` (or did): raft-rs holds the
    /// follower in snapshot state until told.
    pub fn report_snapshot(&mut self, range: RangeId, to: u64, delivered: bool) {
        if let Some(g) = self.groups.get_mut(&range) {
            let status = if delivered {
                raft::SnapshotStatus::Finish
            } else {
                raft::SnapshotStatus::Failure
            };
            g.node.report_snapshot(to, status);
        }
    }
}

/// raft-rs draws each election timeout from `thread_rng`, which no seed reaches. Whenever a
/// group's election clock was just reset (a new term, a campaign, a heartbeat), the timeout is
/// drawn again here from the core's seeded generator, in raft-rs's own window
/// `[election_tick, 2 × election_tick)`: a replay of the same inputs then elects the same
/// leaders at the same ticks. Called after every input that can reset the clock.
fn redraw_timeout<S: GroupStore>(rng: &mut SmallRng, election_tick: usize, g: &mut Group<S>) {
    let raft = &mut g.node.raft;
    if raft.election_elapsed == 0 {
        raft.set_randomized_election_timeout(rng.random_range(election_tick..2 * election_tick));
    }
}

/// The applied index of `g`, when its applied configuration leaves `id` out (neither voter,
/// outgoing voter nor learner): the answer to a vote request from `id`.
fn leaves_out<S: GroupStore>(g: &Group<S>, id: u64) -> Option<u64> {
    let conf = g.node.raft.prs().conf().to_conf_state();
    let counted = [&conf.voters, &conf.voters_outgoing, &conf.learners, &conf.learners_next]
        .iter()
        .any(|ids| ids.contains(&id));
    (g.initialised && !g.installing && !counted).then(|| g.node.raft.raft_log.applied)
}

/// The messages of `g` that may go: all of them, but a muted replica's vote requests.
fn outgoing<S: GroupStore>(g: &Group<S>, mut msgs: Vec<Message>) -> Vec<Message> {
    if g.muted {
        msgs.retain(|m| m.get_msg_type() != MessageType::MsgRequestVote);
    }
    msgs
}

/// Hands the group's leadership to `to`, ending its lease first: the target campaigns at
/// once, and the voters let a transfer's campaign through although they heard from this
/// leader just now. No lease is taken again in this term, even once raft-rs gives the
/// transfer up: the target may take its message (`MsgTimeoutNow`) any time later (it was
/// frozen, the message was slow) and campaign then, past the voters' refusal. A leader
/// elected in a later term is out of that message's reach.
fn transfer<S: GroupStore>(g: &mut Group<S>, to: u64) {
    g.transferred_in = Some(g.node.raft.term);
    g.node.transfer_leader(to);
}

/// One group's part of `handle_persisted`, in raft-rs's order.
fn complete<S: GroupStore>(
    h: Held,
    g: &mut Group<S>,
    frames: &mut BTreeMap<u64, Frame>,
    out: &mut Output,
) -> Result<(), RoundError> {
    let range = h.range;
    let err = |e| RoundError::Store(range, e);
    let w = &h.write;
    g.node
        .mut_store()
        .persist(w.snapshot.as_ref(), &w.entries, w.hard_state.as_ref())
        .map_err(err)?;
    if let Some(snap) = &w.snapshot {
        g.initialised = true;
        // A leader made it whole: nothing it reported could add to what it now holds.
        g.probing = None;
        let index = snap.get_metadata().index;
        out.installed.push((range, index));
        // The snapshot may or may not hold them: neither acknowledged nor denied.
        while let Some(entry) = g.proposals.first_entry().filter(|e| e.key().0 <= index) {
            out.failed.push((entry.remove(), Failure::Unknown));
        }
        // Past it, a proposal of an older term never commits (below).
        settle_older(g, snap.get_metadata().term, out);
    }
    // Votes and follower acknowledgements: only now that the round is durable.
    add_frames(frames, range, g.generation, outgoing(g, h.persisted_msgs));
    apply(range, g, h.committed, out).map_err(err)?;
    let mut light = g.node.advance(h.ready);
    if let Some(commit) = light.commit_index() {
        g.node.mut_store().set_commit(commit).map_err(err)?;
    }
    add_frames(frames, range, g.generation, outgoing(g, light.take_messages()));
    apply(range, g, light.take_committed_entries(), out).map_err(err)?;
    g.node.advance_apply();
    let applied = g.node.store().applied();
    while let Some(&(_, id)) = g.reads_confirmed.front().filter(|(index, _)| *index <= applied) {
        g.reads_confirmed.pop_front();
        out.reads.push((range, id));
    }
    Ok(())
}

/// Applies committed entries in order and settles this node's proposals up to each: the one
/// at its own index with its own id is acknowledged; one whose index now holds another entry
/// never will be.
fn apply<S: GroupStore>(
    range: RangeId,
    g: &mut Group<S>,
    entries: Vec<Entry>,
    out: &mut Output,
) -> Result<(), StoreError> {
    let mut rest = entries.as_slice();
    while !rest.is_empty() {
        // A configuration change alone; the entries up to the next one in one store write.
        let is_change = |e: &Entry| e.get_entry_type() == EntryType::EntryConfChangeV2;
        let len = if is_change(&rest[0]) {
            1
        } else {
            rest.iter().position(is_change).unwrap_or(rest.len())
        };
        let (part, after) = rest.split_at(len);
        rest = after;
        let decoded: Vec<(Option<ProposalId>, Option<Command>)> = part
            .iter()
            .map(|e| {
                let normal = e.get_entry_type() == EntryType::EntryNormal;
                let proposal = normal.then(|| ProposalId::from_context(e.get_context())).flatten();
                // An undecodable command (none is ever proposed) applies as nothing on every
                // replica alike.
                let command = (normal && !e.get_data().is_empty())
                    .then(|| Command::decode(e.get_data()))
                    .flatten();
                (proposal, command)
            })
            .collect();
        let effects = if is_change(&part[0]) {
            vec![apply_change(range, g, &part[0], out)?]
        } else {
            let run: Vec<(u64, Option<&Command>)> = part
                .iter()
                .zip(&decoded)
                .map(|(e, (_, command))| (e.index, command.as_ref()))
                .collect();
            g.node.mut_store().apply_run(&run)?
        };
        for ((e, (proposal, command)), effect) in part.iter().zip(decoded).zip(effects) {
            while let Some(entry) = g.proposals.first_entry().filter(|p| p.key().0 <= e.index) {
                // An entry is its index and term (a proposal id alone could repeat across
                // nodes whose incarnations are boot counters).
                let ((index, term), id) = entry.remove_entry();
                if index == e.index && term == e.term && proposal == Some(id) {
                    out.acked.push((id, effect));
                } else {
                    out.failed.push((id, Failure::Overwritten));
                }
            }
            out.applied.push(Applied {
                range,
                index: e.index,
                term: e.term,
                proposal,
                command,
            });
        }
        if let Some(last) = part.last() {
            settle_older(g, last.term, out);
        }
    }
    Ok(())
}

/// Fails, as never to apply, every proposal of a term older than `term`, that of an entry
/// now committed (applied, or a snapshot's last): terms never go down along a log, and every
/// later leader's log holds the committed one, so whatever commits past it is of `term` or
/// newer. (Proposals at or below the entry's index are settled by the caller.) Looked at
/// only when the applied term grows: once per leadership change.
fn settle_older<S: GroupStore>(g: &mut Group<S>, term: u64, out: &mut Output) {
    if term <= g.applied_term {
        return;
    }
    g.applied_term = term;
    g.proposals.retain(|&(_, t), &mut id| {
        let older = t < term;
        if older {
            out.failed.push((id, Failure::Overwritten));
        }
        !older
    });
}

/// Applies a committed configuration change: a change that is none, or that raft-rs refuses
/// (it refuses alike on every replica: the configuration before it is the same), applies as
/// nothing.
fn apply_change<S: GroupStore>(
    range: RangeId,
    g: &mut Group<S>,
    e: &Entry,
    out: &mut Output,
) -> Result<crate::Effect, StoreError> {
    let conf = ReplicaChange::decode(e.get_context())
        .and_then(|change| g.node.apply_conf_change(&change.to_raft()).ok())
        .inspect(|_| g.lease_changes += 1);
    let Some(cs) = conf else {
        return g.node.mut_store().apply(e.index, None);
    };
    let raft = &mut g.node.raft;
    if raft.state == StateRole::Leader && !cs.voters.contains(&raft.id) {
        // Removed while leading: a leader never proposes its own removal, but a
        // predecessor's uncommitted one can commit under it. raft-rs would keep leading
        // outside the group (and panic on its next commit): step down, and the remaining
        // voters elect one of themselves.
        let term = raft.term;
        raft.become_follower(term, raft::INVALID_ID);
    }
    g.node.mut_store().apply_conf(e.index, &cs)?;
    out.configured.push((range, cs));
    Ok(crate::Effect::Nothing)
}

/// Reports a new leader or term, and fails the reads a deposed leader will never confirm
/// (raft-rs forgets them when it steps down).
fn note_leadership<S: GroupStore>(range: RangeId, g: &mut Group<S>, pending: &mut Output) {
    let raft = &g.node.raft;
    let leader = Some(raft.leader_id).filter(|&id| id != raft::INVALID_ID);
    if leader.is_some() {
        g.rank_holds = 0;
    }
    if (raft.leader_id, raft.term) != g.seen {
        g.seen = (raft.leader_id, raft.term);
        pending.leaders.push((range, leader, raft.term));
    }
    let leading = raft.state == StateRole::Leader;
    let term = raft.term;
    g.reads_new.retain(|&(id, asked)| {
        let alive = leading && asked == term;
        if !alive {
            pending.failed_reads.push((range, id, leader));
        }
        alive
    });
    g.reads_asked.retain(|(_, asked, ids)| {
        let alive = leading && *asked == term;
        if !alive {
            pending.failed_reads.extend(ids.iter().map(|&id| (range, id, leader)));
        }
        alive
    });
}
