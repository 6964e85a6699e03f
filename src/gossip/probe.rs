//! SWIM failure detection: one member per probe interval, round-robin over a shuffled list;
//! a direct ping, then after `probe_timeout` pings through `indirect_checks` helpers, a second
//! direct ping and a ping on a stream (memberlist's TCP fallback); no ack by the end of the
//! interval: suspect.

use crate::table::Table;
use std::net::SocketAddr;
use std::time::Instant;

use super::core::{Gossip, Source};
use super::members::Slot;
use super::message::{Ident, Message, Sender, State, Update};

/// The probe in flight; it ends at the next probe tick.
#[derive(Debug)]
pub(super) struct Probe {
    pub target: Slot,
    /// The identity probed, so a restart in between is not mistaken for a failure.
    pub id: Ident,
    pub seq: u32,
    pub indirect_at: Instant,
    pub indirect_sent: bool,
    pub acked: bool,
    /// Helpers asked to ping indirectly, and how many of them answered "no ack" (Lifeguard).
    pub helpers: u32,
    pub nacks: u32,
}

/// A ping we send on someone else's behalf (a ping-req), and whom to tell.
#[derive(Debug)]
pub(super) struct Relay {
    pub seq: u32,
    pub requester: SocketAddr,
    pub their_seq: u32,
    pub deadline: Instant,
}

/// Relays are cheap, but a peer flooding ping-reqs must not grow them without bound.
const MAX_RELAYS: usize = 1024;

/// A member said to have failed while we hold it alive: pinged before it is believed.
#[derive(Debug)]
pub(super) struct Verification<T> {
    slot: Slot,
    id: Ident,
    incarnation: u64,
    /// The state we held it in when we asked (alive, or suspect for a quiet verification).
    state: State,
    seq: u32,
    /// What to apply if it stays silent: a gossiped death, or (none) our own suspicion.
    verdict: Option<Update<T>>,
    pub deadline: Instant,
}

/// Verifications in flight; beyond this a healing partition's flood of stale failures is
/// ignored (others gossip the real ones again, and our own probes find the dead).
const MAX_VERIFICATIONS: usize = 1024;

impl<T: Table> Gossip<T> {
    pub(super) fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.members.next_probe_target(self.me, &mut self.rng) else {
            return;
        };
        let Some(m) = self.members.get(target) else {
            return;
        };
        let (id, incarnation, suspect) = (m.id.clone(), m.incarnation, m.state == State::Suspect);
        let seq = self.next_seq();
        let ping = if suspect {
            // Lifeguard's buddy system: tell a suspect at once, so it can refute in time.
            self.suspecting_ping(seq, &id, incarnation)
        } else {
            Message::Ping {
                from: self.sender(),
                seq,
                target: id.clone(),
                reply_reliably: false,
                piggyback: Vec::new(),
            }
        };
        self.send_datagram(id.addr, ping);
        self.probe = Some(Probe {
            target,
            id,
            seq,
            indirect_at: now + self.scaled(self.config.probe_timeout),
            indirect_sent: false,
            acked: false,
            helpers: 0,
            nacks: 0,
        });
    }

    /// The probe interval is over: no ack means suspect.
    pub(super) fn finish_probe(&mut self, now: Instant) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            return;
        }
        // Lifeguard: helpers that did not even nack point at our own network, not the target.
        let delta = if probe.helpers > 0 {
            probe.helpers.saturating_sub(probe.nacks)
        } else {
            1
        };
        self.adjust_awareness(delta as i32);
        let same = self
            .members
            .get(probe.target)
            .is_some_and(|m| m.id == probe.id && matches!(m.state, State::Alive | State::Suspect));
        if same {
            self.suspect(now, probe.target);
        }
    }

    /// No direct ack within the probe timeout: ask `indirect_checks` members, and try a stream.
    pub(super) fn probe_indirectly(&mut self) {
        let Some((target, id, seq)) = self.probe.as_mut().map(|p| {
            p.indirect_sent = true;
            (p.target, p.id.clone(), p.seq)
        }) else {
            return;
        };
        let mut helpers = std::mem::take(&mut self.scratch);
        let me = self.me;
        self.members.sample(
            self.config.indirect_checks,
            &[me, target],
            |s| s == State::Alive,
            &mut self.rng,
            &mut helpers,
        );
        for &helper in &helpers {
            let Some(addr) = self.members.get(helper).map(|m| m.id.addr) else {
                continue;
            };
            let req = Message::PingReq {
                from: self.sender(),
                seq,
                target: id.clone(),
                piggyback: Vec::new(),
            };
            self.send_datagram(addr, req);
        }
        if let Some(p) = self.probe.as_mut() {
            p.helpers = helpers.len() as u32;
        }
        self.scratch = helpers;
        // One more direct datagram: with 10% loss, a lost ping or ack is by far the most
        // likely reason for silence, and a second try costs one datagram.
        let again = Message::Ping {
            from: self.sender(),
            seq,
            target: id.clone(),
            reply_reliably: false,
            piggyback: Vec::new(),
        };
        self.send_datagram(id.addr, again);
        // A stream gets through datagram loss; an ack on it counts like any other.
        let ping = Message::Ping {
            from: self.sender(),
            seq,
            target: id.clone(),
            reply_reliably: true,
            piggyback: Vec::new(),
        };
        self.send(id.addr, ping, true);
    }

    /// A ping to `id` carrying this node's suspicion of it at `incarnation`: a live member
    /// hears of the suspicion at once and refutes it, instead of after it has spread.
    pub(super) fn suspecting_ping(&self, seq: u32, id: &Ident, incarnation: u64) -> Message<T> {
        Message::Ping {
            from: self.sender(),
            seq,
            target: id.clone(),
            reply_reliably: false,
            piggyback: vec![Update::Suspect {
                id: id.clone(),
                incarnation,
                by: self.my_id.clone(),
            }],
        }
    }

    pub(super) fn on_ping(&mut self, from: &Sender, seq: u32, target: &Ident, reply_reliably: bool) {
        // A ping for another name was meant for a process that no longer lives here; acking
        // it would make the prober believe that process alive.
        if target.name != self.my_id.name || !self.is_active() {
            return;
        }
        let ack = Message::Ack {
            from: self.sender(),
            seq,
            piggyback: Vec::new(),
        };
        if reply_reliably {
            self.send(from.id.addr, ack, true);
        } else {
            self.send_datagram(from.id.addr, ack);
        }
    }

    pub(super) fn on_ping_req(&mut self, now: Instant, from: &Sender, seq: u32, target: Ident) {
        if !self.is_active() {
            return;
        }
        if self.relays.len() >= MAX_RELAYS {
            self.relays.remove(0);
        }
        let our_seq = self.next_seq();
        self.relays.push(Relay {
            seq: our_seq,
            requester: from.id.addr,
            their_seq: seq,
            deadline: now + self.config.probe_timeout,
        });
        let ping = Message::Ping {
            from: self.sender(),
            seq: our_seq,
            target: target.clone(),
            reply_reliably: false,
            piggyback: Vec::new(),
        };
        self.send_datagram(target.addr, ping);
    }

    /// Pings `slot`, said to have failed, carrying a suspicion so the member refutes it if it
    /// is alive; if no ack comes within a probe interval, applies `verdict` (a gossiped death)
    /// or suspects it.
    pub(super) fn verify(&mut self, now: Instant, slot: Slot, verdict: Option<Update<T>>) {
        if self.verifications.len() >= MAX_VERIFICATIONS || self.verifications.iter().any(|v| v.slot == slot) {
            return;
        }
        let Some((id, incarnation)) = self.members.get(slot).map(|m| (m.id.clone(), m.incarnation)) else {
            return;
        };
        let seq = self.next_seq();
        let ping = self.suspecting_ping(seq, &id, incarnation);
        self.send(id.addr, ping, false);
        self.verifications.push(Verification {
            slot,
            id,
            incarnation,
            state: State::Alive,
            seq,
            verdict,
            deadline: now + self.config.probe_interval,
        });
    }

    /// Pings `slot`, whose tentative suspicion just ran out, on a datagram and on a stream,
    /// without a suspicion attached (an ack makes it alive here at its incarnation; it need not
    /// refute); applies `verdict` if no ack comes within a probe interval. Returns false when
    /// too many verifications are in flight (the caller then applies the verdict itself).
    pub(super) fn verify_quietly(&mut self, now: Instant, slot: Slot, verdict: Update<T>) -> bool {
        if self.verifications.len() >= MAX_VERIFICATIONS || self.verifications.iter().any(|v| v.slot == slot) {
            return false;
        }
        let Some((id, incarnation, state)) = self.members.get(slot).map(|m| (m.id.clone(), m.incarnation, m.state))
        else {
            return false;
        };
        let seq = self.next_seq();
        for reliable in [false, true] {
            let ping = Message::Ping {
                from: self.sender(),
                seq,
                target: id.clone(),
                reply_reliably: reliable,
                piggyback: Vec::new(),
            };
            self.send(id.addr, ping, reliable);
        }
        self.verifications.push(Verification {
            slot,
            id,
            incarnation,
            state,
            seq,
            verdict: Some(verdict),
            deadline: now + self.config.probe_interval,
        });
        true
    }

    /// Verifications that got no ack: now it is our own evidence.
    pub(super) fn expire_verifications(&mut self, now: Instant) {
        while let Some(i) = self.verifications.iter().position(|v| v.deadline <= now) {
            let v = self.verifications.swap_remove(i);
            let unchanged = self
                .members
                .get(v.slot)
                .is_some_and(|m| m.id == v.id && m.state == v.state && m.incarnation == v.incarnation);
            if !unchanged {
                continue;
            }
            match v.verdict {
                // A tentative suspicion's last check: in poor local health the member stays
                // suspect and its suspicion starts again (health.rs).
                Some(Update::Dead { .. })
                    if v.state == State::Suspect && self.holds_verdict(now, v.slot, v.incarnation) => {}
                // Another's verdict, unconfirmed: in poor local health, only our suspicion.
                Some(Update::Dead { .. }) if v.state == State::Alive && self.in_poor_health() => {
                    self.suspect(now, v.slot)
                }
                Some(Update::Dead { id, incarnation, by }) => {
                    let _ = self.apply_member(now, &id, incarnation, State::Dead, Some(&by), Source::Local);
                }
                _ => self.suspect(now, v.slot),
            }
        }
    }

    pub(super) fn on_ack(&mut self, now: Instant, from: &Sender, seq: u32) {
        if let Some(i) = self.verifications.iter().position(|v| v.seq == seq) {
            self.verifications.swap_remove(i);
            return;
        }
        if let Some(p) = self.probe.as_mut()
            && p.seq == seq
        {
            if !p.acked {
                p.acked = true;
                self.adjust_awareness(-1);
            }
            return;
        }
        if let Some(i) = self.relays.iter().position(|r| r.seq == seq) {
            let relay = self.relays.swap_remove(i);
            let ack = Message::Ack {
                from: self.sender(),
                seq: relay.their_seq,
                piggyback: Vec::new(),
            };
            self.send_datagram(relay.requester, ack);
            return;
        }
        if self.ack_for_check(now, from, seq) {
            return;
        }
        self.ack_for_leave(from, seq);
        // Anything else is a late or unknown seq: the sender's claim was applied already.
    }

    pub(super) fn on_nack(&mut self, seq: u32) {
        if let Some(p) = self.probe.as_mut()
            && p.seq == seq
        {
            p.nacks = p.nacks.saturating_add(1).min(p.helpers);
        }
    }

    /// Relays whose target stayed silent: tell the requester (a nack), then forget them.
    pub(super) fn expire_relays(&mut self, now: Instant) {
        while let Some(i) = self.relays.iter().position(|r| r.deadline <= now) {
            let relay = self.relays.swap_remove(i);
            let nack = Message::Nack {
                from: self.sender(),
                seq: relay.their_seq,
                piggyback: Vec::new(),
            };
            self.send_datagram(relay.requester, nack);
        }
    }
}
