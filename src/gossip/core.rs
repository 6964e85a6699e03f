//! The protocol state machine: inputs are `handle_*`, outputs are `poll_*` (quinn-proto's
//! contract). Time is always a parameter and randomness comes from a caller-seeded `SmallRng`.
//!
//! This file holds the state, the public API and the timers; what happens on each message
//! lives in `probe.rs` (SWIM probing), `merge.rs` (applying updates) and `join.rs` (joins,
//! push-pull, leaving).

use crate::table::Table;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::broadcast::{Broadcasts, Topic};
use super::config::GossipConfig;
use super::health::Health;
use super::join::{JoinAttempt, Leaving, LivenessCheck};
use super::members::{Member, MemberView, Members, Roster, Slot};
use super::message::{Ident, Message, Sender, SharedTable, State};
use super::probe::{Probe, Relay, Verification};
use super::suspicion::Suspicions;
use crate::name::NodeName;

/// A message for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<T> {
    pub to: SocketAddr,
    pub msg: Message<T>,
    /// `false`: one datagram of at most [`MAX_DATAGRAM`](super::MAX_DATAGRAM) bytes encoded;
    /// `true`: a stream.
    pub reliable: bool,
}

/// Something the driver should know about (log it, update its address book, exit...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// A new member, or a member back from suspect or dead (or restarted).
    MemberUp {
        name: NodeName,
        addr: SocketAddr,
    },
    MemberSuspect {
        name: NodeName,
        addr: SocketAddr,
    },
    MemberDead {
        name: NodeName,
        addr: SocketAddr,
    },
    MemberLeft {
        name: NodeName,
        addr: SocketAddr,
    },
    /// The cluster said this node was `said` (suspect, dead, left: it was slow, paused or
    /// cut off); it answered that it is alive, at `incarnation`.
    Refuted {
        said: State,
        incarnation: u64,
    },
    /// A table that superseded ours was adopted.
    TableChanged(T),
    Joined {
        seed: SocketAddr,
        members: usize,
    },
    /// One failed join attempt; the core keeps retrying with a growing backoff.
    JoinFailed {
        seed: SocketAddr,
        reason: String,
    },
    /// Final: the seed refused us (our name is taken by a live member).
    JoinRefused {
        seed: SocketAddr,
        reason: String,
    },
    /// We refused a joiner (the driver logs it, so both sides say why).
    RefusedJoin {
        name: NodeName,
        addr: SocketAddr,
        reason: String,
    },
    /// Enough members acknowledged our `left`, or nobody is left to tell.
    LeaveAcknowledged,
    /// A live other process claims our name. `newer`: it started after us (or, started in
    /// the same millisecond, has the higher address), so the cluster goes with it and this
    /// process must stop serving; otherwise the other one will hear of us and stop.
    NameConflict {
        name: NodeName,
        other: SocketAddr,
        newer: bool,
    },
}

/// Where an update came from; full states are trusted less than gossip (see `merge.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Gossip,
    PushPull,
    /// Our own evidence: a probe or verification that went unanswered, a suspicion run out.
    Local,
}

pub(super) struct Timers {
    pub probe: Instant,
    pub gossip: Instant,
    pub push_pull: Instant,
    pub reconnect: Instant,
}

/// One gossip member: probes others, spreads updates, keeps the membership and routing table.
pub struct Gossip<T> {
    pub(super) config: GossipConfig,
    pub(super) my_id: Ident,
    pub(super) me: Slot,
    /// `last_change` is kept as milliseconds after this instant.
    pub(super) epoch: Instant,
    pub(super) rng: SmallRng,
    pub(super) members: Members,
    pub(super) broadcasts: Broadcasts<T>,
    pub(super) suspicions: Suspicions,
    pub(super) table: SharedTable<T>,
    pub(super) next_seq: u32,
    pub(super) timers: Timers,
    pub(super) probe: Option<Probe>,
    pub(super) relays: Vec<Relay>,
    pub(super) verifications: Vec<Verification<T>>,
    pub(super) joins: Vec<JoinAttempt>,
    pub(super) checks: Vec<LivenessCheck<T>>,
    pub(super) leaving: Option<Leaving>,
    /// Lifeguard's local health: 0 is healthy; probing slows down by `awareness + 1`.
    pub(super) awareness: u32,
    /// Which failures we found in poor local health, to withdraw if we were cut off.
    pub(super) health: Health,
    pub(super) conflicts: Vec<Ident>,
    /// Recent notices and corrections: (to whom, about whom, incarnation, when).
    pub(super) notices: Vec<(Ident, Ident, u64, Instant)>,
    pub(super) transmits: VecDeque<Transmit<T>>,
    pub(super) events: VecDeque<Event<T>>,
    pub(super) scratch: Vec<Slot>,
}

impl<T: Table> Gossip<T> {
    /// `generation` is fresh for each start of the process (the driver passes wall-clock
    /// millis). A restarted node (same name, higher generation) supersedes its old self at once
    /// instead of being stuck behind its old incarnation (memberlist's restart race).
    pub fn new(
        name: NodeName,
        addr: SocketAddr,
        generation: u64,
        table: T,
        config: GossipConfig,
        seed: u64,
        now: Instant,
    ) -> Self {
        let config = config.sanitized();
        let mut rng = SmallRng::seed_from_u64(seed);
        let my_id = Ident::new(name, addr, generation);
        let mut members = Members::default();
        let me = members.insert(
            Member {
                id: my_id.clone(),
                incarnation: 0,
                changed_ms: 0,
                state: State::Alive,
            },
            &mut rng,
        );
        // Random phases, so that nodes started together do not tick in lockstep.
        let mut phase = |d: Duration| now + d.mul_f64(rng.random::<f64>());
        let timers = Timers {
            probe: phase(config.probe_interval),
            gossip: phase(config.gossip_interval),
            push_pull: phase(config.push_pull_interval),
            reconnect: phase(config.reconnect_interval),
        };
        Self {
            next_seq: rng.random(),
            config,
            my_id,
            me,
            epoch: now,
            rng,
            members,
            broadcasts: Broadcasts::default(),
            suspicions: Suspicions::default(),
            table: SharedTable(Arc::new(table)),
            timers,
            probe: None,
            relays: Vec::new(),
            verifications: Vec::new(),
            joins: Vec::new(),
            checks: Vec::new(),
            leaving: None,
            awareness: 0,
            health: Health::default(),
            conflicts: Vec::new(),
            notices: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// Starts from a converged member list instead of joining (simulations of large clusters).
    /// The roster's records are shared, not copied name by name.
    pub fn adopt_roster(&mut self, now: Instant, roster: &Roster) {
        let mut members = roster.0.clone();
        members.restamp(self.ms(now));
        let me = match members.find(&self.my_id.name) {
            Some(slot) => {
                members.update(
                    slot,
                    Some(self.my_id.clone()),
                    self.my().incarnation,
                    State::Alive,
                    self.ms(now),
                );
                slot
            }
            None => members.insert(
                Member {
                    id: self.my_id.clone(),
                    incarnation: self.my().incarnation,
                    changed_ms: self.ms(now),
                    state: State::Alive,
                },
                &mut self.rng,
            ),
        };
        self.members = members;
        self.me = me;
        self.timers.push_pull = now + self.push_pull_interval().mul_f64(self.rng.random::<f64>());
    }

    /// Joins the cluster through `seed` (any member); retried with backoff until it succeeds.
    pub fn join(&mut self, now: Instant, seed: SocketAddr) {
        self.start_join(now, seed);
    }

    /// Gossips that we left and asks a few members to acknowledge it.
    pub fn leave(&mut self, now: Instant) {
        self.start_leave(now);
    }

    /// Adopts `table` if it supersedes ours (otherwise ignores it), sends it at once on a
    /// stream to every live member (up to [`TABLE_PUSH`](super::spread::TABLE_PUSH) of
    /// them), and spreads it as gossip too. A table is set rarely and must reach every node
    /// at once, which the epidemic alone does not promise in a small cluster.
    pub fn set_table(&mut self, now: Instant, table: T) {
        let _ = now; // Adopting and pushing start no timer; `now` keeps the input contract uniform.
        let table = SharedTable(Arc::new(table));
        if self.adopt_table(&table) {
            self.push_table(&table);
        }
    }

    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message<T>) {
        let _ = from; // Replies go to the sender's advertised address, not the transport's.
        if let Message::JoinRefused { token, reason, .. } = msg {
            // Not a member's claim: the refused joiner learns nothing from it, so it has nobody
            // to talk to and cannot push its way in (the seed may even be our name's holder).
            self.on_join_refused(token, reason);
            return;
        }
        let sender = msg.sender();
        if sender.id == self.my_id {
            return;
        }
        if sender.id.name == self.my_id.name {
            // Our name, another process: a joiner is refused (we are alive), anyone else is
            // a conflict the driver must hear about.
            match &msg {
                Message::PushPull(pp) if pp.join.is_some() && !pp.is_reply => {
                    let reason = format!(
                        "the name {} is taken by the live member at {}",
                        self.my_id.name, self.my_id.addr
                    );
                    let (joiner, token) = (pp.from.clone(), pp.join.unwrap_or_default());
                    self.refuse_join(&joiner, token, reason);
                }
                _ => {
                    let id = sender.id.clone();
                    self.name_conflict(&id);
                }
            }
            return;
        }
        // A joiner is not a member until the seed has checked its name (join.rs).
        let is_join = matches!(&msg, Message::PushPull(pp) if pp.join.is_some() && !pp.is_reply);
        // Before the sender's own claim revives it: failures reported by a member we held dead
        // are trusted less (merge.rs).
        // The sender is looked up once: in a 10,000-member table each lookup is a few cache
        // misses, and every message makes four uses of it.
        let sender_slot = self.members.find_ident(&sender.id);
        let sender_was_down = self.is_down_at(sender_slot, &sender.id);
        if !is_join {
            let sender = sender.clone();
            let held_dead = self.held_dead_at(sender_slot, &sender.id);
            self.apply_sender(now, sender_slot, &sender);
            self.tell_if_written_off(now, sender_slot, &sender, held_dead);
        }
        let mut stale = Vec::new();
        let distrust = sender_was_down || self.distrusts_failures(now);
        for update in msg.piggyback() {
            if distrust && self.stale_failure_claim(update) {
                continue;
            }
            stale.extend(self.apply_update(now, update, Source::Gossip));
        }
        if !stale.is_empty() {
            let to = msg.sender().id.clone();
            self.correct(now, &to, &stale);
        }
        match msg {
            Message::Ping {
                from,
                seq,
                target,
                reply_reliably,
                ..
            } => self.on_ping(&from, seq, &target, reply_reliably),
            Message::Ack { from, seq, .. } => self.on_ack(now, &from, seq),
            Message::Nack { seq, .. } => self.on_nack(seq),
            Message::PingReq { from, seq, target, .. } => self.on_ping_req(now, &from, seq, target),
            Message::Gossip { .. } => {}
            Message::PushPull(pp) => self.on_push_pull(now, pp, sender_was_down),
            Message::JoinRefused { .. } => {}
            Message::Leave { from, seq } => self.on_leave(now, &from, seq),
        }
        self.prune_broadcasts();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_suspicions(now);
        self.expire_relays(now);
        self.expire_verifications(now);
        self.expire_checks(now);
        self.tick_joins(now);
        if self.is_active() {
            if self
                .probe
                .as_ref()
                .is_some_and(|p| !p.acked && !p.indirect_sent && now >= p.indirect_at)
            {
                self.probe_indirectly();
            }
            if now >= self.timers.probe {
                self.finish_probe(now);
                self.timers.probe = next_tick(self.timers.probe, self.scaled(self.config.probe_interval), now);
                self.start_probe(now);
            }
            if now >= self.timers.push_pull {
                self.timers.push_pull = next_tick(self.timers.push_pull, self.push_pull_interval(), now);
                self.push_pull_random();
            }
            if now >= self.timers.reconnect {
                self.timers.reconnect = next_tick(self.timers.reconnect, self.config.reconnect_interval, now);
                self.reconnect_random();
            }
        }
        if now >= self.timers.gossip {
            self.timers.gossip = next_tick(self.timers.gossip, self.config.gossip_interval, now);
            self.gossip_round();
        }
        self.tick_leave(now);
        self.forget_due(now);
        // A probe that just failed may have confirmed a suspicion past its shortened
        // deadline: it expires now, not at the next wake-up.
        self.expire_suspicions(now);
        self.prune_broadcasts();
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit<T>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    /// When `handle_timeout` wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.timers.gossip;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t
                && t < next
            {
                next = t;
            }
        };
        if self.is_active() {
            consider(Some(self.timers.probe));
            consider(Some(self.timers.push_pull));
            consider(Some(self.timers.reconnect));
            consider(
                self.probe
                    .as_ref()
                    .filter(|p| !p.acked && !p.indirect_sent)
                    .map(|p| p.indirect_at),
            );
        }
        consider(self.suspicions.next_deadline());
        consider(self.relays.iter().map(|r| r.deadline).min());
        consider(self.verifications.iter().map(|v| v.deadline).min());
        consider(self.checks.iter().map(|c| c.deadline).min());
        consider(self.joins.iter().map(JoinAttempt::deadline).min());
        consider(self.leaving.as_ref().and_then(Leaving::deadline));
        consider(
            self.members
                .next_forget_ms()
                .map(|ms| self.epoch + Duration::from_millis(ms)),
        );
        Some(next)
    }

    /// Every member this node knows, itself included.
    pub fn members(&self) -> impl Iterator<Item = MemberView<'_>> {
        self.members
            .iter()
            .filter_map(|(slot, _)| self.members.view(slot, self.epoch))
    }

    pub fn member(&self, name: &str) -> Option<MemberView<'_>> {
        self.members.view(self.members.find(name)?, self.epoch)
    }

    pub fn table(&self) -> &T {
        &self.table.0
    }

    /// This process's identity (name, address, generation).
    pub fn identity(&self) -> &Ident {
        &self.my_id
    }

    /// Updates waiting to be gossiped (for diagnostics and the simulator).
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    // ---- helpers shared by probe.rs, merge.rs and join.rs ----

    pub(super) fn my(&self) -> &Member {
        // Our own record is inserted at construction and never forgotten.
        self.members.get(self.me).expect("a node always knows itself")
    }

    pub(super) fn sender(&self) -> Sender {
        Sender {
            id: self.my_id.clone(),
            incarnation: self.my().incarnation,
        }
    }

    /// Still a member: not left. A node that left stops probing and answering.
    pub(super) fn is_active(&self) -> bool {
        self.my().state != State::Left
    }

    pub(super) fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub(super) fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Lifeguard: a node that suspects its own health probes less eagerly.
    pub(super) fn scaled(&self, d: Duration) -> Duration {
        d * (self.awareness + 1)
    }

    pub(super) fn adjust_awareness(&mut self, delta: i32) {
        let max = self.config.awareness_max_multiplier.saturating_sub(1);
        self.awareness = self.awareness.saturating_add_signed(delta).min(max);
    }

    /// memberlist's pushPullScale: beyond 32 members the interval grows with log2(n), so
    /// 10,000 nodes do not spend their bandwidth on full-state exchanges.
    pub(super) fn push_pull_interval(&self) -> Duration {
        let n = self.members.len();
        if n <= 32 {
            return self.config.push_pull_interval;
        }
        let mult = ((n as f64).log2() - 32f64.log2()).ceil() as u32 + 1;
        self.config.push_pull_interval * mult
    }

    /// Suspicion bounds for the current cluster size: (min, max, expected confirmations).
    pub(super) fn suspicion_bounds(&self) -> (Duration, Duration, u32) {
        let n = self.members.len();
        let min = self
            .config
            .probe_interval
            .mul_f64(f64::from(self.config.suspicion_mult) * (n as f64).log10().max(1.0));
        let max = min * self.config.suspicion_max_mult;
        let k = (self.config.indirect_checks as u32).min(n.saturating_sub(2) as u32);
        (min, max, k)
    }

    pub(super) fn send(&mut self, to: SocketAddr, msg: Message<T>, reliable: bool) {
        self.transmits.push_back(Transmit { to, msg, reliable });
    }

    fn forget_due(&mut self, now: Instant) {
        if self.members.next_forget_ms().is_none_or(|due| due > self.ms(now)) {
            return;
        }
        let mut gone = std::mem::take(&mut self.scratch);
        gone.clear();
        self.members.forget_due(self.ms(now), &mut gone);
        for &slot in &gone {
            self.broadcasts.forget(Topic::Member(slot));
            self.suspicions.cancel(slot);
            self.forget_verdict(slot);
        }
        self.scratch = gone;
    }

    pub(super) fn name_conflict(&mut self, other: &Ident) {
        if self.conflicts.contains(other) {
            return;
        }
        if self.conflicts.len() >= 64 {
            // Remembered only to report each impostor once; a flood of them must not grow this.
            self.conflicts.remove(0);
        }
        self.conflicts.push(other.clone());
        self.events.push_back(Event::NameConflict {
            name: self.my_id.name.clone(),
            other: other.addr,
            // Never a process on our own address (we hold that port): a generation from
            // before a backwards step of the wall clock, our own earlier start.
            newer: other.addr != self.my_id.addr
                && (other.generation, other.addr) > (self.my_id.generation, self.my_id.addr),
        });
    }
}

/// The next tick of a periodic timer: on its grid, but never in the past.
fn next_tick(previous: Instant, interval: Duration, now: Instant) -> Instant {
    let next = previous + interval;
    if next > now { next } else { now + interval }
}
