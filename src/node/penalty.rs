//! Slowing down sources that fail the secret handshake, so a flood of wrong-secret attempts
//! costs the node almost nothing and authenticated clients keep their speed.
//!
//! Pure bookkeeping with time as an input. A source (address and port) that failed gets a
//! strict token bucket; its address as a whole gets a looser one, which bounds an attacker who
//! changes ports without shutting out honest clients on the same host (or behind the same NAT).
//! Attempts beyond a bucket are refused before any TLS work. Buckets are forgotten after a
//! quiet spell, and warnings are summarised: one line per address per interval, with a count.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A failed source may try this often (per second), in bursts of this many.
const SOURCE_RATE: (f64, f64) = (1.0, 3.0);
/// An address with failures may start this many handshakes per second, from all its ports.
const ADDRESS_RATE: (f64, f64) = (50.0, 100.0);
/// A source or address that has not failed for this long is forgiven.
const FORGIVE_AFTER: Duration = Duration::from_secs(60);
/// At most one warning line per address per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Bound on tracked sources and addresses (a distributed flood must not grow them without end).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    last_failure: Instant,
}

impl Bucket {
    fn new(now: Instant, (_, burst): (f64, f64)) -> Self {
        Self {
            tokens: burst,
            refilled: now,
            last_failure: now,
        }
    }

    fn take(&mut self, now: Instant, (rate, burst): (f64, f64)) -> bool {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Buckets by key, forgotten when quiet, bounded in number.
#[derive(Debug)]
struct Buckets<K> {
    rate: (f64, f64),
    by_key: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    fn new(rate: (f64, f64)) -> Self {
        Self {
            rate,
            by_key: HashMap::new(),
        }
    }

    /// `true` if `key` never failed (or was forgiven), or still has a token.
    fn allow(&mut self, key: K, now: Instant) -> bool {
        let Some(b) = self.by_key.get_mut(&key) else {
            return true;
        };
        if now.duration_since(b.last_failure) > FORGIVE_AFTER {
            self.by_key.remove(&key);
            return true;
        }
        b.take(now, self.rate)
    }

    /// Gives `key` back the token it spent on an attempt that turned out honest.
    fn give_back(&mut self, key: K) {
        if let Some(b) = self.by_key.get_mut(&key) {
            b.tokens = (b.tokens + 1.0).min(self.rate.1);
        }
    }

    fn failed(&mut self, key: K, now: Instant) {
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_TRACKED {
            let oldest = self.by_key.iter().min_by_key(|(_, b)| b.last_failure).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.by_key.remove(&k);
            }
        }
        self.by_key
            .entry(key)
            .or_insert_with(|| Bucket::new(now, self.rate))
            .last_failure = now;
    }
}

#[derive(Debug, Default)]
struct Reporting {
    last_warning: Option<Instant>,
    /// Failed or refused attempts since the last warning line.
    unreported: u64,
}

/// Which sources have failed authentication, and how fast they may try again.
#[derive(Debug)]
pub struct Penalties {
    sources: Buckets<SocketAddr>,
    addresses: Buckets<IpAddr>,
    reports: HashMap<IpAddr, Reporting>,
}

impl Default for Penalties {
    fn default() -> Self {
        Self {
            sources: Buckets::new(SOURCE_RATE),
            addresses: Buckets::new(ADDRESS_RATE),
            reports: HashMap::new(),
        }
    }
}

/// What to log about a failure, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Warning {
    /// The first failure from this address in a while.
    First,
    /// A summary: this many more failed or refused attempts since the last line.
    Repeated(u64),
}

impl Penalties {
    /// Whether a new connection from `peer` may start its handshake now.
    pub fn allow(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let source = self.sources.allow(peer, now);
        let allowed = source && self.addresses.allow(peer.ip(), now);
        if !allowed {
            tracing::trace!(%peer, by = if source { "address" } else { "source" }, "slowed down");
        }
        if !allowed && let Some(r) = self.reports.get_mut(&peer.ip()) {
            r.unreported += 1;
        }
        allowed
    }

    /// `peer` proved the secret: whatever failed from that source before (a port the system
    /// handed out again after a flood from this host used it) is forgiven, and the token its
    /// address spent on it is given back. The address stays metered for failures, so an
    /// attacker behind the same address gains nothing by it.
    pub fn succeeded(&mut self, peer: SocketAddr) {
        self.sources.by_key.remove(&peer);
        // An honest connection does not spend its address's budget for failing ones.
        self.addresses.give_back(peer.ip());
    }

    /// Records a failed authentication from `peer`; says whether (and what) to log.
    pub fn failed(&mut self, peer: SocketAddr, now: Instant) -> Option<Warning> {
        self.sources.failed(peer, now);
        self.addresses.failed(peer.ip(), now);
        if self.reports.len() >= MAX_TRACKED && !self.reports.contains_key(&peer.ip()) {
            self.reports.retain(|ip, _| self.addresses.by_key.contains_key(ip));
        }
        let r = self.reports.entry(peer.ip()).or_default();
        match r.last_warning {
            Some(at) if now.duration_since(at) < FORGIVE_AFTER && now.duration_since(at) < WARN_EVERY => {
                r.unreported += 1;
                None
            }
            Some(at) if now.duration_since(at) < FORGIVE_AFTER => {
                r.last_warning = Some(now);
                Some(Warning::Repeated(std::mem::take(&mut r.unreported) + 1))
            }
            _ => {
                *r = Reporting {
                    last_warning: Some(now),
                    unreported: 0,
                };
                Some(Warning::First)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn a_source_that_never_failed_is_never_limited() {
        let mut p = Penalties::default();
        let now = Instant::now();
        assert!((0..1000).all(|_| p.allow(src(1), now)));
    }

    #[test]
    fn a_failing_source_gets_a_small_burst_then_one_a_second() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        p.failed(src(1), t0);
        assert_eq!((0..100).filter(|_| p.allow(src(1), t0)).count(), SOURCE_RATE.1 as usize);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| p.allow(src(1), t1)).count(), SOURCE_RATE.0 as usize);
    }

    #[test]
    fn another_port_on_the_same_host_is_not_shut_out() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        p.failed(src(1), t0);
        while p.allow(src(1), t0) {}
        assert!(
            (0..50).all(|_| p.allow(src(2), t0)),
            "an honest client on the flooder's host"
        );
    }

    #[test]
    fn a_source_that_authenticates_is_forgiven() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        p.failed(src(1), t0);
        while p.allow(src(1), t0) {}
        p.succeeded(src(1));
        assert!(
            (0..50).all(|_| p.allow(src(1), t0)),
            "many connections from one honest socket"
        );
        // Honest connections from the flooded address give their tokens back.
        p.failed(src(2), t0);
        for port in 3..1000 {
            assert!(p.allow(src(port), t0), "honest connection {port}");
            p.succeeded(src(port));
        }
    }

    #[test]
    fn an_address_changing_ports_is_capped_as_a_whole() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        let mut allowed = 0;
        for port in 1..=2000u16 {
            if p.allow(src(port), t0) {
                allowed += 1;
                p.failed(src(port), t0);
            }
        }
        // The first failure opens the address bucket; from then on it holds the burst.
        assert!(allowed <= ADDRESS_RATE.1 as usize + 1, "{allowed}");
        assert!(
            p.allow(SocketAddr::from(([10, 0, 0, 2], 1)), t0),
            "other addresses are untouched"
        );
    }

    #[test]
    fn a_quiet_source_is_forgiven() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        p.failed(src(1), t0);
        while p.allow(src(1), t0) {}
        assert!(p.allow(src(1), t0 + FORGIVE_AFTER + Duration::from_secs(1)));
        assert!(p.sources.by_key.is_empty());
    }

    #[test]
    fn warnings_are_summarised_per_interval() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        assert_eq!(p.failed(src(1), t0), Some(Warning::First));
        for i in 1..50 {
            assert_eq!(p.failed(src(1), t0 + Duration::from_millis(i)), None);
        }
        let t = t0 + Duration::from_millis(60);
        while p.allow(src(1), t) {} // the burst, then exactly one refusal
        match p.failed(src(1), t0 + WARN_EVERY) {
            Some(Warning::Repeated(n)) => assert_eq!(n, 51, "49 failures + 1 refusal + this one"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p.failed(src(1), t0 + WARN_EVERY + FORGIVE_AFTER * 2),
            Some(Warning::First)
        );
    }

    #[test]
    fn the_tables_are_bounded() {
        let mut p = Penalties::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let peer = SocketAddr::from((std::net::Ipv4Addr::from(i), 1));
            p.failed(peer, t0 + Duration::from_micros(i as u64));
        }
        assert_eq!(p.sources.by_key.len(), MAX_TRACKED);
        assert_eq!(p.addresses.by_key.len(), MAX_TRACKED);
        assert!(p.reports.len() <= MAX_TRACKED + 1);
    }
}
