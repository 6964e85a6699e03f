//! Read leases of the ranges this node leads (issue 25): a linearizable read served from the
//! leader's applied state with no heartbeat round, while a round a majority answered lately
//! says no other leader can have been elected.
//!
//! The safety argument is `kvnode_replica::Replicas::lease_standing`'s: a read-index round
//! asked at `t` and confirmed while the leader's standing is unchanged lets it serve reads
//! until `t + LEASE` ([`LEASE`] is `ReplicaConfig::lease` ticks, two ticks short of the
//! followers' refusal to vote). `t` is taken when the read reached the driver, before the
//! round's heartbeat was sent. Times are this process's monotonic clock, which runs on while
//! the process is stopped (SIGSTOP), so a leader stopped past its lease finds it over. A read
//! checks the lease before and after it reads: what it read was the range's state at a
//! moment the lease held.
//!
//! A lease ends before anything that would let another leader in sooner: a transfer (ended
//! before its message is sent), the group dropped (before its data goes), a new driver run.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use kvnode_replica::{LeaseStanding, RangeId};

/// One lease: until when it holds, and the standing it was taken at.
#[derive(Clone, Copy, Debug)]
struct Lease {
    until: Instant,
    standing: LeaseStanding,
}

/// The leases this node holds, shared by the driver (which takes and ends them) and the
/// request handlers (which read by them).
#[derive(Debug, Default)]
pub(crate) struct Leases {
    held: RwLock<HashMap<RangeId, Lease>>,
}

impl Leases {
    /// Whether a read of `range` may be served from this node's applied state at `now`.
    pub(crate) fn holds(&self, range: RangeId, now: Instant) -> bool {
        self.read().get(&range).is_some_and(|l| now < l.until)
    }

    /// A read-index round asked at `asked` at `standing` was confirmed, and the leader still
    /// stands there: the lease runs to `asked + len` (or on, if it already ran further).
    pub(crate) fn renew(&self, range: RangeId, standing: LeaseStanding, asked: Instant, len: Duration) {
        let until = asked + len;
        let mut held = self.write();
        let lease = held.entry(range).or_insert(Lease { until, standing });
        if lease.standing != standing {
            *lease = Lease { until, standing };
        } else if lease.until < until {
            lease.until = until;
        }
    }

    /// Ends every lease whose range's standing is no longer the one it was taken at
    /// (`standing` says where each range stands now; `None` where this node does not lead).
    pub(crate) fn keep(&self, standing: impl Fn(RangeId) -> Option<LeaseStanding>) {
        let stale = self.read().iter().any(|(&r, l)| standing(r) != Some(l.standing));
        if stale {
            self.write().retain(|&r, l| standing(r) == Some(l.standing));
        }
    }

    /// Ends the lease of `range`.
    pub(crate) fn end(&self, range: RangeId) {
        if self.read().contains_key(&range) {
            self.write().remove(&range);
        }
    }

    /// Ends every lease.
    pub(crate) fn clear(&self) {
        self.write().clear();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<RangeId, Lease>> {
        self.held.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RangeId, Lease>> {
        self.held.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: RangeId = RangeId {
        first: b'a',
        last: b'm',
    };
    const LEN: Duration = Duration::from_millis(350);

    fn at(term: u64, changes: u64) -> LeaseStanding {
        LeaseStanding { term, changes }
    }

    #[test]
    fn a_lease_holds_from_the_round_asked_for_its_length_only() {
        let leases = Leases::default();
        let t = Instant::now();
        assert!(!leases.holds(RANGE, t), "none taken");
        leases.renew(RANGE, at(3, 0), t, LEN);
        assert!(leases.holds(RANGE, t + LEN - Duration::from_millis(1)));
        assert!(!leases.holds(RANGE, t + LEN), "over at its end");
        // A round asked earlier, confirmed later, does not shorten it; a later one lengthens it.
        leases.renew(RANGE, at(3, 0), t - Duration::from_millis(100), LEN);
        assert!(leases.holds(RANGE, t + LEN - Duration::from_millis(1)));
        leases.renew(RANGE, at(3, 0), t + Duration::from_millis(100), LEN);
        assert!(leases.holds(RANGE, t + LEN + Duration::from_millis(99)));
    }

    #[test]
    fn a_changed_standing_ends_the_lease() {
        let leases = Leases::default();
        let t = Instant::now();
        leases.renew(RANGE, at(3, 0), t, LEN);
        leases.keep(|_| Some(at(3, 0)));
        assert!(leases.holds(RANGE, t));
        leases.keep(|_| Some(at(3, 1)));
        assert!(!leases.holds(RANGE, t), "a transfer asked or a configuration applied");
        leases.renew(RANGE, at(3, 1), t, LEN);
        leases.keep(|_| None);
        assert!(!leases.holds(RANGE, t), "no longer leading");
        // A round of an older standing renewing: taken as the newer lease it names, never
        // as a lengthening of another standing's.
        leases.renew(RANGE, at(4, 0), t, LEN);
        leases.renew(RANGE, at(3, 0), t + LEN, LEN);
        leases.keep(|_| Some(at(4, 0)));
        assert!(!leases.holds(RANGE, t));
        leases.renew(RANGE, at(4, 0), t, LEN);
        leases.end(RANGE);
        assert!(!leases.holds(RANGE, t));
    }
}
