//! Applying what others say: member updates by precedence, refutation of our own suspicion,
//! suspicion timers, and routing-table adoption.
//!
//! Precedence is `(generation, incarnation, rank)` with rank Alive < Suspect < Dead < Left:
//! Alive{i} beats Suspect{j} iff i > j, Suspect{i} beats Alive{j} iff i >= j, Dead beats both
//! at >=, and anything about an older generation of a name loses to the newer generation.

use crate::table::Table;
use std::time::Instant;

use super::broadcast::Topic;
use super::core::{Event, Gossip, Source};
use super::members::{Member, Slot};
use super::message::{Ident, MemberState, Message, Sender, SharedTable, State, Update};

/// Incarnations this high cannot be refuted (there is no room above them); only a broken or
/// hostile peer sends them, so updates about us carrying one are ignored.
const IMPLAUSIBLE_INCARNATION: u64 = u64::MAX / 2;

impl<T: Table> Gossip<T> {
    /// Every message is its sender's own claim to be alive at its incarnation. `slot`: where
    /// the sender's name is in our table (`find_ident`), if it is.
    pub(super) fn apply_sender(&mut self, now: Instant, slot: Option<Slot>, sender: &Sender) {
        if self.revive_on_contact(now, slot, &sender.id, sender.incarnation) {
            return;
        }
        let _ = self.apply_member_at(
            now,
            slot,
            &sender.id,
            sender.incarnation,
            State::Alive,
            None,
            Source::Gossip,
        );
    }

    /// Applies one update; returns the member's slot when the update was a stale failure
    /// claim (suspect or dead at an older incarnation than the alive one we know).
    pub(super) fn apply_update(&mut self, now: Instant, update: &Update<T>, source: Source) -> Option<Slot> {
        match update {
            Update::Alive { id, incarnation } => self.apply_member(now, id, *incarnation, State::Alive, None, source),
            Update::Suspect { id, incarnation, by } => {
                self.apply_member(now, id, *incarnation, State::Suspect, Some(by), source)
            }
            Update::Dead { id, incarnation, by } => {
                self.apply_member(now, id, *incarnation, State::Dead, Some(by), source)
            }
            Update::Left { id, incarnation } => self.apply_member(now, id, *incarnation, State::Left, None, source),
            Update::Table(table) => {
                if self.adopt_table(table) && self.config.hot_rumor_fanout > 0 {
                    // Hot rumor: forward a new table at once instead of at the next round.
                    self.push_now(self.config.hot_rumor_fanout, Topic::Table);
                }
                None
            }
        }
    }

    /// Merges a full state (push-pull).
    ///
    /// A "suspect" or "dead" in it is second-hand and possibly stale: after a partition heals,
    /// every full state from the other side calls half the cluster dead. Where it is news
    /// (a higher incarnation than ours) it becomes our own suspicion (by us, as in memberlist,
    /// so one full state is one voice, not a confirmation). Where we hold the member alive at
    /// the same incarnation, we ping it first (`verify`) and suspect it only if it stays
    /// silent; from a sender that was itself dead to us (a reconnect across the healed cut)
    /// not even that, since it could not have reached the member. Believing such states
    /// outright made healed 1,000-node partitions declare live members dead.
    pub(super) fn merge_state(&mut self, now: Instant, members: &[MemberState], sender_was_down: bool) {
        let me = self.my_id.clone();
        for m in members {
            let failure = matches!(m.state, State::Suspect | State::Dead);
            if failure
                && m.id.name != me.name
                && let Some(slot) = self.members.find_ident(&m.id)
                && let Some(ours) = self.members.get(slot)
                && ours.id.generation == m.id.generation
                && ours.incarnation >= m.incarnation
            {
                if ours.state == State::Alive
                    && ours.incarnation == m.incarnation
                    && !sender_was_down
                    && !self.distrusts_failures(now)
                {
                    self.verify(now, slot, None);
                }
                continue;
            }
            let by = failure.then_some(&me);
            // A stale entry needs no correction: our answer carries our whole view.
            let _ = self.apply_member(now, &m.id, m.incarnation, m.state, by, Source::PushPull);
        }
    }

    /// A member we hold suspect or dead is talking to us, so it does not know: tell it at once,
    /// so it refutes now rather than whenever gossip or a reconnect happens to reach it. This
    /// is what lets a healed partition converge in seconds: the first probe across the old cut
    /// makes the prober refute. Likewise an earlier process of a name that has started again
    /// meanwhile: it is told of the newer one.
    /// `slot`: where the sender's name was in our table before its message, if it was (a
    /// member new to us is alive, with nothing to tell). `held_dead`: the incarnation at
    /// which we held it dead before its message, if we did. A member that had refuted a
    /// suspicion on its side of a cut comes back at a higher incarnation, which overrides
    /// our "dead" silently: it is told all the same, once, since being declared dead is what
    /// tells a cut-off node to withdraw its tentative verdicts (health.rs).
    pub(super) fn tell_if_written_off(
        &mut self,
        now: Instant,
        slot: Option<Slot>,
        sender: &Sender,
        held_dead: Option<u64>,
    ) {
        let Some(m) = slot.and_then(|s| self.members.get(s)) else {
            return;
        };
        if let Some(dead_at) = held_dead
            && m.state == State::Alive
            && m.id.generation == sender.id.generation
            && dead_at < m.incarnation
        {
            let id = m.id.clone();
            if !self.told_recently(now, &id, &id, dead_at) {
                let by = self.my_id.clone();
                let update = Update::Dead {
                    id: id.clone(),
                    incarnation: dead_at,
                    by,
                };
                let notice = Message::Gossip {
                    from: self.sender(),
                    piggyback: vec![update],
                };
                self.send(id.addr, notice, false);
            }
            return;
        }
        if m.id.generation > sender.id.generation && matches!(m.state, State::Alive | State::Suspect) {
            // An earlier process of a name started again since (it was paused or cut off long
            // enough to be replaced): tell it of the newer one, which makes it stop serving
            // at once (a name conflict it loses), not at its next full-state exchange.
            let (id, incarnation) = (m.id.clone(), m.incarnation);
            if !self.told_recently(now, &sender.id, &id, incarnation) {
                let notice = Message::Gossip {
                    from: self.sender(),
                    piggyback: vec![Update::Alive { id, incarnation }],
                };
                self.send(sender.id.addr, notice, false);
            }
            return;
        }
        if m.id.generation != sender.id.generation || !matches!(m.state, State::Suspect | State::Dead) {
            return;
        }
        let (id, incarnation, state) = (m.id.clone(), m.incarnation, m.state);
        if self.told_recently(now, &id, &id, incarnation) {
            return;
        }
        let by = self.my_id.clone();
        let update = if state == State::Dead {
            Update::Dead {
                id: id.clone(),
                incarnation,
                by,
            }
        } else {
            Update::Suspect {
                id: id.clone(),
                incarnation,
                by,
            }
        };
        let notice = Message::Gossip {
            from: self.sender(),
            piggyback: vec![update],
        };
        self.send(id.addr, notice, false);
    }

    /// `to` passed on stale failures of members we know alive at a newer incarnation (it
    /// missed their refutations, typically after a partition): send it what we know, or it
    /// may declare them dead on its own.
    pub(super) fn correct(&mut self, now: Instant, to: &Ident, stale: &[Slot]) {
        let mut piggyback = Vec::new();
        for &slot in stale.iter().take(32) {
            let Some(m) = self.members.get(slot).filter(|m| m.state == State::Alive) else {
                continue;
            };
            let (id, incarnation) = (m.id.clone(), m.incarnation);
            if !self.told_recently(now, to, &id, incarnation) {
                piggyback.push(Update::Alive { id, incarnation });
            }
        }
        if !piggyback.is_empty() {
            let msg = Message::Gossip {
                from: self.sender(),
                piggyback,
            };
            self.send(to.addr, msg, false);
        }
    }

    /// Whether `to` was told about `about` at `incarnation` within a probe interval; records
    /// it if not. Bounded, so a chatty peer cannot grow it.
    fn told_recently(&mut self, now: Instant, to: &Ident, about: &Ident, incarnation: u64) -> bool {
        let window = self.config.probe_interval;
        let seen = self.notices.iter().any(|(t, a, i, at)| {
            t.name == to.name
                && a.name == about.name
                && *i == incarnation
                && now.saturating_duration_since(*at) < window
        });
        if !seen {
            if self.notices.len() >= 256 {
                self.notices.remove(0);
            }
            self.notices.push((to.clone(), about.clone(), incarnation, now));
        }
        seen
    }

    /// The incarnation at which we hold `id`, found at `slot`, dead (in the same generation).
    pub(super) fn held_dead_at(&self, slot: Option<Slot>, id: &Ident) -> Option<u64> {
        slot.and_then(|s| self.members.get(s))
            .filter(|m| m.id.generation == id.generation && m.state == State::Dead)
            .map(|m| m.incarnation)
    }

    /// Whether `id`, found at `slot`, is a member we hold dead or left (in the same
    /// generation).
    pub(super) fn is_down_at(&self, slot: Option<Slot>, id: &Ident) -> bool {
        slot.and_then(|s| self.members.get(s))
            .is_some_and(|m| m.id.generation == id.generation && matches!(m.state, State::Dead | State::Left))
    }

    /// The heart of the protocol: applies `state` for `id` at `incarnation` if it takes
    /// precedence, then gossips it on and tells the driver. Returns the slot when the update
    /// was a stale failure claim, so the caller can correct whoever passed it on.
    #[must_use]
    pub(super) fn apply_member(
        &mut self,
        now: Instant,
        id: &Ident,
        incarnation: u64,
        state: State,
        by: Option<&Ident>,
        source: Source,
    ) -> Option<Slot> {
        if id.name == self.my_id.name {
            return self.about_me(now, id, incarnation, state);
        }
        let slot = self.members.find_ident(id);
        self.apply_member_at(now, slot, id, incarnation, state, by, source)
    }

    /// [`Gossip::apply_member`] for a member already looked up: `found` is where `id`'s name
    /// is in our table, if it is.
    #[expect(clippy::too_many_arguments, reason = "apply_member's, plus the lookup done")]
    #[must_use]
    pub(super) fn apply_member_at(
        &mut self,
        now: Instant,
        found: Option<Slot>,
        id: &Ident,
        incarnation: u64,
        state: State,
        by: Option<&Ident>,
        source: Source,
    ) -> Option<Slot> {
        if id.name == self.my_id.name {
            return self.about_me(now, id, incarnation, state);
        }
        let now_ms = self.ms(now);
        let Some(slot) = found else {
            // Like memberlist, news of an unknown member's failure is not worth a record.
            if state == State::Alive {
                let slot = self.members.insert(
                    Member {
                        id: id.clone(),
                        incarnation,
                        changed_ms: now_ms,
                        state,
                    },
                    &mut self.rng,
                );
                self.broadcast_member(
                    slot,
                    Update::Alive {
                        id: id.clone(),
                        incarnation,
                    },
                );
                self.events.push_back(Event::MemberUp {
                    name: id.name.clone(),
                    addr: id.addr,
                });
            }
            return None;
        };
        let old = self.members.get(slot)?;
        let (old_key, old_state, old_addr) = (old.key(), old.state, old.id.addr);
        let state = if state == State::Dead && source == Source::PushPull {
            State::Suspect
        } else {
            state
        };
        let key = (id.generation, incarnation, state);
        if key <= old_key {
            if key == old_key
                && state == State::Suspect
                && let Some(by) = by
                && self.suspicions.confirm(slot, incarnation, by)
            {
                // Re-gossip the confirmation so that others count it too.
                let update = Update::Suspect {
                    id: old.id.clone(),
                    incarnation,
                    by: by.clone(),
                };
                self.broadcast_member(slot, update);
            }
            let stale = key < old_key && old_state == State::Alive && matches!(state, State::Suspect | State::Dead);
            return stale.then_some(slot);
        }
        // A "dead" we never saw coming (we hold the member alive in that generation, so its
        // suspicion never reached us) is checked before it is believed: typically it is the
        // verdict of the other side of a partition that just healed, and the member is fine.
        // We ping it with the suspicion attached (so it refutes) and take the verdict only if
        // it stays silent. A full state's "dead" is only suspected, as in memberlist.
        if state == State::Dead && source == Source::Gossip && old_state == State::Alive && old_key.0 == id.generation {
            let verdict = Update::Dead {
                id: id.clone(),
                incarnation,
                by: by.unwrap_or(&self.my_id).clone(),
            };
            self.verify(now, slot, Some(verdict));
            return None;
        }
        let new_process = id.generation != old_key.0;
        let was_tentative = self.is_tentative(slot);
        self.members
            .update(slot, new_process.then(|| id.clone()), incarnation, state, now_ms);
        self.note_verdict(slot, state, was_tentative && !new_process);
        let id = self.members.get(slot).map_or_else(|| id.clone(), |m| m.id.clone());
        self.suspicions.cancel(slot);
        let (name, addr) = (id.name.clone(), id.addr);
        let update = match state {
            State::Alive => {
                if old_state != State::Alive || new_process || old_addr != addr {
                    self.events.push_back(Event::MemberUp { name, addr });
                }
                Update::Alive { id, incarnation }
            }
            State::Suspect => {
                let by = by.unwrap_or(&self.my_id).clone();
                let bounds = self.suspicion_bounds();
                self.suspicions.start(slot, incarnation, &by, now, bounds);
                if old_state != State::Suspect {
                    self.events.push_back(Event::MemberSuspect { name, addr });
                }
                Update::Suspect { id, incarnation, by }
            }
            State::Dead => {
                self.members.schedule_forget(slot, self.config.dead_retention);
                if old_state != State::Dead {
                    self.events.push_back(Event::MemberDead { name, addr });
                }
                let by = by.unwrap_or(&self.my_id).clone();
                Update::Dead { id, incarnation, by }
            }
            State::Left => {
                self.members.schedule_forget(slot, self.config.dead_retention);
                if old_state != State::Left {
                    self.events.push_back(Event::MemberLeft { name, addr });
                }
                Update::Left { id, incarnation }
            }
        };
        self.broadcast_member(slot, update);
        None
    }

    /// Someone says something about our name.
    fn about_me(&mut self, now: Instant, id: &Ident, incarnation: u64, state: State) -> Option<Slot> {
        let my_generation = self.my_id.generation;
        if id.generation > my_generation || (id.generation == my_generation && id.addr != self.my_id.addr) {
            // A newer start of our name (or a twin): a live other process claims it.
            if state == State::Alive {
                self.name_conflict(id);
            }
            return None;
        }
        let failure = matches!(state, State::Suspect | State::Dead);
        if !self.is_active() || incarnation >= IMPLAUSIBLE_INCARNATION {
            // We are leaving anyway, or this is nonsense.
            return None;
        }
        let mine = self.my().incarnation;
        if id.generation < my_generation {
            // News about our previous life: whoever passed on its failure should learn of us.
            return failure.then_some(self.me);
        }
        let wrong = match state {
            State::Alive => incarnation > mine,
            State::Suspect | State::Dead | State::Left => incarnation >= mine,
        };
        if wrong {
            // Asked before the refutation raises our awareness.
            let cut_off = state == State::Dead || (state == State::Suspect && self.suspected_while_cut_off());
            self.refute(now, incarnation, state);
            if cut_off {
                self.written_off(now);
            }
            return None;
        }
        if state == State::Dead && incarnation < mine && self.suspected_while_cut_off() {
            // Declared dead at an incarnation we had left behind (we refuted a suspicion on
            // our side of a cut): still the sign that we were the one cut off.
            self.written_off(now);
        }
        (failure && incarnation < mine).then_some(self.me)
    }

    /// We are said to be suspect or dead: raise our incarnation above the claim and gossip it.
    fn refute(&mut self, now: Instant, claimed: u64, said: State) {
        let incarnation = claimed.max(self.my().incarnation) + 1;
        self.events.push_back(Event::Refuted { said, incarnation });
        let me = self.me;
        self.members.update(me, None, incarnation, State::Alive, self.ms(now));
        let id = self.my_id.clone();
        self.broadcast_member(me, Update::Alive { id, incarnation });
        // Lifeguard: being suspected hints that our own links or CPU are the problem.
        self.adjust_awareness(1);
    }

    /// Others declared us dead: we were cut off (or too slow to answer). Failures we saw in
    /// that time are likely the other side of the same cut, so stop spreading them, and ask
    /// every member we suspect directly, with the suspicion attached so it can refute. Without
    /// this, a minority side's pending suspicions flood the majority after a heal and expire
    /// there before the accused hear of them.
    fn written_off(&mut self, now: Instant) {
        self.broadcasts.forget_failures();
        self.withdraw_tentative_verdicts(now);
        let suspects: Vec<Slot> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == State::Suspect)
            .map(|(s, _)| s)
            .take(256)
            .collect();
        for slot in suspects {
            let Some((id, incarnation)) = self.members.get(slot).map(|m| (m.id.clone(), m.incarnation)) else {
                continue;
            };
            let seq = self.next_seq();
            let ping = self.suspecting_ping(seq, &id, incarnation);
            self.send(id.addr, ping, false);
        }
    }

    /// Whether a failure claim from a sender we held dead should be ignored: it was cut off
    /// from us, so what it could not reach says nothing about members we hold alive.
    pub(super) fn stale_failure_claim(&self, update: &Update<T>) -> bool {
        let (id, incarnation) = match update {
            Update::Suspect { id, incarnation, .. } | Update::Dead { id, incarnation, .. } => (id, *incarnation),
            _ => return false,
        };
        if id.name == self.my_id.name {
            return false;
        }
        self.members
            .find_ident(id)
            .and_then(|s| self.members.get(s))
            .is_some_and(|m| {
                m.id.generation == id.generation && m.state == State::Alive && m.incarnation >= incarnation
            })
    }

    /// Our own probe of `slot` failed: suspect it (or confirm an existing suspicion).
    pub(super) fn suspect(&mut self, now: Instant, slot: Slot) {
        let Some(m) = self.members.get(slot) else {
            return;
        };
        let (id, incarnation) = (m.id.clone(), m.incarnation);
        let me = self.my_id.clone();
        let _ = self.apply_member(now, &id, incarnation, State::Suspect, Some(&me), Source::Local);
    }

    pub(super) fn expire_suspicions(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.suspicions.expired(now, &mut expired);
        for (slot, incarnation) in expired {
            let Some(m) = self.members.get(slot) else {
                continue;
            };
            if m.state == State::Suspect && m.incarnation == incarnation {
                let id = m.id.clone();
                let me = self.my_id.clone();
                // Found in poor local health, or running out in it: one more ping (a datagram
                // and a stream) before the verdict, which a heal in the meantime then answers.
                if self.doubts_verdict(slot) {
                    let verdict = Update::Dead {
                        id: id.clone(),
                        incarnation,
                        by: me.clone(),
                    };
                    if self.verify_quietly(now, slot, verdict) {
                        continue;
                    }
                    if self.holds_verdict(now, slot, incarnation) {
                        continue;
                    }
                }
                let _ = self.apply_member(now, &id, incarnation, State::Dead, Some(&me), Source::Local);
            }
        }
    }

    /// Adopts `table` if it supersedes ours; returns whether it did.
    pub(super) fn adopt_table(&mut self, table: &SharedTable<T>) -> bool {
        if !table.0.supersedes(&self.table.0) {
            return false;
        }
        self.table = table.clone();
        self.broadcasts.push(Topic::Table, Update::Table(table.clone()));
        self.events.push_back(Event::TableChanged((*table.0).clone()));
        true
    }
}
