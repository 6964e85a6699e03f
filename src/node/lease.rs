//! Read leases of the ranges this node leads (issue 25): a linearizable read served from the
//! leader's applied state with no heartbeat round, while a round a majority answered lately
//! says no other leader can have been elected.
//!
//! The safety argument is `kvnode_replica::Replicas::lease_standing`'s: a read-index round
//! asked at `t` and confirmed while the leader's standing is unchanged lets it serve reads
//! until `t + lease` (`ReplicaConfig::lease` ticks, two ticks short of the followers'
//! refusal to vote). `t` is taken when the read reached the driver, before the round's
//! heartbeat was sent. Times are the machine's time since boot ([`now`]), which runs on while
//! the process is stopped (SIGSTOP) or the machine suspended, so a leader stopped past its
//! lease finds it over (its ticks stood still). A read checks the lease before and after it
//! reads: what it read was the range's state at a moment the lease held.
//!
//! A lease ends before anything that would let another leader in sooner: a transfer (ended
//! before its message is sent), the group dropped (before its data goes), a new driver run.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use kvnode_replica::{LeaseStanding, RangeId};

/// The clock leases are counted on: the time since boot, suspends included (Linux's
/// `CLOCK_BOOTTIME`; `Instant`'s `CLOCK_MONOTONIC` stands still while the machine is
/// suspended, and some hypervisors' pauses look alike). `None` where there is no such clock:
/// then no lease is taken or served.
pub(crate) fn now() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec for the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0 {
            return Some(Duration::new(
                u64::try_from(ts.tv_sec).ok()?,
                u32::try_from(ts.tv_nsec).ok()?,
            ));
        }
    }
    None
}

/// One lease: until when it holds (on [`now`]'s clock), and the standing it was taken at.
#[derive(Clone, Copy, Debug)]
struct Lease {
    until: Duration,
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
    pub(crate) fn holds(&self, range: RangeId, now: Option<Duration>) -> bool {
        now.is_some_and(|now| self.read().get(&range).is_some_and(|l| now < l.until))
    }

    /// A read-index round asked at `asked` at `standing` was confirmed, and the leader still
    /// stands there: the lease runs to `asked + len` (or on, if it already ran further).
    pub(crate) fn renew(&self, range: RangeId, standing: LeaseStanding, asked: Option<Duration>, len: Duration) {
        let Some(asked) = asked else { return };
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

    /// A time on the leases' clock, `ms` after an arbitrary start.
    fn at_ms(ms: u64) -> Option<Duration> {
        Some(Duration::from_secs(1000) + Duration::from_millis(ms))
    }

    #[test]
    fn the_clock_runs_and_never_back() {
        let (a, b) = (now(), now());
        assert!(a.is_some(), "CLOCK_BOOTTIME on Linux");
        assert!(b >= a);
    }

    #[test]
    fn a_lease_holds_from_the_round_asked_for_its_length_only() {
        let leases = Leases::default();
        let t = 0;
        assert!(!leases.holds(RANGE, at_ms(t)), "none taken");
        assert!(!leases.holds(RANGE, None), "no clock, no lease");
        leases.renew(RANGE, at(3, 0), at_ms(t), LEN);
        assert!(leases.holds(RANGE, at_ms(t + 349)));
        assert!(!leases.holds(RANGE, at_ms(t + 350)), "over at its end");
        // A round asked earlier, confirmed later, does not shorten it; a later one lengthens it.
        leases.renew(RANGE, at(3, 0), at_ms(0).map(|d| d - Duration::from_millis(100)), LEN);
        assert!(leases.holds(RANGE, at_ms(t + 349)));
        leases.renew(RANGE, at(3, 0), at_ms(t + 100), LEN);
        assert!(leases.holds(RANGE, at_ms(t + 449)));
    }

    #[test]
    fn a_changed_standing_ends_the_lease() {
        let leases = Leases::default();
        let t = 0;
        leases.renew(RANGE, at(3, 0), at_ms(t), LEN);
        leases.keep(|_| Some(at(3, 0)));
        assert!(leases.holds(RANGE, at_ms(t)));
        leases.keep(|_| Some(at(3, 1)));
        assert!(
            !leases.holds(RANGE, at_ms(t)),
            "a transfer asked or a configuration applied"
        );
        leases.renew(RANGE, at(3, 1), at_ms(t), LEN);
        leases.keep(|_| None);
        assert!(!leases.holds(RANGE, at_ms(t)), "no longer leading");
        // A round of an older standing renewing: taken as the newer lease it names, never
        // as a lengthening of another standing's.
        leases.renew(RANGE, at(4, 0), at_ms(t), LEN);
        leases.renew(RANGE, at(3, 0), at_ms(t + 350), LEN);
        leases.keep(|_| Some(at(4, 0)));
        assert!(!leases.holds(RANGE, at_ms(t)));
        leases.renew(RANGE, at(4, 0), at_ms(t), LEN);
        leases.end(RANGE);
        assert!(!leases.holds(RANGE, at_ms(t)));
    }
}
