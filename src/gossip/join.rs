//! Full-state exchanges (push-pull), joins with the unique-name check, reconnects to dead
//! members after partitions, and leaving.

use crate::table::Table;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngExt;

use super::core::{Event, Gossip};
use super::members::Slot;
use super::message::{Ident, MemberState, Message, PushPull, Sender, State, Update};

/// The first join retry waits this long; each failure doubles it up to `join_retry_max`.
const FIRST_JOIN_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum JoinPhase {
    /// Asked the seed; no answer yet.
    Waiting(Instant),
    /// The last attempt failed; try again then.
    Backoff(Instant),
}

#[derive(Debug)]
pub(super) struct JoinAttempt {
    seed: SocketAddr,
    token: u32,
    phase: JoinPhase,
    backoff: Duration,
}

impl JoinAttempt {
    pub fn deadline(&self) -> Instant {
        match self.phase {
            JoinPhase::Waiting(t) | JoinPhase::Backoff(t) => t,
        }
    }
}

/// A join whose name is held by a member alive elsewhere: that member is pinged first, and
/// the join is refused if it answers, accepted (as a restart) if it stays silent for a probe
/// interval.
#[derive(Debug)]
pub(super) struct LivenessCheck<T> {
    seq: u32,
    old: Ident,
    join: Box<PushPull<T>>,
    pub deadline: Instant,
}

#[derive(Debug)]
pub(super) struct Leaving {
    seq: u32,
    asked: Vec<Ident>,
    acked: Vec<Ident>,
    needed: usize,
    /// When to ask more members; `None` once acknowledged.
    retry: Option<Instant>,
}

impl Leaving {
    pub fn deadline(&self) -> Option<Instant> {
        self.retry
    }
}

/// The longest refusal reason passed on to the driver.
const MAX_REASON: usize = 512;

/// Pending liveness checks are few; a flood of joins must not grow them without bound.
const MAX_CHECKS: usize = 64;

impl<T: Table> Gossip<T> {
    pub(super) fn start_join(&mut self, now: Instant, seed: SocketAddr) {
        if seed == self.my_id.addr {
            // Joining through ourselves: we are trivially in our own cluster.
            let members = self.members.count(State::Alive);
            self.events.push_back(Event::Joined { seed, members });
            return;
        }
        if self.joins.iter().any(|j| j.seed == seed) {
            return;
        }
        self.joins.push(JoinAttempt {
            seed,
            token: 0, // each request's, given by send_join
            phase: JoinPhase::Waiting(now),
            backoff: FIRST_JOIN_BACKOFF,
        });
        self.send_join(now, self.joins.len() - 1);
    }

    fn send_join(&mut self, now: Instant, i: usize) {
        // A token per request, not per attempt: an answer or a failure is then that of the
        // request in flight, never of one that timed out before it.
        let token = self.next_seq();
        self.joins[i].token = token;
        let seed = self.joins[i].seed;
        self.joins[i].phase = JoinPhase::Waiting(now + self.config.join_timeout);
        let pp = self.full_state(Some(token), false);
        self.send(seed, Message::PushPull(pp), true);
    }

    pub(super) fn tick_joins(&mut self, now: Instant) {
        for i in 0..self.joins.len() {
            match self.joins[i].phase {
                JoinPhase::Waiting(t) if t <= now => {
                    let seed = self.joins[i].seed;
                    let reason = format!("no answer from {seed} within {:?}", self.config.join_timeout);
                    self.join_failed(now, i, reason);
                }
                JoinPhase::Backoff(t) if t <= now => self.send_join(now, i),
                _ => {}
            }
        }
    }

    /// The join request sent with `token`, if its attempt is still waiting for the answer,
    /// failed before the seed could answer it (the driver could not connect: the seed
    /// refused our secret, say): it is retried after its backoff, as one that timed out,
    /// with `reason` reported now. Every request has a token of its own, so a late report
    /// about an earlier request, already timed out, touches nothing.
    pub fn join_unanswerable(&mut self, now: Instant, token: u32, reason: String) {
        if let Some(i) = self
            .joins
            .iter()
            .position(|j| j.token == token && matches!(j.phase, JoinPhase::Waiting(_)))
        {
            self.join_failed(now, i, reason);
        }
    }

    fn join_failed(&mut self, now: Instant, i: usize, reason: String) {
        let attempt = &mut self.joins[i];
        attempt.phase = JoinPhase::Backoff(now + attempt.backoff);
        attempt.backoff = (attempt.backoff * 2).min(self.config.join_retry_max);
        let seed = attempt.seed;
        self.events.push_back(Event::JoinFailed { seed, reason });
    }

    pub(super) fn on_join_refused(&mut self, token: u32, mut reason: String) {
        if let Some(i) = self.joins.iter().position(|j| j.token == token) {
            // The reason ends up in a log line; a peer cannot make that line unbounded.
            if reason.len() > MAX_REASON {
                let cut = (0..=MAX_REASON)
                    .rev()
                    .find(|&i| reason.is_char_boundary(i))
                    .unwrap_or(0);
                reason.truncate(cut);
            }
            let attempt = self.joins.swap_remove(i);
            self.events.push_back(Event::JoinRefused {
                seed: attempt.seed,
                reason,
            });
        }
    }

    /// Everything we know, for a push-pull or its answer.
    fn full_state(&self, join: Option<u32>, is_reply: bool) -> Box<PushPull<T>> {
        let members = self
            .members
            .iter()
            .map(|(_, m)| MemberState {
                id: m.id.clone(),
                incarnation: m.incarnation,
                state: m.state,
            })
            .collect();
        Box::new(PushPull {
            from: self.sender(),
            join,
            is_reply,
            members,
            table: self.table.clone(),
        })
    }

    /// `sender_was_down`: we held the sender dead before its message arrived.
    pub(super) fn on_push_pull(&mut self, now: Instant, pp: Box<PushPull<T>>, sender_was_down: bool) {
        if let Some(token) = pp.join
            && !pp.is_reply
        {
            self.on_join(now, pp, token);
            return;
        }
        self.merge_push_pull(now, &pp, sender_was_down);
        if pp.is_reply {
            if let Some(i) = pp.join.and_then(|t| self.joins.iter().position(|j| j.token == t)) {
                let attempt = self.joins.swap_remove(i);
                // Joined: the other seeds have nothing more to give (membership spreads by
                // gossip now), so their attempts end rather than fail and retry for good.
                self.joins.clear();
                let members = self.members.count(State::Alive);
                self.events.push_back(Event::Joined {
                    seed: attempt.seed,
                    members,
                });
            }
        } else if self.is_active() {
            // Merged first, so the answer already carries our refutations.
            let reply = self.full_state(None, true);
            self.send(pp.from.id.addr, Message::PushPull(reply), true);
        }
    }

    fn merge_push_pull(&mut self, now: Instant, pp: &PushPull<T>, sender_was_down: bool) {
        self.merge_state(now, &pp.members, sender_was_down);
        if self.adopt_table(&pp.table) && self.config.hot_rumor_fanout > 0 {
            self.push_now(self.config.hot_rumor_fanout, super::broadcast::Topic::Table);
        }
    }

    /// A join: accept, refuse, or check first whether the name's holder is still alive.
    fn on_join(&mut self, now: Instant, pp: Box<PushPull<T>>, token: u32) {
        let joiner = pp.from.id.clone();
        let holder = self
            .members
            .find(&joiner.name)
            .and_then(|s| self.members.get(s))
            .filter(|m| matches!(m.state, State::Alive | State::Suspect))
            .filter(|m| m.id.addr != joiner.addr && m.id.generation != joiner.generation)
            .map(|m| m.id.clone());
        match holder {
            None => self.accept_join(now, pp, token),
            Some(old) => {
                if self.checks.iter().any(|c| c.join.from.id == joiner) || self.checks.len() >= MAX_CHECKS {
                    return;
                }
                // A probe of the holder, sturdy against loss: a datagram and a stream at once,
                // and a full probe interval to answer (a lost ack must not hand its name away).
                let seq = self.next_seq();
                for reliable in [false, true] {
                    let ping = Message::Ping {
                        from: self.sender(),
                        seq,
                        target: old.clone(),
                        reply_reliably: reliable,
                        piggyback: Vec::new(),
                    };
                    self.send(old.addr, ping, reliable);
                }
                self.checks.push(LivenessCheck {
                    seq,
                    old,
                    join: pp,
                    deadline: now + self.config.probe_interval,
                });
            }
        }
    }

    fn accept_join(&mut self, now: Instant, pp: Box<PushPull<T>>, token: u32) {
        let from = pp.from.clone();
        let slot = self.members.find_ident(&from.id);
        let was_down = self.is_down_at(slot, &from.id);
        self.apply_sender(now, slot, &from);
        self.merge_push_pull(now, &pp, was_down);
        let reply = self.full_state(Some(token), true);
        self.send(from.id.addr, Message::PushPull(reply), true);
    }

    pub(super) fn refuse_join(&mut self, joiner: &Sender, token: u32, reason: String) {
        let msg = Message::JoinRefused {
            from: self.sender(),
            token,
            reason: reason.clone(),
        };
        self.send(joiner.id.addr, msg, true);
        self.events.push_back(Event::RefusedJoin {
            name: joiner.id.name.clone(),
            addr: joiner.id.addr,
            reason,
        });
    }

    /// An ack from the holder of a joiner's name: it is alive, so the join is refused.
    pub(super) fn ack_for_check(&mut self, _now: Instant, from: &Sender, seq: u32) -> bool {
        let Some(i) = self.checks.iter().position(|c| c.seq == seq) else {
            return false;
        };
        if from.id.name != self.checks[i].old.name {
            return false;
        }
        let check = self.checks.swap_remove(i);
        let token = check.join.join.unwrap_or_default();
        let reason = format!(
            "the name {} is taken by the live member at {}",
            check.old.name, from.id.addr
        );
        self.refuse_join(&check.join.from, token, reason);
        true
    }

    /// Holders that stayed silent: the joiner is a restart and supersedes them.
    pub(super) fn expire_checks(&mut self, now: Instant) {
        while let Some(i) = self.checks.iter().position(|c| c.deadline <= now) {
            let check = self.checks.swap_remove(i);
            let token = check.join.join.unwrap_or_default();
            let joiner = check.join.from.clone();
            if joiner.id.generation > check.old.generation {
                self.accept_join(now, check.join, token);
            } else {
                let reason = format!(
                    "the name {} belongs to generation {} at {}; generation {} cannot supersede it",
                    joiner.id.name, check.old.generation, check.old.addr, joiner.id.generation
                );
                self.refuse_join(&joiner, token, reason);
            }
        }
    }

    /// Anti-entropy with one random alive member.
    pub(super) fn push_pull_random(&mut self) {
        let mut pick = std::mem::take(&mut self.scratch);
        let me = self.me;
        self.members
            .sample(1, &[me], |s| s == State::Alive, &mut self.rng, &mut pick);
        if let Some(addr) = pick.first().and_then(|&s| self.members.get(s)).map(|m| m.id.addr) {
            let pp = self.full_state(None, false);
            self.send(addr, Message::PushPull(pp), true);
        }
        self.scratch = pick;
    }

    /// Reaching out to dead members, so that a healed partition merges, and to members that
    /// left, so that one started again at its address is found there even if it joins nobody.
    ///
    /// First a ping to up to `gossip_fanout` random dead or left members: if one is alive
    /// after all, its ack carries its claim to be alive, and if that claim does not beat our
    /// "dead", we tell it (`tell_if_written_off`) and it refutes; a new process there answers
    /// under its newer generation, which supersedes the old one's `dead` or `left` at once.
    /// A datagram each is cheap enough to send even to a member that really crashed.
    ///
    /// Then, like Serf, a full push-pull to one of them with probability dead / alive: one
    /// crashed node in 10,000 is not worth 10,000 full states every interval, while the side
    /// of a partition that sees half the cluster dead (or a node cut off alone, which sees
    /// everyone dead) always tries.
    pub(super) fn reconnect_random(&mut self) {
        let mut picked: Vec<Slot> = Vec::new();
        for _ in 0..self.config.gossip_fanout {
            match self.members.random_down(&mut self.rng) {
                Some(slot) if !picked.contains(&slot) => picked.push(slot),
                _ => {}
            }
        }
        for &slot in &picked {
            let Some(id) = self.members.get(slot).map(|m| m.id.clone()) else {
                continue;
            };
            let ping = Message::Ping {
                from: self.sender(),
                seq: self.next_seq(),
                target: id.clone(),
                reply_reliably: false,
                piggyback: Vec::new(),
            };
            self.send_datagram(id.addr, ping);
        }
        let dead = self.members.count(State::Dead) as f64;
        let alive = (self.members.count(State::Alive) + self.members.count(State::Suspect)) as f64;
        let Some(&slot) = picked.first() else {
            return;
        };
        if self.rng.random::<f64>() >= dead / alive.max(1.0) {
            return;
        }
        if let Some(addr) = self.members.get(slot).map(|m| m.id.addr) {
            let pp = self.full_state(None, false);
            self.send(addr, Message::PushPull(pp), true);
        }
    }

    pub(super) fn start_leave(&mut self, now: Instant) {
        if self.leaving.is_some() {
            return;
        }
        self.probe = None;
        let me = self.me;
        let incarnation = self.my().incarnation;
        self.members.update(me, None, incarnation, State::Left, self.ms(now));
        let id = self.my_id.clone();
        self.broadcast_member(me, Update::Left { id, incarnation });
        let others = self.members.count(State::Alive);
        let needed = self.config.gossip_fanout.min(others);
        self.leaving = Some(Leaving {
            seq: self.next_seq(),
            asked: Vec::new(),
            acked: Vec::new(),
            needed,
            retry: Some(now),
        });
        if needed == 0 {
            self.leave_acknowledged();
        }
        self.tick_leave(now);
    }

    /// Asks members that were not asked yet, until enough acknowledged or none are left.
    pub(super) fn tick_leave(&mut self, now: Instant) {
        let Some(leaving) = &self.leaving else {
            return;
        };
        if leaving.retry.is_none_or(|t| t > now) {
            return;
        }
        let missing = leaving.needed.saturating_sub(leaving.acked.len());
        let asked: Vec<_> = leaving
            .asked
            .iter()
            .filter_map(|id| self.members.find(&id.name))
            .collect();
        let mut exclude = asked;
        exclude.push(self.me);
        let mut targets = std::mem::take(&mut self.scratch);
        self.members
            .sample(missing, &exclude, |s| s == State::Alive, &mut self.rng, &mut targets);
        let from = self.sender();
        let seq = leaving.seq;
        let mut sent = Vec::new();
        for &slot in &targets {
            if let Some(m) = self.members.get(slot) {
                sent.push(m.id.clone());
                let msg = Message::Leave {
                    from: from.clone(),
                    seq,
                };
                self.transmits.push_back(super::core::Transmit {
                    to: m.id.addr,
                    msg,
                    reliable: true,
                });
            }
        }
        self.scratch = targets;
        let retry = now + self.config.probe_interval;
        let Some(leaving) = self.leaving.as_mut() else {
            return;
        };
        if sent.is_empty() && leaving.retry.is_some() && leaving.acked.len() < leaving.needed {
            // Nobody left to ask: waiting longer would not help.
            leaving.retry = None;
            self.events.push_back(Event::LeaveAcknowledged);
            return;
        }
        leaving.asked.extend(sent);
        if leaving.retry.is_some() {
            leaving.retry = Some(retry);
        }
    }

    fn leave_acknowledged(&mut self) {
        if let Some(leaving) = self.leaving.as_mut()
            && leaving.retry.take().is_some()
        {
            self.events.push_back(Event::LeaveAcknowledged);
        }
    }

    pub(super) fn ack_for_leave(&mut self, from: &Sender, seq: u32) {
        let Some(leaving) = self.leaving.as_mut() else {
            return;
        };
        if leaving.seq != seq || leaving.acked.iter().any(|id| id.name == from.id.name) {
            return;
        }
        leaving.acked.push(from.id.clone());
        if leaving.acked.len() >= leaving.needed {
            self.leave_acknowledged();
        }
    }

    /// A member says it is leaving: record it, acknowledge on the stream it came on.
    pub(super) fn on_leave(&mut self, now: Instant, from: &Sender, seq: u32) {
        let _ = self.apply_member(
            now,
            &from.id,
            from.incarnation,
            State::Left,
            None,
            super::core::Source::Gossip,
        );
        let ack = Message::Ack {
            from: self.sender(),
            seq,
            piggyback: Vec::new(),
        };
        self.send(from.id.addr, ack, true);
    }
}
