//! The broadcast queue: updates waiting to be piggybacked, each sent a limited number of times
//! (memberlist's TransmitLimitedQueue).
//!
//! Fresh updates go first (fewest transmissions, then newest), a newer update about the same
//! member replaces the queued one, and each update's encoded size is computed once, so filling
//! a datagram is a walk down an ordered map with no encoding.

use crate::table::Table;
use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::members::{FxMap, Slot};
use super::message::{Update, encoded_len};

/// What an update is about; the queue holds at most one update per topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Member(Slot),
    Table,
}

/// The queue's order: fewest transmissions first, then the newest.
type Key = (u32, Reverse<u64>);

#[derive(Debug)]
struct Queued<T> {
    topic: Topic,
    update: Update<T>,
    size: usize,
}

/// The smallest encoded update: below this much room, nothing else can fit.
const MIN_UPDATE_LEN: usize = 12;

#[derive(Debug)]
pub(crate) struct Broadcasts<T> {
    order: BTreeMap<Key, Queued<T>>,
    topics: FxMap<Topic, Key>,
    next_id: u64,
    taken: Vec<Key>,
}

// By hand: a derive would ask `T: Default`.
impl<T> Default for Broadcasts<T> {
    fn default() -> Self {
        Self {
            order: BTreeMap::new(),
            topics: FxMap::default(),
            next_id: 0,
            taken: Vec::new(),
        }
    }
}

impl<T: Table> Broadcasts<T> {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Queues `update`, replacing any older update on the same topic.
    pub fn push(&mut self, topic: Topic, update: Update<T>) {
        self.forget(topic);
        let key = (0, Reverse(self.next_id));
        self.next_id += 1;
        let size = encoded_len(&update);
        self.order.insert(key, Queued { topic, update, size });
        self.topics.insert(topic, key);
    }

    pub fn forget(&mut self, topic: Topic) {
        if let Some(key) = self.topics.remove(&topic) {
            self.order.remove(&key);
        }
    }

    /// Appends queued updates to `out` while they fit in `budget` bytes (at most `max_count`
    /// of them), `priority` first if queued; counts one transmission for each and retires
    /// those sent `limit` times. Returns the bytes used.
    pub fn fill(
        &mut self,
        budget: usize,
        max_count: usize,
        limit: u32,
        priority: Option<Topic>,
        out: &mut Vec<Update<T>>,
    ) -> usize {
        let mut used = 0;
        self.taken.clear();
        let first = priority.and_then(|t| self.topics.get(&t).copied());
        if let Some(key) = first
            && let Some(q) = self.order.get(&key)
            && q.size <= budget
            && max_count > 0
        {
            out.push(q.update.clone());
            used += q.size;
            self.taken.push(key);
        }
        for (key, q) in &self.order {
            if budget - used < MIN_UPDATE_LEN || self.taken.len() >= max_count {
                break;
            }
            if q.size <= budget - used && Some(*key) != first {
                out.push(q.update.clone());
                used += q.size;
                self.taken.push(*key);
            }
        }
        for i in 0..self.taken.len() {
            self.count_transmit(self.taken[i], limit);
        }
        used
    }

    /// The queued table update if it is too big for `budget` (it then goes on a stream),
    /// counting one transmission.
    pub fn oversized_table(&mut self, budget: usize, limit: u32) -> Option<Update<T>> {
        let key = *self.topics.get(&Topic::Table)?;
        let q = self.order.get(&key)?;
        if q.size <= budget {
            return None;
        }
        let update = q.update.clone();
        self.count_transmit(key, limit);
        Some(update)
    }

    fn count_transmit(&mut self, key: Key, limit: u32) {
        let Some(q) = self.order.remove(&key) else {
            return;
        };
        let sent = key.0 + 1;
        if sent >= limit {
            self.topics.remove(&q.topic);
        } else {
            let key = (sent, key.1);
            if let Some(k) = self.topics.get_mut(&q.topic) {
                *k = key;
            }
            self.order.insert(key, q);
        }
    }

    /// Drops every queued suspicion and death (see `Gossip::written_off`).
    pub fn forget_failures(&mut self) {
        let failed: Vec<Key> = self
            .order
            .iter()
            .filter(|(_, q)| matches!(q.update, Update::Suspect { .. } | Update::Dead { .. }))
            .map(|(k, _)| *k)
            .collect();
        for key in failed {
            if let Some(q) = self.order.remove(&key) {
                self.topics.remove(&q.topic);
            }
        }
    }

    /// Drops the most-sent, oldest updates beyond `max` (a partition healing at 10,000 nodes
    /// must not grow the queue without bound).
    pub fn prune(&mut self, max: usize) {
        while self.order.len() > max {
            if let Some((_, q)) = self.order.pop_last() {
                self.topics.remove(&q.topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Ident;
    use crate::name::NodeName;

    type Update = crate::Update<crate::sim::SimTable>;

    fn alive(name: &str, incarnation: u64) -> Update {
        let id = Ident::new(NodeName::new(name).unwrap(), "10.0.0.1:7946".parse().unwrap(), 1);
        Update::Alive { id, incarnation }
    }

    #[test]
    fn fresh_updates_go_first_and_retire_after_the_limit() {
        let mut q = Broadcasts::default();
        q.push(Topic::Member(1), alive("a", 0));
        let mut out = Vec::new();
        q.fill(1000, 100, 2, None, &mut out);
        q.push(Topic::Member(2), alive("b", 0));
        out.clear();
        q.fill(1000, 1, 2, None, &mut out);
        assert_eq!(out, vec![alive("b", 0)], "the never-sent update goes first");
        out.clear();
        q.fill(1000, 100, 2, None, &mut out);
        assert_eq!(out, vec![alive("b", 0), alive("a", 0)]);
        assert!(q.is_empty(), "both were sent twice, the limit");
    }

    #[test]
    fn a_newer_update_replaces_the_queued_one_on_the_same_topic() {
        let mut q = Broadcasts::default();
        q.push(Topic::Member(1), alive("a", 0));
        q.push(Topic::Member(1), alive("a", 1));
        assert_eq!(q.len(), 1);
        let mut out = Vec::new();
        q.fill(1000, 100, 5, None, &mut out);
        assert_eq!(out, vec![alive("a", 1)]);
    }

    #[test]
    fn filling_respects_the_byte_budget_exactly() {
        let mut q = Broadcasts::default();
        for i in 0..100 {
            q.push(Topic::Member(i), alive(&format!("member-{i}"), u64::from(i)));
        }
        let mut out = Vec::new();
        let used = q.fill(200, 100, 5, None, &mut out);
        let real: usize = out.iter().map(encoded_len).sum();
        assert_eq!(used, real);
        assert!(used <= 200 && used > 200 - 40, "{used}");
    }
}
