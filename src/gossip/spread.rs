//! Dissemination: piggybacking queued updates on every datagram up to 1200 bytes, gossip
//! rounds to `gossip_fanout` random members, and immediate pushes of a new routing table.

use crate::table::Table;
use std::net::SocketAddr;

use super::broadcast::Topic;
use super::core::Gossip;
use super::members::Slot;
use super::message::{MAX_DATAGRAM, Message, SharedTable, State, Update};

/// How many members the setter of a new table sends it to directly (all of them, up to
/// this many). The epidemic alone passes a rumour on only `retransmit_mult * log10(n + 1)`
/// times, to random members: in a cluster of a few nodes that is four, and now and then a
/// member is missed until the next push-pull, up to 30 s later.
pub(super) const TABLE_PUSH: usize = 64;

impl<T: Table> Gossip<T> {
    /// memberlist's `retransmit_mult * ceil(log10(n + 1))`.
    pub(super) fn retransmit_limit(&self) -> u32 {
        let n = self.members.len() as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    /// Fills `msg`'s piggyback from the broadcast queue up to the datagram budget. The core
    /// fields are never cut: only piggyback is fitted to what is left.
    pub(super) fn fill_piggyback(&mut self, msg: &mut Message<T>, priority: Option<Topic>) {
        let limit = self.retransmit_limit();
        let header = msg.encoded_len();
        if let Some(piggyback) = msg.piggyback_mut() {
            // The element count is one varint byte while it stays below 128.
            let max_count = 127usize.saturating_sub(piggyback.len());
            let budget = MAX_DATAGRAM.saturating_sub(header);
            self.broadcasts.fill(budget, max_count, limit, priority, piggyback);
        }
    }

    /// Queues `msg` as a datagram with as much piggyback as fits.
    pub(super) fn send_datagram(&mut self, to: SocketAddr, mut msg: Message<T>) {
        self.fill_piggyback(&mut msg, None);
        self.send(to, msg, false);
    }

    /// Sends pending gossip to `fanout` random members (a gossip round).
    pub(super) fn gossip_round(&mut self) {
        if self.broadcasts.is_empty() {
            return;
        }
        self.gossip_to_random(self.config.gossip_fanout, None);
    }

    /// Pushes `topic` at once to `fanout` members (a new table), ahead of the round.
    pub(super) fn push_now(&mut self, fanout: usize, topic: Topic) {
        self.gossip_to_random(fanout, Some(topic));
    }

    /// Sends `table`, which this node just set, on a stream to every live member, or to
    /// [`TABLE_PUSH`] of them at random in a larger cluster (where each of those passes it
    /// on at once too, and the epidemic's budget grows with the cluster).
    pub(super) fn push_table(&mut self, table: &SharedTable<T>) {
        self.for_random_live(TABLE_PUSH, |g, addr| {
            let from = g.sender();
            let piggyback = vec![Update::Table(table.clone())];
            g.send(addr, Message::Gossip { from, piggyback }, true);
        });
    }

    fn gossip_to_random(&mut self, fanout: usize, priority: Option<Topic>) {
        self.for_random_live(fanout, |g, addr| {
            let mut msg = Message::Gossip {
                from: g.sender(),
                piggyback: Vec::new(),
            };
            // A table too big for a datagram goes alone on a stream.
            let budget = MAX_DATAGRAM.saturating_sub(msg.encoded_len());
            if let Some(table) = g.broadcasts.oversized_table(budget, g.retransmit_limit()) {
                let from = g.sender();
                g.send(
                    addr,
                    Message::Gossip {
                        from,
                        piggyback: vec![table],
                    },
                    true,
                );
            }
            g.fill_piggyback(&mut msg, priority);
            if !msg.piggyback().is_empty() {
                g.send(addr, msg, false);
            }
        });
    }

    /// Calls `each` with the address of up to `k` random live members (alive or suspect)
    /// other than this node.
    fn for_random_live(&mut self, k: usize, mut each: impl FnMut(&mut Self, SocketAddr)) {
        let mut targets = std::mem::take(&mut self.scratch);
        let me = self.me;
        self.members.sample(
            k,
            &[me],
            |s| matches!(s, State::Alive | State::Suspect),
            &mut self.rng,
            &mut targets,
        );
        for &slot in &targets {
            if let Some(addr) = self.members.get(slot).map(|m| m.id.addr) {
                each(self, addr);
            }
        }
        self.scratch = targets;
    }

    /// Keeps the queue bounded (memberlist prunes beyond a depth too).
    pub(super) fn prune_broadcasts(&mut self) {
        let max = (2 * self.members.len()).max(1024);
        if self.broadcasts.len() > max {
            self.broadcasts.prune(max);
        }
    }

    pub(super) fn broadcast_member(&mut self, slot: Slot, update: Update<T>) {
        self.broadcasts.push(Topic::Member(slot), update);
    }
}

impl<T: Table> Message<T> {
    pub(crate) fn piggyback_mut(&mut self) -> Option<&mut Vec<Update<T>>> {
        match self {
            Message::Ping { piggyback, .. }
            | Message::Ack { piggyback, .. }
            | Message::Nack { piggyback, .. }
            | Message::PingReq { piggyback, .. }
            | Message::Gossip { piggyback, .. } => Some(piggyback),
            _ => None,
        }
    }
}
