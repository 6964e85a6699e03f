//! Suspicion timers, shortened by independent confirmations (Lifeguard, as in memberlist).
//!
//! A member suspected by us, or by someone whose suspicion we heard, is declared dead when
//! its timer runs out. The timer starts at `max` and shrinks towards `min` as other members
//! independently suspect it too: false suspicions (one node with a bad link) stay long enough
//! to be refuted, while a member that everyone finds silent is declared dead quickly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::members::{FxMap, Slot};
use super::message::Ident;

/// `max(min, max - (max - min) * log(C + 1) / log(K + 1))`: `C` confirmations out of `K`
/// expected ones.
pub(crate) fn suspicion_timeout(min: Duration, max: Duration, k: u32, confirmations: u32) -> Duration {
    if k == 0 || max <= min {
        return min;
    }
    let frac = f64::from(confirmations + 1).ln() / f64::from(k + 1).ln();
    let span = (max - min).as_secs_f64() * frac.min(1.0);
    max.saturating_sub(Duration::from_secs_f64(span)).max(min)
}

#[derive(Debug)]
struct Suspicion {
    incarnation: u64,
    start: Instant,
    min: Duration,
    max: Duration,
    k: u32,
    /// The original suspecter (not a confirmation) and every confirmer so far.
    seen: Voices,
    deadline: Instant,
}

/// Who voiced a suspicion: up to K + 1 members. The first four (K is 3 unless configured
/// otherwise) are kept inline: counting a confirmation is the hottest path of a healing
/// partition at 10,000 nodes, and a separate allocation per suspicion cost a cache miss there.
#[derive(Debug, Default)]
struct Voices {
    first: [Option<Ident>; 4],
    more: Vec<Ident>,
}

impl Voices {
    fn of(by: &Ident) -> Self {
        let mut v = Self::default();
        v.first[0] = Some(by.clone());
        v
    }

    fn len(&self) -> usize {
        self.first.iter().filter(|v| v.is_some()).count() + self.more.len()
    }

    fn contains(&self, by: &Ident) -> bool {
        self.first
            .iter()
            .flatten()
            .chain(&self.more)
            .any(|i| i.ptr_eq(by) || i.name == by.name)
    }

    fn push(&mut self, by: &Ident) {
        match self.first.iter_mut().find(|v| v.is_none()) {
            Some(free) => *free = Some(by.clone()),
            None => self.more.push(by.clone()),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Suspicions {
    active: FxMap<Slot, Suspicion>,
    /// Deadlines, some stale (moved or cancelled); checked against `active` when popped.
    timers: BinaryHeap<Reverse<(Instant, Slot)>>,
}

impl Suspicions {
    /// Starts (or restarts, for a new incarnation) the timer of `slot`, suspected by `by`.
    pub fn start(&mut self, slot: Slot, incarnation: u64, by: &Ident, now: Instant, bounds: (Duration, Duration, u32)) {
        let (min, max, k) = bounds;
        let deadline = now + suspicion_timeout(min, max, k, 0);
        self.active.insert(
            slot,
            Suspicion {
                incarnation,
                start: now,
                min,
                max,
                k,
                seen: Voices::of(by),
                deadline,
            },
        );
        self.timers.push(Reverse((deadline, slot)));
    }

    /// Counts `by`'s suspicion of `slot` at `incarnation` if it is a new voice; returns whether
    /// it was (the caller then re-gossips it so others count it too).
    pub fn confirm(&mut self, slot: Slot, incarnation: u64, by: &Ident) -> bool {
        let Some(s) = self.active.get_mut(&slot) else {
            return false;
        };
        if s.incarnation != incarnation || s.seen.len() > s.k as usize || s.seen.contains(by) {
            return false;
        }
        s.seen.push(by);
        let confirmations = (s.seen.len() - 1) as u32;
        let deadline = s.start + suspicion_timeout(s.min, s.max, s.k, confirmations);
        if deadline < s.deadline {
            s.deadline = deadline;
            self.timers.push(Reverse((deadline, slot)));
        }
        true
    }

    pub fn cancel(&mut self, slot: Slot) {
        self.active.remove(&slot);
    }

    #[cfg(test)]
    pub fn is_active(&self, slot: Slot) -> bool {
        self.active.contains_key(&slot)
    }

    /// The earliest deadline, possibly a stale one (waking early only costs a no-op).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes the suspicions whose time is up, as (slot, incarnation).
    pub fn expired(&mut self, now: Instant, out: &mut Vec<(Slot, u64)>) {
        while let Some(&Reverse((t, slot))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(s) = self.active.get(&slot)
                && s.deadline <= now
            {
                out.push((slot, s.incarnation));
                self.active.remove(&slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::NodeName;

    fn ident(name: &str) -> Ident {
        Ident::new(NodeName::new(name).unwrap(), "10.0.0.1:1".parse().unwrap(), 1)
    }

    #[test]
    fn the_timeout_falls_from_max_to_min_with_confirmations() {
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(12));
        assert_eq!(suspicion_timeout(min, max, 3, 0), max);
        let one = suspicion_timeout(min, max, 3, 1);
        let two = suspicion_timeout(min, max, 3, 2);
        assert!(max > one && one > two && two > min, "{one:?} {two:?}");
        assert_eq!(suspicion_timeout(min, max, 3, 3), min);
        assert_eq!(suspicion_timeout(min, max, 3, 9), min);
        assert_eq!(suspicion_timeout(min, max, 0, 0), min, "no one can confirm: min");
    }

    #[test]
    fn confirmations_shorten_the_suspicion_timeout() {
        let now = Instant::now();
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(12));
        let mut s = Suspicions::default();
        s.start(7, 4, &ident("a"), now, (min, max, 3));
        let mut out = Vec::new();
        s.expired(now + Duration::from_secs(11), &mut out);
        assert!(out.is_empty());
        assert!(
            !s.confirm(7, 4, &ident("a")),
            "the original suspecter is no confirmation"
        );
        assert!(!s.confirm(7, 3, &ident("b")), "an older incarnation is no confirmation");
        assert!(s.confirm(7, 4, &ident("b")));
        assert!(!s.confirm(7, 4, &ident("b")), "each member counts once");
        assert!(s.confirm(7, 4, &ident("c")));
        assert!(s.confirm(7, 4, &ident("d")));
        assert_eq!(s.next_deadline(), Some(now + min));
        s.expired(now + min, &mut out);
        assert_eq!(out, vec![(7, 4)]);
        assert!(!s.is_active(7));
    }

    #[test]
    fn with_more_expected_confirmations_than_kept_inline_each_voice_still_counts_once() {
        let now = Instant::now();
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(12));
        let mut s = Suspicions::default();
        s.start(3, 0, &ident("a"), now, (min, max, 6));
        for (i, by) in ["b", "c", "d", "e", "f", "g"].into_iter().enumerate() {
            assert!(s.confirm(3, 0, &ident(by)), "{by}");
            assert!(!s.confirm(3, 0, &ident(by)), "{by} again");
            let deadline = now + suspicion_timeout(min, max, 6, i as u32 + 1);
            assert_eq!(s.next_deadline(), Some(deadline), "after {by}");
        }
        assert!(!s.confirm(3, 0, &ident("h")), "K confirmations are all that count");
        assert!(!s.confirm(3, 0, &ident("a")));
    }

    #[test]
    fn a_cancelled_suspicion_never_expires() {
        let now = Instant::now();
        let mut s = Suspicions::default();
        s.start(
            1,
            0,
            &ident("a"),
            now,
            (Duration::from_secs(1), Duration::from_secs(1), 3),
        );
        s.cancel(1);
        let mut out = Vec::new();
        s.expired(now + Duration::from_secs(5), &mut out);
        assert!(out.is_empty());
        assert_eq!(s.next_deadline(), None, "stale timers are drained");
    }
}
