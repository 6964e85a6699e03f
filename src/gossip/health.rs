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
//!   verdicts, still in flight); our own probes still find the really dead;
//! - in poor health no member is buried by this node's own hand: a suspicion that runs out
//!   then is checked once more, and if that goes unanswered the member stays suspect and its
//!   suspicion starts again, for at most `awareness_max_multiplier - 1` longest suspicions
//!   (Lifeguard's stretch of timeouts in the poorest health); an unconfirmed death heard
//!   from another becomes only our suspicion. Before, a check sent into a cut that healed a
//!   moment later buried a live member right after the heal. A node that holds no other
//!   member alive (a cluster of two) cannot tell its isolation from the others' deaths and
//!   buries as before.
//!
//! Verdicts are gossiped as before, so a partition splits the membership as fast as ever
//! (a suspect is not alive).

use std::time::Instant;

use super::broadcast::Topic;
use super::core::{Event, Gossip};
use super::members::{FxMap, Slot};
use super::message::{Ident, State};
use crate::table::Table;

#[derive(Debug)]
pub(crate) struct Health {
    /// Members held suspect or dead on verdicts reached in poor local health, and since when
    /// a verdict on each has been held back (`holds_verdict`), if it has.
    tentative: FxMap<Slot, Option<Instant>>,
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
            self.health.tentative.entry(slot).or_insert(None);
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
    pub(super) fn revive_on_contact(&mut self, now: Instant, slot: Option<Slot>, id: &Ident, incarnation: u64) -> bool {
        if self.health.tentative.is_empty() {
            return false;
        }
        let Some(slot) = slot else {
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

    /// Whether this node is in poor local health now (its own probes go unanswered and its
    /// helpers send no nacks), with tentative verdicts on. A node that holds no other member
    /// alive has nobody to compare itself with (in a cluster of two, the other's death looks
    /// the same), so it is not.
    pub(super) fn in_poor_health(&self) -> bool {
        self.health.enabled && self.awareness > 0 && self.members.count(State::Alive) > 1
    }

    /// The suspicion of `slot` ran out: whether to check it once more before the verdict.
    /// Yes if it was reached in poor local health, or if this node is in poor health now
    /// (then it becomes tentative, to be withdrawn if we learn we were the one cut off).
    pub(super) fn doubts_verdict(&mut self, slot: Slot) -> bool {
        if self.in_poor_health() {
            self.health.tentative.entry(slot).or_insert(None);
        }
        self.is_tentative(slot)
    }

    /// A tentative suspicion of `slot` at `incarnation` ran out and its last check went
    /// unanswered. In poor local health that proves little (our own probes go unanswered
    /// too, and the check may have been sent into a cut that healed just after), so the
    /// member stays suspect and its suspicion starts again; returns true. In good health, or
    /// once verdicts on it have been held back for `awareness_max_multiplier - 1` longest
    /// suspicions (Lifeguard's stretch of a timeout in the poorest health), false: the
    /// caller declares it dead.
    ///
    /// Without this a small group cut off from a large cluster buried members of the
    /// majority in the first moments after the heal, before it was told it had been cut off:
    /// a check sent while cut off went unanswered (issue 28: 18 members at 10,000 nodes, 100
    /// cut off, 10 % loss).
    pub(super) fn holds_verdict(&mut self, now: Instant, slot: Slot, incarnation: u64) -> bool {
        if !self.in_poor_health() {
            return false;
        }
        let (_, max, _) = self.suspicion_bounds();
        let limit = max * self.config.awareness_max_multiplier.saturating_sub(1);
        let since = *self.health.tentative.entry(slot).or_insert(None).get_or_insert(now);
        if now.saturating_duration_since(since) >= limit {
            return false;
        }
        let bounds = self.suspicion_bounds();
        let me = self.my_id.clone();
        self.suspicions.start(slot, incarnation, &me, now, bounds);
        true
    }

    /// We are told we are suspected, or were declared dead at an incarnation we have left
    /// behind: was that because we were the one cut off? Yes if we are in poor local health
    /// and hold tentative verdicts (then they are withdrawn as if we had just been declared
    /// dead). A cut-off node that refuted a suspicion on its side of the cut comes back at a
    /// higher incarnation, which silently overrides the majority's "dead"; its tentative
    /// verdicts then waited for their own timers (issue 28: 21.7 s to heal at 10,000 nodes,
    /// seed 3, 10 % loss). A node in good health, suspected now and then on a lossy network,
    /// is not one, and keeps trusting others' verdicts (the withdrawal distrusts them for a
    /// while).
    pub(super) fn suspected_while_cut_off(&self) -> bool {
        self.in_poor_health() && !self.health.tentative.is_empty()
    }

    /// Whether failure claims about members we hold alive are to be ignored now.
    pub(super) fn distrusts_failures(&self, now: Instant) -> bool {
        self.health.distrust_until.is_some_and(|t| now < t)
    }
}
