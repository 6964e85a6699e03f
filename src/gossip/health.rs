//! Tentative verdicts: what a node in poor local health finds is withdrawn when it learns it
//! was the one cut off (issue 28; Lifeguard's local health, applied to verdicts).
//!
//! A small group cut off from a large cluster sees its probes go unanswered and its helpers
//! send no nacks, so its local-health score (`awareness`) climbs while it suspects and buries
//! members of the majority. Before this, on the heal those verdicts outlived the cut: each
//! majority member so written off had to hear of it and raise its incarnation before the small
//! group saw it alive again (tens of seconds at 10,000 nodes), and the group's pending
//! suspicions ran out after the heal and declared live members dead.
//!
//! Now a suspicion or death this node applies while its awareness is above zero is tentative:
//! - the member's own message (first-hand proof that it lives) at the same incarnation makes
//!   it alive again here, without asking it to refute;
//! - being told that we were declared dead (the cluster could not reach us: we were the one
//!   cut off) withdraws every tentative verdict at once, and for a suspicion timeout after
//!   that, failure claims about members we hold alive are ignored (they are our old side's
//!   verdicts, still in flight); our own probes still find the really dead.
//!
//! Verdicts are gossiped as before, so a partition splits the membership as fast as ever.

use std::time::Instant;

use super::broadcast::Topic;
use super::core::{Event, Gossip};
use super::members::{FxMap, Slot};
use super::message::{Ident, State};
use crate::table::Table;

#[derive(Debug)]
pub(crate) struct Health {
    /// Members held suspect or dead on verdicts reached in poor local health.
    tentative: FxMap<Slot, ()>,
    /// Until when failure claims about members we hold alive are ignored (after we were
    /// told we had been declared dead).
    distrust_until: Option<Instant>,
    /// Off only in simulations that measure the protocol without it.
    enabled: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            tentative: FxMap::default(),
            distrust_until: None,
            enabled: true,
        }
    }
}

impl<T: Table> Gossip<T> {
    /// Turns tentative verdicts off (or on again), for simulations that compare the two.
    #[cfg(any(test, feature = "sim"))]
    pub fn set_tentative_verdicts(&mut self, enabled: bool) {
        self.health.enabled = enabled;
        if !enabled {
            self.health.tentative.clear();
            self.health.distrust_until = None;
        }
    }

    /// `slot` just changed to `state`: note whether the verdict is tentative.
    pub(super) fn note_verdict(&mut self, slot: Slot, state: State, was_tentative: bool) {
        if !self.health.enabled {
            return;
        }
        let tentative = matches!(state, State::Suspect | State::Dead) && (self.awareness > 0 || was_tentative);
        if tentative {
            self.health.tentative.insert(slot, ());
        } else {
            self.health.tentative.remove(&slot);
        }
    }

    pub(super) fn is_tentative(&self, slot: Slot) -> bool {
        self.health.tentative.contains_key(&slot)
    }

    /// A forgotten slot may be reused by another member.
    pub(super) fn forget_verdict(&mut self, slot: Slot) {
        self.health.tentative.remove(&slot);
    }

    /// The sender `id` claims to be alive at `incarnation`: if we hold it suspect or dead at
    /// that incarnation on a tentative verdict, it is alive again here. Returns whether it was.
    pub(super) fn revive_on_contact(&mut self, now: Instant, id: &Ident, incarnation: u64) -> bool {
        if self.health.tentative.is_empty() {
            return false;
        }
        let Some(slot) = self.members.find_ident(id) else {
            return false;
        };
        let same = self
            .members
            .get(slot)
            .is_some_and(|m| m.id.generation == id.generation && m.incarnation == incarnation);
        same && self.revive(now, slot)
    }

    /// Makes a tentatively failed member alive again, locally: nobody else needs to hear it
    /// (the majority holds it alive; our old side learns it the same way we did).
    fn revive(&mut self, now: Instant, slot: Slot) -> bool {
        if self.health.tentative.remove(&slot).is_none() {
            return false;
        }
        let Some(m) = self
            .members
            .get(slot)
            .filter(|m| matches!(m.state, State::Suspect | State::Dead))
        else {
            return false;
        };
        let (name, addr, incarnation) = (m.id.name.clone(), m.id.addr, m.incarnation);
        self.members.update(slot, None, incarnation, State::Alive, self.ms(now));
        self.suspicions.cancel(slot);
        // Whatever we queued about it was a failure, now withdrawn.
        self.broadcasts.forget(Topic::Member(slot));
        self.events.push_back(Event::MemberUp { name, addr });
        true
    }

    /// We were told we had been declared dead: we were the one cut off. Withdraws every
    /// tentative verdict, and distrusts failure claims for a suspicion timeout.
    pub(super) fn withdraw_tentative_verdicts(&mut self, now: Instant) {
        if !self.health.enabled {
            return;
        }
        let slots: Vec<Slot> = self.health.tentative.keys().copied().collect();
        for slot in slots {
            self.revive(now, slot);
        }
        let (_, max, _) = self.suspicion_bounds();
        self.health.distrust_until = Some(now + max);
    }

    /// Whether failure claims about members we hold alive are to be ignored now.
    pub(super) fn distrusts_failures(&self, now: Instant) -> bool {
        self.health.distrust_until.is_some_and(|t| now < t)
    }
}
