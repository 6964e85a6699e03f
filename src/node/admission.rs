//! Slots for connections between their first packet and the end of the secret handshake.
//!
//! A handshake costs the node TLS work and holds state until it finishes or times out, so a
//! peer that finishes TLS and then never proves the secret holds a slot for the whole
//! deadline. Without more than a node-wide cap, a few hundred such connections from one
//! address lock everyone out (issue 22, point 6). The slots are therefore shared out:
//!
//! - per source (address and port): a handful. A client process or a node connects from one
//!   socket and needs one handshake at a time; a flood from one socket gets no more than this,
//!   and the handshakes it lets time out are penalised per source (see `penalty`), so it soon
//!   gets even fewer. Honest clients on the same host come from ports of their own and are
//!   not held back by it.
//! - per address: well below the node-wide cap, so that one host (many ports, or behind one
//!   NAT) cannot take every slot, nor all of the share kept for known addresses.
//! - a share of the node-wide cap kept for addresses that proved the secret before (the
//!   cluster's other nodes, hosts its clients run on): a flood from addresses that never did
//!   cannot take it, so the cluster keeps talking to itself during one.
//!
//! Under pressure (half the node-wide cap in use) the listener first asks a connection to
//! prove it owns its address with a QUIC Retry (stateless and cheap for the node), so that a
//! flood from spoofed addresses never gets a slot, nor a penalty entry against an address it
//! does not own.
//!
//! Pure bookkeeping, with time as an input; a slot is released when its [`Ticket`] drops.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Handshakes one source (address and port) may have unfinished at once.
const PER_SOURCE: usize = 8;
/// Addresses remembered as having proved the secret, and for how long after their last proof.
const MAX_PROVEN: usize = 4096;
const PROVEN_FOR: Duration = Duration::from_secs(24 * 3600);

/// Why a handshake was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Its source has too many handshakes unfinished.
    Source(usize),
    /// Its address has too many handshakes unfinished.
    Address(usize),
    /// The node has no slot left for it (for an address never proven: none outside the
    /// share kept for proven ones).
    Node(usize),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Source(n) => write!(f, "{n} handshakes unfinished from this source (address and port)"),
            Self::Address(n) => write!(f, "{n} handshakes unfinished from this address"),
            Self::Node(n) => write!(f, "{n} handshakes unfinished on this node"),
        }
    }
}

/// The handshake slots of a node.
#[derive(Debug)]
pub struct Handshakes {
    limit: usize,
    per_address: usize,
    per_source: usize,
    /// Slots only addresses that proved the secret before may use.
    reserved: usize,
    in_progress: usize,
    /// Handshakes in progress from addresses never proven.
    strangers: usize,
    by_address: HashMap<IpAddr, usize>,
    by_source: HashMap<SocketAddr, usize>,
    proven: HashMap<IpAddr, Instant>,
}

impl Handshakes {
    /// Slots for `limit` (`max_handshakes`) handshakes at once: an eighth of them per address,
    /// a quarter kept for addresses proven before.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        let per_address = (limit / 8).max(1);
        Self {
            limit,
            per_address,
            per_source: PER_SOURCE.min(per_address),
            reserved: limit / 4,
            in_progress: 0,
            strangers: 0,
            by_address: HashMap::new(),
            by_source: HashMap::new(),
            proven: HashMap::new(),
        }
    }

    /// Whether enough handshakes are in progress that a connection should first prove it
    /// owns its address (a QUIC Retry) before it gets a slot.
    pub fn under_pressure(&self) -> bool {
        self.in_progress >= self.limit / 2
    }

    fn is_proven(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.proven.get(&ip) {
            Some(at) if now.duration_since(*at) <= PROVEN_FOR => true,
            Some(_) => {
                self.proven.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// A slot for a handshake from `source`, or why there is none.
    fn admit(&mut self, source: SocketAddr, now: Instant) -> Result<bool, Full> {
        let ip = source.ip();
        let from_source = self.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.per_source {
            return Err(Full::Source(from_source));
        }
        let from_address = self.by_address.get(&ip).copied().unwrap_or(0);
        if from_address >= self.per_address {
            return Err(Full::Address(from_address));
        }
        let proven = self.is_proven(ip, now);
        if self.in_progress >= self.limit || (!proven && self.strangers >= self.limit - self.reserved) {
            return Err(Full::Node(self.in_progress));
        }
        self.in_progress += 1;
        self.strangers += usize::from(!proven);
        *self.by_source.entry(source).or_default() += 1;
        *self.by_address.entry(ip).or_default() += 1;
        Ok(proven)
    }

    fn release(&mut self, source: SocketAddr, proven: bool) {
        self.in_progress -= 1;
        self.strangers -= usize::from(!proven);
        decrement(&mut self.by_source, source);
        decrement(&mut self.by_address, source.ip());
    }

    /// `ip` proved the secret: from now on its handshakes may use the share kept for proven
    /// addresses. The oldest proof is forgotten when too many are remembered.
    pub fn proved(&mut self, ip: IpAddr, now: Instant) {
        if self.proven.len() >= MAX_PROVEN && !self.proven.contains_key(&ip) {
            self.proven.retain(|_, at| now.duration_since(*at) <= PROVEN_FOR);
            if self.proven.len() >= MAX_PROVEN {
                let oldest = self.proven.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    self.proven.remove(&oldest);
                }
            }
        }
        self.proven.insert(ip, now);
    }
}

/// Counts one fewer for `key`; a count that reaches zero is removed, so that the maps hold
/// only sources and addresses with handshakes in progress.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// A node's handshake slots, shared by the listener and the connections' tasks.
#[derive(Clone, Debug)]
pub struct Slots(Arc<Mutex<Handshakes>>);

impl Slots {
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Mutex::new(Handshakes::new(limit))))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Handshakes> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a handshake from `source`, held until the ticket drops.
    pub fn admit(&self, source: SocketAddr, now: Instant) -> Result<Ticket, Full> {
        let proven = self.lock().admit(source, now)?;
        Ok(Ticket {
            slots: self.clone(),
            source,
            proven,
        })
    }
}

/// One handshake slot; given back when dropped, however the handshake ended.
#[derive(Debug)]
pub struct Ticket {
    slots: Slots,
    source: SocketAddr,
    proven: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.slots.lock().release(self.source, self.proven);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, ip], port))
    }

    #[test]
    fn one_source_gets_a_handful_and_its_neighbours_on_other_ports_still_get_in() {
        let slots = Slots::new(256);
        let now = Instant::now();
        let held: Vec<_> = (0..300).filter_map(|_| slots.admit(src(1, 1), now).ok()).collect();
        assert_eq!(held.len(), PER_SOURCE);
        assert_eq!(slots.admit(src(1, 1), now).unwrap_err(), Full::Source(PER_SOURCE));
        let honest: Vec<_> = (2..22).map(|port| slots.admit(src(1, port), now)).collect();
        assert!(honest.iter().all(Result::is_ok), "{honest:?}");
    }

    #[test]
    fn one_address_gets_an_eighth_of_the_node_however_many_ports_it_uses() {
        let slots = Slots::new(256);
        let now = Instant::now();
        let held: Vec<_> = (1..=1000)
            .filter_map(|port| slots.admit(src(1, port), now).ok())
            .collect();
        assert_eq!(held.len(), 32);
        assert_eq!(slots.admit(src(1, 5000), now).unwrap_err(), Full::Address(32));
        assert!(slots.admit(src(2, 1), now).is_ok(), "another address");
    }

    #[test]
    fn a_slot_is_given_back_when_its_ticket_drops() {
        let slots = Slots::new(8);
        let now = Instant::now();
        let ticket = slots.admit(src(1, 1), now).unwrap();
        assert!(slots.admit(src(1, 2), now).is_err(), "one per address of a node with 8");
        drop(ticket);
        let _again = slots.admit(src(1, 2), now).unwrap();
        let h = slots.lock();
        assert_eq!((h.in_progress, h.strangers), (1, 1));
        assert!(h.by_source.len() == 1 && h.by_address.len() == 1);
    }

    #[test]
    fn strangers_cannot_take_the_share_kept_for_proven_addresses() {
        let slots = Slots::new(256);
        let now = Instant::now();
        slots.lock().proved(src(200, 1).ip(), now);
        // A flood from many addresses never proven, 32 each (the per-address cap).
        let mut flood = Vec::new();
        for ip in 1..=100 {
            flood.extend((1..=32).filter_map(|port| slots.admit(src(ip, port), now).ok()));
        }
        assert_eq!(flood.len(), 256 - 64);
        assert_eq!(slots.admit(src(150, 1), now).unwrap_err(), Full::Node(192));
        let proven: Vec<_> = (1..=32).map(|port| slots.admit(src(200, port), now)).collect();
        assert!(proven.iter().all(Result::is_ok), "a proven address keeps its share");
        // Giving a stranger's slot back lets another stranger in, not more.
        flood.pop();
        let _stranger = slots.admit(src(150, 1), now).unwrap();
        assert!(slots.admit(src(150, 2), now).is_err());
    }

    #[test]
    fn proof_is_forgotten_after_a_while_and_the_memory_of_it_is_bounded() {
        let mut h = Handshakes::new(256);
        let t0 = Instant::now();
        h.proved(src(1, 1).ip(), t0);
        assert!(h.is_proven(src(1, 1).ip(), t0 + PROVEN_FOR));
        assert!(!h.is_proven(src(1, 1).ip(), t0 + PROVEN_FOR + Duration::from_secs(1)));
        for i in 0..(MAX_PROVEN as u32 + 10) {
            h.proved(
                IpAddr::from(std::net::Ipv4Addr::from(i)),
                t0 + Duration::from_micros(i as u64),
            );
        }
        assert_eq!(h.proven.len(), MAX_PROVEN);
    }

    #[test]
    fn pressure_starts_at_half_the_cap() {
        let slots = Slots::new(8);
        let now = Instant::now();
        let a = slots.admit(src(1, 1), now).unwrap();
        let _b = slots.admit(src(2, 1), now).unwrap();
        let _c = slots.admit(src(3, 1), now).unwrap();
        assert!(!slots.lock().under_pressure());
        let _d = slots.admit(src(4, 1), now).unwrap();
        assert!(slots.lock().under_pressure());
        drop(a);
        assert!(!slots.lock().under_pressure());
    }
}
