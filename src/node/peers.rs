//! Connections between this node and other nodes: one pooled, authenticated QUIC connection
//! per peer address, whichever side opened it, with a few long-lived request streams on it
//! that many forwarded requests share. Both ends serve requests (and gossip) on it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Me;
use crate::keyring::SharedKeyring;
use crate::names::NodeName;
use crate::rpc::{CallError, Channel, PendingCall, StreamKey};
use crate::transport::{self, Authed, ConnectError, Connection, Endpoint, RequestStreams};
use crate::wire::{RemoteError, Reply, Request, Role};

/// Request streams opened per peer connection; calls are spread over them. More streams
/// means smaller batches per write and per answer burst (4 measured 2-15 % slower through a
/// hop than 2; 1 slower again), fewer means more head-of-line waiting on a lost packet, one
/// serving task at the owner for all of this node's requests, and a lower cap on the
/// requests that wait there at once (the owner's `max_requests_per_stream` per stream).
const STREAMS_PER_PEER: usize = 2;

/// One live connection to a peer.
pub struct PeerConn {
    authed: Authed,
    pub addr: SocketAddr,
    streams: RequestStreams,
    next: AtomicUsize,
    /// The last call on this connection got no answer (it timed out, or the stream broke):
    /// the peer may have died and come back elsewhere, so until a call is answered again,
    /// forwarding looks the peer's name up before it uses this connection.
    unanswered: AtomicBool,
}

impl PeerConn {
    fn new(authed: Authed, addr: SocketAddr) -> Self {
        Self {
            authed,
            addr,
            streams: RequestStreams::new(STREAMS_PER_PEER),
            next: AtomicUsize::new(0),
            unanswered: AtomicBool::new(false),
        }
    }

    pub fn is_alive(&self) -> bool {
        self.authed.conn.is_alive()
    }

    /// Whether the last call on this connection got no answer (see `unanswered`).
    pub fn went_unanswered(&self) -> bool {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// The connection itself: for datagrams, serving what the peer sends, closing it.
    pub fn connection(&self) -> &Connection {
        &self.authed.conn
    }

    /// The peer's node name, as it introduced itself in the handshake.
    pub fn name(&self) -> &str {
        &self.authed.peer.name
    }

    /// The next request stream in turn, if it is open and sound; else its slot.
    fn open_channel(&self) -> Result<Arc<Channel>, usize> {
        self.pinned(self.next.fetch_add(1, Ordering::Relaxed) as u64)
    }

    /// The request stream that the requests of incoming stream `key` take, if it is open
    /// and sound (else its slot): always the same one, so that they arrive in the order
    /// they came.
    fn pinned(&self, key: StreamKey) -> Result<Arc<Channel>, usize> {
        let slot = (key % self.streams.len() as u64) as usize;
        self.streams.sound(slot).ok_or(slot)
    }

    /// Whether the node at the peer's address reset this connection: a process there has
    /// no state for it, as when the peer was killed and restarted on the same address.
    pub fn was_reset(&self) -> bool {
        self.authed.conn.was_reset()
    }

    /// Sends `request` on this connection and waits for its answer until `deadline`.
    pub async fn call(self: &Arc<Self>, request: &Request, deadline: Instant) -> Result<Reply, RemoteError> {
        // A stream slot left empty (or broken) is filled here first.
        let vacant = self.streams.vacant().map_or_else(|| self.open_channel(), Err);
        let channel = self.opened(vacant, deadline).await?;
        let started = channel.start_within(request, deadline).await;
        self.answer_of(started).await
    }

    /// The stream in `found`, or the one opened into its slot; or why none could be.
    async fn opened(&self, found: Result<Arc<Channel>, usize>, deadline: Instant) -> Result<Arc<Channel>, RemoteError> {
        match found {
            Ok(ch) => Ok(ch),
            // Boxed: rare, and it would otherwise enlarge every forwarded request's future.
            Err(slot) => {
                let reopen = self.streams.reopen(&self.authed.conn, slot);
                Box::pin(tokio::time::timeout_at(deadline, reopen))
                    .await
                    .map_or_else(
                        |_| Err("no stream could be opened before the deadline".into()),
                        |opened| opened.map_err(|e| e.to_string()),
                    )
                    .map_err(|e: String| self.unreachable(&e))
            }
        }
    }

    /// Queues `request` on the stream pinned to incoming stream `key` (see
    /// [`PeerConn::pinned`]) now, if it is open and has room: the future of its answer.
    pub fn send_pinned(
        self: &Arc<Self>,
        key: StreamKey,
        request: &Request,
        deadline: Instant,
    ) -> Option<impl Future<Output = Result<Reply, RemoteError>> + Send + use<>> {
        let channel = self.pinned(key).ok()?;
        match channel.start(request, deadline.saturating_duration_since(Instant::now())) {
            Err(CallError::Full) => None,
            started => Some(self.answer_of(started)),
        }
    }

    /// Queues `request` on the stream pinned to incoming stream `key`, opening it or
    /// waiting for room in it as needed, until `deadline`; then gives back the future of
    /// its answer (or why it could not be queued).
    pub async fn place_pinned(
        self: &Arc<Self>,
        key: StreamKey,
        request: &Request,
        deadline: Instant,
    ) -> Result<impl Future<Output = Result<Reply, RemoteError>> + Send + use<>, RemoteError> {
        let channel = self.opened(self.pinned(key), deadline).await?;
        let started = channel.start_within(request, deadline).await;
        let answer = self.answer_of(started);
        Ok(answer)
    }

    /// The future of the answer to a call `started` on one of this connection's streams:
    /// fails by the call's deadline, and maps the stream's failures to this peer being
    /// unreachable.
    fn answer_of(
        self: &Arc<Self>,
        started: Result<PendingCall, CallError>,
    ) -> impl Future<Output = Result<Reply, RemoteError>> + Send + use<> {
        let peer = Arc::clone(self);
        async move {
            let answer = match started {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            let unanswered = matches!(answer, Err(CallError::Timeout(_) | CallError::Broken(_)));
            // Written only when it changes: every forwarded request passes here.
            if peer.unanswered.load(Ordering::Relaxed) != unanswered {
                peer.unanswered.store(unanswered, Ordering::Relaxed);
            }
            match answer {
                Ok(answer) => answer,
                Err(CallError::Timeout(after)) => Err(peer.unreachable(&format!(
                    "no answer within {:?}; it may be down or overloaded (raise --timeout to wait longer)",
                    // Whole milliseconds, shown as the client shows durations: 190ms, 4.9s.
                    Duration::from_millis(after.as_millis() as u64)
                ))),
                Err(CallError::Broken(why)) => Err(peer.unreachable(&why)),
                Err(CallError::TooLarge(e)) => Err(RemoteError::invalid(e)),
                Err(CallError::Full) => Err(peer.unreachable(
                    "too many requests were waiting to be sent to it; it may be overloaded (raise --timeout to wait longer)",
                )),
            }
        }
    }

    fn unreachable(&self, reason: &str) -> RemoteError {
        let reason = match self.authed.conn.ended_because() {
            Some(why) if self.was_reset() => format!("{reason}: {why}"),
            _ => reason.to_string(),
        };
        RemoteError::Unreachable {
            node: self.name().to_string(),
            addr: self.addr.to_string(),
            reason,
        }
    }
}

/// A peer's connection slot; its lock makes concurrent callers wait for one connection attempt.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<PeerConn>>>>;

/// Peer addresses the pool holds a connection (or an attempt) for at once. Beyond it, the one
/// quiet the longest is closed to make room: a member reached again is simply reconnected.
/// Bounds what a flood of addresses to dial (say, chat address hints) can make the node hold.
pub const MAX_PEERS: usize = 1024;

/// A pooled connection that carried no request, answer or gossip (no stream or datagram
/// frame, either way; keep-alives do not count) for this long is closed and forgotten.
/// Members gossip with each other every second or so, so only connections to addresses
/// outside the membership (a chat hint, a node that went away unnoticed) ever get this quiet.
pub const PEER_IDLE: Duration = Duration::from_secs(120);

/// One address in the pool: its slot, and when traffic on its connection was last seen.
struct Entry {
    slot: Slot,
    /// Stream and datagram frames sent and received on the connection when last looked at.
    activity: u64,
    /// When `activity` last changed (or the connection was last handed out).
    active_at: std::time::Instant,
}

impl Entry {
    fn new(now: std::time::Instant) -> Self {
        Self {
            slot: Slot::default(),
            activity: 0,
            active_at: now,
        }
    }
}

/// The pool: at most one connection per peer address, made on demand or adopted from the
/// peer, shared by every task. At most `max` addresses (a failed attempt leaves none behind);
/// a connection quiet for `idle` is closed.
pub struct PeerPool {
    endpoint: Endpoint,
    /// The node's keyring: a connection made now proves the secret in use now.
    keys: Arc<SharedKeyring>,
    me: NodeName,
    listen: SocketAddr,
    conns: Mutex<HashMap<SocketAddr, Entry>>,
    max: usize,
    idle: Duration,
}

/// Why no connection to a peer could be had.
#[derive(Debug)]
pub enum ConnectFailure {
    Unreachable(String),
    AuthRefused,
}

impl PeerPool {
    pub fn new(endpoint: Endpoint, keys: Arc<SharedKeyring>, me: NodeName, listen: SocketAddr) -> Self {
        Self {
            endpoint,
            keys,
            me,
            listen,
            conns: Mutex::default(),
            max: MAX_PEERS,
            idle: PEER_IDLE,
        }
    }

    /// The same pool with other bounds (tests).
    #[cfg(test)]
    fn bounded(mut self, max: usize, idle: Duration) -> Self {
        (self.max, self.idle) = (max.max(1), idle);
        self
    }

    /// How many peer addresses the pool holds now (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The slot for `addr`, made if needed: then, with the pool full, the entry quiet the
    /// longest (and not being connected right now) is closed and dropped to make room.
    fn slot(&self, addr: SocketAddr) -> Slot {
        let now = std::time::Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = conns.get_mut(&addr) {
            entry.active_at = now;
            return Arc::clone(&entry.slot);
        }
        if conns.len() >= self.max {
            // Dead or empty entries go first; then the one quiet the longest.
            conns.retain(|_, e| {
                e.slot
                    .try_lock()
                    .map_or(true, |c| c.as_ref().is_some_and(|c| c.is_alive()))
            });
            if conns.len() >= self.max {
                let quietest = conns
                    .iter()
                    .filter(|(_, e)| e.slot.try_lock().is_ok())
                    .min_by_key(|(_, e)| e.active_at)
                    .map(|(a, _)| *a);
                if let Some(gone) = quietest.and_then(|a| conns.remove(&a)) {
                    tracing::info!(peer = ?quietest, limit = self.max, "closed the quietest peer connection: the pool is full");
                    close(&gone, b"the peer pool is full");
                }
            }
        }
        Arc::clone(&conns.entry(addr).or_insert_with(|| Entry::new(now)).slot)
    }

    /// Drops `addr`'s entry if it holds no connection and nobody else is using it (a failed
    /// attempt leaves nothing behind).
    fn drop_if_empty(&self, addr: SocketAddr, slot: &Slot) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        // Ours and the pool's are the only references: no caller waits on it.
        if let Some(e) = conns.get(&addr)
            && Arc::ptr_eq(&e.slot, slot)
            && Arc::strong_count(slot) == 2
        {
            conns.remove(&addr);
        }
    }

    /// Closes and forgets every connection that carried nothing for `idle` (as of `now`),
    /// and forgets entries whose connection has ended. Called every few seconds.
    pub fn expire_idle(&self, now: std::time::Instant) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = self.idle;
        conns.retain(|addr, e| {
            // Being connected right now: kept.
            let Ok(slot) = e.slot.try_lock() else { return true };
            let Some(conn) = slot.as_ref().filter(|c| c.is_alive()) else {
                return false;
            };
            let seen = conn.authed.conn.activity();
            if seen != e.activity {
                (e.activity, e.active_at) = (seen, now);
                return true;
            }
            if now.saturating_duration_since(e.active_at) < idle {
                return true;
            }
            tracing::debug!(peer = %addr, name = conn.name(), after = ?idle, "closed an idle peer connection");
            conn.authed.conn.close(transport::close::DONE, b"idle");
            false
        });
    }

    /// The live connection to the node at `addr`, connecting (once, however many ask) if
    /// needed. The flag says whether it is new, so that the caller starts serving it.
    pub async fn connect(&self, addr: SocketAddr, deadline: Instant) -> Result<(Arc<PeerConn>, bool), ConnectFailure> {
        let entry = self.slot(addr);
        let connected = self.connect_into(&entry, addr, deadline).await;
        if connected.is_err() {
            self.drop_if_empty(addr, &entry);
        }
        connected
    }

    async fn connect_into(
        &self,
        slot: &Slot,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(Arc<PeerConn>, bool), ConnectFailure> {
        let mut slot = tokio::time::timeout_at(deadline, slot.lock()).await.map_err(|_| {
            ConnectFailure::Unreachable(
                "no connection to it before the deadline; it may be down (raise --timeout to wait longer)".into(),
            )
        })?;
        if let Some(conn) = slot.as_ref()
            && conn.is_alive()
        {
            return Ok((Arc::clone(conn), false));
        }
        let me = Me {
            role: Role::Node,
            name: self.me.as_str(),
            listen: Some(self.listen.to_string()),
        };
        let secret = self.keys.in_use();
        let connect = self.endpoint.connect(addr, &secret, &me);
        let authed = match tokio::time::timeout_at(deadline, connect).await {
            Err(_) => {
                return Err(ConnectFailure::Unreachable(
                    "no answer to connecting before the deadline; it may be down (raise --timeout to wait longer)"
                        .into(),
                ));
            }
            Ok(Err(ConnectError::AuthRefused { .. })) => return Err(ConnectFailure::AuthRefused),
            Ok(Err(e)) => return Err(ConnectFailure::Unreachable(e.to_string())),
            Ok(Ok(a)) => a,
        };
        let conn = Arc::new(PeerConn::new(authed, addr));
        *slot = Some(Arc::clone(&conn));
        Ok((conn, true))
    }

    /// Registers a connection a peer opened to us, so that requests and gossip to that peer
    /// reuse it rather than open a second one. It replaces one already pooled, which may look
    /// alive and yet be a dead process's (killed and restarted on the same address); a live
    /// peer opens one only when it holds none to us (it thought us dead, or we connected to
    /// each other at once), so the one replaced is unused on its side too. Gives back the
    /// connection replaced, for the caller to close. A slot being connected right now is
    /// left to that attempt.
    pub fn adopt(&self, authed: Authed, addr: SocketAddr) -> Option<Arc<PeerConn>> {
        let conn = Arc::new(PeerConn::new(authed, addr));
        let slot = self.slot(addr);
        let Ok(mut slot) = slot.try_lock() else {
            return None;
        };
        slot.replace(conn).filter(|old| old.is_alive())
    }

    /// The pooled connection to `addr` if one is open right now (never waits, never connects).
    pub fn live(&self, addr: SocketAddr) -> Option<Arc<PeerConn>> {
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .map(|e| Arc::clone(&e.slot))?;
        let slot = slot.try_lock().ok()?;
        slot.as_ref().filter(|c| c.is_alive()).cloned()
    }

    /// Drops the pooled connection to `addr` (its node died or left).
    pub fn forget(&self, addr: SocketAddr) {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner).remove(&addr);
    }
}

/// Closes the connection in `entry`'s slot, if it holds one and nobody is connecting.
fn close(entry: &Entry, why: &'static [u8]) {
    if let Ok(slot) = entry.slot.try_lock()
        && let Some(conn) = slot.as_ref()
    {
        conn.authed.conn.close(transport::close::DONE, why);
    }
}

/// What a hop keeps of the deadline for itself, so that its own error ("owner unreachable")
/// reaches the caller before the caller's deadline fires; never more than half of it, so
/// that the next hop has time too.
pub fn hop_margin(timeout: Duration) -> Duration {
    (timeout / 20)
        .clamp(Duration::from_millis(1), Duration::from_millis(100))
        .min(timeout / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::transport::Identity;
    use crate::transport::{Limits, Timeouts};

    #[test]
    fn a_hop_keeps_a_twentieth_of_the_deadline_within_bounds_never_more_than_half() {
        let ms = Duration::from_millis;
        assert_eq!(hop_margin(ms(5000)), ms(100));
        assert_eq!(hop_margin(ms(40_000)), ms(100));
        assert_eq!(hop_margin(ms(100)), ms(5));
        assert_eq!(hop_margin(ms(10)), ms(1));
        assert_eq!(hop_margin(ms(1)), Duration::from_micros(500));
        assert_eq!(hop_margin(Duration::ZERO), Duration::ZERO);
    }

    /// A node endpoint on 127.0.0.1 that lets each connection have `streams` open at once.
    fn endpoint(dir: &std::path::Path, name: &str, streams: u32) -> Endpoint {
        let limits = Limits {
            max_streams_per_connection: streams,
            ..Limits::default()
        };
        let timeouts = Timeouts::default();
        let name = name.parse().unwrap();
        let identity = Identity::load_or_create(dir, &name).unwrap();
        let secret = Secret::new(b"endpoint keys".to_vec()).unwrap();
        let setup = transport::NodeSetup::new(&identity, &limits, &timeouts, None, &secret, &name).unwrap();
        setup.bind("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// How a test node introduces itself in the handshake.
    fn keys(secret: &Secret) -> Arc<SharedKeyring> {
        Arc::new(SharedKeyring::new(crate::keyring::Keyring::new(secret.clone())))
    }

    fn hello(name: &str) -> Me<'_> {
        Me {
            role: Role::Node,
            name,
            listen: None,
        }
    }

    /// Accepts the next connection on `ep` and runs the handshake as node `name`.
    fn accept_one(ep: Endpoint, secret: &Secret, name: &'static str) -> tokio::task::JoinHandle<Authed> {
        let secret = secret.clone();
        tokio::spawn(async move {
            let incoming = ep.accept().await.unwrap();
            incoming
                .accept(std::slice::from_ref(&secret), &hello(name), Duration::from_secs(5))
                .await
                .unwrap()
        })
    }

    /// A connection the peer opens to us replaces the one pooled for it, which is given back
    /// (to be closed); the pool then hands out the new one.
    #[tokio::test]
    async fn a_connection_the_peer_opens_replaces_the_pooled_one() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"s3cret".to_vec()).unwrap();
        let peer = endpoint(&dir.path().join("peer"), "peer", 16);
        let peer_addr = peer.local_addr().unwrap();
        let me_ep = endpoint(&dir.path().join("me"), "me", 16);
        let listen = me_ep.local_addr().unwrap();
        let peer_side = accept_one(peer.clone(), &secret, "peer");
        let pool = PeerPool::new(me_ep.clone(), keys(&secret), "me".parse().unwrap(), listen);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (first, _) = pool.connect(peer_addr, deadline).await.ok().unwrap();
        let _first_at_peer = peer_side.await.unwrap();

        // The peer (say, restarted on its address) connects to us.
        let my_side = accept_one(me_ep.clone(), &secret, "me");
        let _second_at_peer = peer.connect(listen, &secret, &hello("peer")).await.unwrap();
        let second = my_side.await.unwrap();
        let second_id = second.conn.stable_id();
        let replaced = pool
            .adopt(second, peer_addr)
            .expect("the pooled connection is replaced");
        assert_eq!(replaced.authed.conn.stable_id(), first.authed.conn.stable_id());
        assert_eq!(pool.live(peer_addr).unwrap().authed.conn.stable_id(), second_id);
    }

    /// A peer listening on 127.0.0.1 that accepts `n` connections (handshake done), and
    /// where it is.
    fn peer(dir: &std::path::Path, secret: &Secret, name: &'static str, n: usize) -> SocketAddr {
        let ep = endpoint(&dir.join(name), name, 16);
        let addr = ep.local_addr().unwrap();
        let secret = secret.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..n {
                let incoming = ep.accept().await.unwrap();
                let accepted = incoming
                    .accept(std::slice::from_ref(&secret), &hello(name), Duration::from_secs(5))
                    .await;
                held.push(accepted.unwrap());
            }
            // Held open (and the endpoint with them) until the test ends.
            std::future::pending::<()>().await;
        });
        addr
    }

    fn pool(dir: &std::path::Path, secret: &Secret) -> PeerPool {
        let me = endpoint(&dir.join("me"), "me", 16);
        let listen = me.local_addr().unwrap();
        PeerPool::new(me, keys(secret), "me".parse().unwrap(), listen)
    }

    /// Issue 22 point 3: dialling an address where no node answers used to leave an entry
    /// behind for good.
    #[tokio::test]
    async fn a_failed_dial_leaves_nothing_in_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"s3cret".to_vec()).unwrap();
        let pool = pool(dir.path(), &secret);
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        assert!(pool.connect(silent.local_addr().unwrap(), deadline).await.is_err());
        assert_eq!(pool.len(), 0);
    }

    /// Issue 22 point 3: a connection nothing is sent on is closed and forgotten after the
    /// idle period; one that carries traffic is kept.
    #[tokio::test]
    async fn an_idle_peer_connection_is_closed_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"s3cret".to_vec()).unwrap();
        let (quiet, busy) = (
            peer(dir.path(), &secret, "quiet", 1),
            peer(dir.path(), &secret, "busy", 1),
        );
        let idle = Duration::from_secs(60);
        let pool = pool(dir.path(), &secret).bounded(16, idle);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (quiet_conn, _) = pool.connect(quiet, deadline).await.ok().unwrap();
        let (busy_conn, _) = pool.connect(busy, deadline).await.ok().unwrap();
        let t0 = std::time::Instant::now();
        pool.expire_idle(t0);
        let before = busy_conn.authed.conn.activity();
        assert!(
            busy_conn
                .authed
                .conn
                .send_datagram(bytes::Bytes::from_static(b"gossip"))
        );
        let wait = Instant::now() + Duration::from_secs(5);
        while busy_conn.authed.conn.activity() == before {
            assert!(Instant::now() < wait, "the datagram was never sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pool.expire_idle(t0 + idle / 2);
        assert_eq!(pool.len(), 2, "neither is idle yet");
        pool.expire_idle(t0 + idle + Duration::from_secs(1));
        assert_eq!(pool.len(), 1);
        assert!(!quiet_conn.is_alive(), "the idle one is closed");
        assert!(pool.live(quiet).is_none());
        assert!(
            busy_conn.is_alive() && pool.live(busy).is_some(),
            "the busy one is kept"
        );
    }

    /// Issue 22 point 3: the pool holds at most its bound; a new address makes the one quiet
    /// the longest give way.
    #[tokio::test]
    async fn the_pool_is_bounded_and_the_quietest_gives_way() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"s3cret".to_vec()).unwrap();
        let peers: Vec<_> = ["p1", "p2", "p3"].map(|name| peer(dir.path(), &secret, name, 1)).into();
        let pool = pool(dir.path(), &secret).bounded(2, Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut conns = Vec::new();
        for &p in &peers {
            conns.push(pool.connect(p, deadline).await.ok().unwrap().0);
            tokio::time::sleep(Duration::from_millis(2)).await; // distinct last-use times
        }
        assert_eq!(pool.len(), 2);
        assert!(!conns[0].is_alive(), "the first, quiet the longest, was closed");
        assert!(conns[1].is_alive() && conns[2].is_alive());
        assert!(pool.live(peers[0]).is_none() && pool.live(peers[2]).is_some());
    }

    /// A peer that allows one request stream at a time and never answers: the first call's
    /// stream stays open, so the second must wait for stream credit that never comes. The
    /// call still ends by its deadline, naming the peer, and so does every call after it.
    #[tokio::test]
    async fn a_call_that_cannot_open_a_stream_fails_by_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"s3cret".to_vec()).unwrap();
        let peer = endpoint(&dir.path().join("peer"), "peer", 1);
        let peer_addr = peer.local_addr().unwrap();
        let accepted = accept_one(peer, &secret, "peer");
        let served = tokio::spawn(async move {
            let authed = accepted.await.unwrap();
            let mut held = Vec::new(); // open, unanswered
            while let Ok(stream) = authed.conn.accept_stream().await {
                held.push(stream);
            }
        });
        let me = endpoint(&dir.path().join("me"), "me", 16);
        let listen = me.local_addr().unwrap();
        let pool = PeerPool::new(me, keys(&secret), "me".parse().unwrap(), listen);
        let deadline = || Instant::now() + Duration::from_millis(300);
        let (conn, _) = pool.connect(peer_addr, deadline()).await.ok().unwrap();

        for attempt in 0..3 {
            let started = Instant::now();
            let call = conn.call(&Request::Ping, deadline());
            let answer = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .unwrap_or_else(|_| panic!("call {attempt} outlived its deadline by seconds"));
            let Err(RemoteError::Unreachable { node, addr, .. }) = answer else {
                panic!("call {attempt}: expected the peer to be unreachable, got {answer:?}");
            };
            assert_eq!((node.as_str(), addr), ("peer", peer_addr.to_string()));
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "call {attempt} took {:?}",
                started.elapsed()
            );
        }
        served.abort();
    }
}
