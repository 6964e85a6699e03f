//! The gossip driver: the thin loop around the sans-IO core (`crate::gossip`). It feeds the
//! core with messages from peer connections and with the clock, and carries out what the core
//! asks: datagrams and streams to send, events to log and act on. Nothing else lives here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_bytes::ByteBuf;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::saved_cluster;
use super::{ConnectFailure, Node};
use crate::gossip::State;
use crate::names::{NodeName, NodeRef};
use crate::routing::RoutingTable;

/// The gossip core and its types as the node runs them: spreading the routing table.
pub(crate) type Gossip = crate::gossip::Gossip<RoutingTable>;
pub(crate) type Message = crate::gossip::Message<RoutingTable>;
type Event = crate::gossip::Event<RoutingTable>;
type Transmit = crate::gossip::Transmit<RoutingTable>;
use crate::wire::{MemberInfo, Request};

/// A documented limit: how many gossip inputs (messages from members, commands) may wait
/// for the driver. Beyond it a message is dropped, counted and logged (gossip tolerates
/// loss, and a flood must not grow memory), and one that came on a stream is answered
/// `Overloaded`, so that its sender knows (a joiner retries after its backoff at once,
/// rather than waiting out its join timeout).
pub const GOSSIP_INBOX: usize = 4096;

/// A join entry not found yet (a name whose node has not published itself, a host that does
/// not resolve) is looked up again after this long, then twice as long each time, up to
/// `join_retry_max`.
const FIRST_LOOKUP_RETRY: Duration = Duration::from_millis(50);
/// Join entries still not found once the lookups are this far apart (about 1.5 s after the
/// start) are warned about.
const WARN_UNRESOLVED_AFTER: Duration = Duration::from_millis(800);

/// Drops are logged at most this often (a flood must not flood the log too).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// A message the driver had no room for.
#[derive(Debug, thiserror::Error)]
#[error(
    "its gossip inbox is full ({GOSSIP_INBOX} messages waiting: the node is flooded or its gossip is stalled); \
     the message was dropped, retry later"
)]
pub(crate) struct Dropped;
/// Connections being made for gossip at once; beyond it a transmit is dropped.
const MAX_CONNECTING: usize = 64;

/// What the rest of the node tells the driver.
pub(crate) enum Input {
    Message {
        from: SocketAddr,
        msg: Message,
    },
    SetTable(RoutingTable),
    /// The join request sent with `token` could not be sent, for `reason`.
    JoinUnanswerable {
        token: u32,
        reason: String,
    },
    /// Gossip `left`; the sender is answered once enough members have it.
    Leave(oneshot::Sender<()>),
}

/// One member as last seen by the driver.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub name: NodeName,
    pub addr: SocketAddr,
    pub state: State,
    pub incarnation: u64,
    pub last_change: Instant,
    /// When this node last heard from it directly; `None`: only through others so far.
    pub last_seen: Option<Instant>,
}

/// The node's side of gossip: the inbox and the latest membership.
pub(crate) struct GossipHandle {
    tx: mpsc::Sender<Input>,
    /// Taken by the running driver; a restarted driver takes it over.
    rx: Mutex<mpsc::Receiver<Input>>,
    members: RwLock<Arc<Vec<Member>>>,
    connecting: std::sync::atomic::AtomicUsize,
    /// This node has joined its cluster (or had none to join); until then, a node told to
    /// join with no table of its own takes no bucket requests.
    joined: std::sync::atomic::AtomicBool,
    /// The name each `join` entry gave for its address (`bar`, `bar@HOST:PORT`): a seed
    /// answering under another name is not joined through.
    join_names: std::sync::Mutex<HashMap<SocketAddr, NodeName>>,
    /// A durable node's record of where it is and whom it knows (`None` in memory).
    saved: Option<saved_cluster::Saver>,
    /// Inputs dropped because the inbox was full, since the node started.
    dropped: std::sync::atomic::AtomicU64,
    /// When a drop was last logged.
    drop_logged: std::sync::Mutex<Option<Instant>>,
}

impl GossipHandle {
    /// The handle of node `name` at `addr`, which lists itself as a member from the start:
    /// `kvnode members` answered as soon as the node does must not show an empty cluster
    /// (the driver publishes its own view at its first change, or a second later).
    pub fn new(name: NodeName, addr: SocketAddr) -> Self {
        let (tx, rx) = mpsc::channel(GOSSIP_INBOX);
        let me = Member {
            name,
            addr,
            state: State::Alive,
            incarnation: 0,
            last_change: Instant::now(),
            last_seen: Some(Instant::now()),
        };
        Self {
            tx,
            rx: Mutex::new(rx),
            members: RwLock::new(Arc::new(vec![me])),
            connecting: Default::default(),
            joined: Default::default(),
            join_names: Default::default(),
            saved: None,
            dropped: Default::default(),
            drop_logged: Default::default(),
        }
    }

    /// Keeps this node's address and the members it knows with `saver` (a durable node).
    pub fn saving_to(mut self, saver: saved_cluster::Saver) -> Self {
        self.saved = Some(saver);
        self
    }

    /// Whether this node has joined its cluster, or had none to join.
    pub fn joined(&self) -> bool {
        self.joined.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_joined(&self) {
        self.joined.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Hands input to the driver without waiting; a full inbox drops it, counts and logs
    /// the drop (at most every [`DROP_LOG_EVERY`]) and says so.
    pub fn offer(&self, input: Input) -> Result<(), Dropped> {
        use std::sync::atomic::Ordering;
        match self.tx.try_send(input) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let mut logged = self.drop_logged.lock().unwrap_or_else(PoisonError::into_inner);
                if logged.is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY) {
                    *logged = Some(Instant::now());
                    tracing::warn!(
                        dropped_since_start = total,
                        "gossip inbox full ({GOSSIP_INBOX} messages waiting): dropping gossip messages; this node is flooded or its gossip is stalled"
                    );
                }
                Err(Dropped)
            }
            // The handle holds the receiver too: the channel never closes while it lives.
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Dropped),
        }
    }

    /// Inputs dropped because the inbox was full, since the node started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands input to the driver, waiting for room (commands that must not be lost).
    pub async fn send(&self, input: Input) {
        let _ = self.tx.send(input).await;
    }

    pub fn members(&self) -> Arc<Vec<Member>> {
        Arc::clone(&self.members.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn member(&self, name: &NodeName) -> Option<Member> {
        self.members().iter().find(|m| m.name == *name).cloned()
    }

    /// `kvnode members`: every member with the time since its last change, and since this
    /// node last heard from it.
    pub fn member_infos(&self) -> Vec<MemberInfo> {
        let now = Instant::now();
        self.members()
            .iter()
            .map(|m| MemberInfo {
                name: m.name.clone(),
                addr: m.addr.to_string(),
                state: m.state,
                incarnation: m.incarnation,
                last_change_ms: now.saturating_duration_since(m.last_change).as_millis() as u64,
                last_seen_ms: m.last_seen.map(|t| now.saturating_duration_since(t).as_millis() as u64),
            })
            .collect()
    }
}

/// Why a join request cannot go to the seed at `to` over `linked`, if it cannot: said now,
/// not left to time out as "no answer". `expected`: the name its join entry gave.
fn join_unsendable(
    linked: &Result<Arc<super::PeerConn>, ConnectFailure>,
    expected: Option<&NodeName>,
    to: SocketAddr,
) -> Option<String> {
    match linked {
        Err(ConnectFailure::AuthRefused) => Some(format!(
            "{to} refused this node's secret: the secrets differ — give this node the cluster's secret (KVNODE_SECRET or --secret-file); if its data directory holds a keyring (from `kvnode secret`), that is used instead, and one left outdated by a change made while this node was down must be deleted first (see `kvnode secret --help`)"
        )),
        Err(ConnectFailure::Unreachable(why)) => Some(format!("{to} is unreachable: {why}")),
        // As a client given NAME@HOST:PORT refuses another node there.
        Ok(conn) => expected.filter(|name| conn.name() != name.as_str()).map(|name| {
            format!(
                "the node at {to} is named {}, not {name}; correct the join entry",
                conn.name()
            )
        }),
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A seed from the clock and the OS: each start of a node probes in its own order.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}

/// This start's generation: wall-clock milliseconds, so a restart supersedes the old process.
fn generation() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Runs the gossip driver until `stop`. A restart (after a crash) starts a fresh core with
    /// a new generation and rejoins through the configured seeds and every member it knew.
    pub(crate) async fn run_gossip(self: Arc<Self>, stop: CancellationToken) -> Result<(), String> {
        let mut rx = self.gossip.rx.lock().await;
        let now = Instant::now();
        let mut core = Gossip::new(
            self.name.clone(),
            self.listen,
            generation(),
            (*self.table()).clone(),
            self.config.gossip.clone(),
            random_seed(),
            now,
        );
        let (seeds, only_self, unresolved) = self.seeds(false).await;
        if self.config.join.is_empty() || (only_self && seeds.is_empty()) {
            // Nothing to join (or told to join only itself): it starts the cluster.
            self.gossip.set_joined();
            if let Some(table) = self.restore_held(|_| false) {
                core.set_table(now, table);
            }
            self.joined();
        }
        for seed in seeds {
            core.join(now, seed);
        }
        // Join entries not found yet are looked up again, until the node has joined: soon at
        // first (a cluster started all at once names nodes a moment before they publish
        // themselves), then less often, up to `join_retry_max` (issue 28).
        let mut lookup_backoff = FIRST_LOOKUP_RETRY;
        let mut look_again = unresolved.then(|| tokio::time::Instant::now() + lookup_backoff);
        let mut leaving: Option<oneshot::Sender<()>> = None;
        let mut snapshot_at = now;
        // When each member was last heard from directly (a message it sent: a probe, an
        // ack, gossip), for `members`' "last seen"; kept here, not in the sans-IO core.
        let mut seen: HashMap<NodeName, Instant> = HashMap::new();
        loop {
            let changed = self.carry_out(&mut core, &mut leaving);
            if changed || snapshot_at.elapsed() > Duration::from_secs(1) {
                self.publish_members(&core, &mut seen);
                self.save_members(&core);
                snapshot_at = Instant::now();
            }
            let wake = core.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                input = rx.recv() => match input {
                    Some(Input::Message { from, msg }) => {
                        let now = Instant::now();
                        let name = &msg.sender().id.name;
                        // Cloned only for a name not seen before: this is every message.
                        if let Some(at) = seen.get_mut(name) {
                            *at = now;
                        } else {
                            seen.insert(name.clone(), now);
                        }
                        core.handle_message(now, from, msg)
                    }
                    Some(Input::SetTable(table)) => core.set_table(Instant::now(), table),
                    Some(Input::JoinUnanswerable { token, reason }) => core.join_unanswerable(Instant::now(), token, reason),
                    Some(Input::Leave(done)) => {
                        core.leave(Instant::now());
                        leaving = Some(done);
                    }
                    None => return Ok(()),
                },
                () = sleep_until_some(wake) => core.handle_timeout(Instant::now()),
                () = sleep_until_some(look_again) => {
                    look_again = None;
                    if !self.gossip.joined() {
                        // Said at debug level while the lookups are still quick: a cluster
                        // started all at once finds its members within them.
                        let warn = lookup_backoff >= WARN_UNRESOLVED_AFTER;
                        let (seeds, _, unresolved) = self.seeds(warn).await;
                        for seed in seeds {
                            core.join(Instant::now(), seed);
                        }
                        lookup_backoff = (lookup_backoff * 2).min(self.config.gossip.join_retry_max);
                        look_again = unresolved.then(|| tokio::time::Instant::now() + lookup_backoff);
                    }
                }
                () = stop.cancelled() => {
                    if self.gossip.dropped() > 0 {
                        tracing::info!(dropped = self.gossip.dropped(), "gossip messages dropped with the inbox full since the node started");
                    }
                    return Ok(());
                }
                never = self.crash_point("gossip") => match never {},
            }
        }
    }

    /// Where to join: the configured `join` list, and (after a restart) every member known;
    /// whether the list named this node alone (it then starts the cluster); and whether some
    /// entry could not be found yet (a name whose node is not up, a host that does not
    /// resolve: looked up again until the node has joined).
    ///
    /// An entry not found is logged as a warning when `warn`, else at debug level.
    async fn seeds(&self, warn: bool) -> (Vec<SocketAddr>, bool, bool) {
        let mut seeds: Vec<SocketAddr> = Vec::new();
        let mut only_self = !self.config.join.is_empty();
        let mut unresolved = false;
        for r in &self.config.join {
            match self.resolve_join(r).await {
                Ok(addr) if addr != self.listen => {
                    if let NodeRef::Name(name) | NodeRef::NameAt(name, _) = r {
                        let mut names = self.gossip.join_names.lock().unwrap_or_else(PoisonError::into_inner);
                        names.insert(addr, name.clone());
                    }
                    seeds.push(addr);
                    only_self = false;
                }
                Ok(_) => {}
                Err(why) => {
                    only_self = false;
                    unresolved = true;
                    if warn {
                        tracing::warn!(join = %r, "cannot find this node to join: {why}; looking again");
                    } else {
                        tracing::debug!(join = %r, "cannot find this node to join yet: {why}; looking again");
                    }
                }
            }
        }
        for m in self.gossip.members().iter() {
            if m.name != self.name && matches!(m.state, State::Alive | State::Suspect) {
                seeds.push(m.addr);
            }
        }
        // The members a durable node knew when it last ran (issue 22, point 10): the node
        // that started the cluster has no other way back into it. A seed that is gone only
        // costs a join attempt retried in the background; the node serves meanwhile.
        let saved = self.gossip.saved.as_ref().map_or(&[][..], |s| s.rejoin());
        for (name, addr) in saved {
            if *name != self.name && *addr != self.listen {
                seeds.push(*addr);
            }
        }
        seeds.sort();
        seeds.dedup();
        (seeds, only_self, unresolved)
    }

    async fn resolve_join(&self, r: &NodeRef) -> Result<SocketAddr, String> {
        match r {
            NodeRef::Addr(hp) | NodeRef::NameAt(_, hp) => hp
                .resolve()
                .await
                .map_err(|e| format!("{hp} does not resolve ({e}); check the host name")),
            NodeRef::Name(name) => self.locate(name).await.map_err(|_| {
                format!("no node named {name} here (KVNODE_HOME/nodes, [peers]); give NAME@HOST:PORT or HOST:PORT")
            }),
        }
    }

    /// Drains the core: sends what it wants sent, acts on its events. Says whether anything
    /// about the membership changed.
    fn carry_out(self: &Arc<Self>, core: &mut Gossip, leaving: &mut Option<oneshot::Sender<()>>) -> bool {
        while let Some(t) = core.poll_transmit() {
            self.transmit(t);
        }
        let mut changed = false;
        while let Some(event) = core.poll_event() {
            changed = true;
            match event {
                Event::MemberUp { name, addr } => {
                    tracing::info!(member = %name, %addr, "member up");
                    self.forget_hop(&name, Some(addr));
                }
                Event::MemberSuspect { name, addr } => {
                    crate::metrics::transition(crate::metrics::Transition::Suspect);
                    tracing::info!(member = %name, %addr, "member suspect");
                }
                Event::MemberDead { name, addr } => {
                    crate::metrics::transition(crate::metrics::Transition::Dead);
                    tracing::warn!(member = %name, %addr, "member dead");
                    self.peers.forget(addr);
                    self.forget_hop(&name, None);
                }
                Event::MemberLeft { name, addr } => {
                    tracing::info!(member = %name, %addr, "member left");
                    self.peers.forget(addr);
                    self.forget_hop(&name, None);
                }
                Event::TableChanged(table) => {
                    self.offer_table(table);
                }
                Event::Refuted { said, incarnation } => {
                    // Its own side of the others' "member suspect" / "member dead".
                    tracing::warn!(
                        incarnation,
                        "the cluster {} this node (it was slow to answer, paused or cut off); told it that it is alive",
                        match said {
                            State::Suspect => "suspected",
                            State::Dead => "declared dead",
                            State::Left => "took as having left",
                            State::Alive => "held an older life of",
                        }
                    );
                }
                Event::Joined { seed, members } => {
                    self.gossip.set_joined();
                    tracing::info!(%seed, members, "joined the cluster");
                    if let Some(table) = self.restore_held(|n| core.member(n.as_str()).is_some()) {
                        core.set_table(Instant::now(), table);
                    }
                    self.joined();
                }
                Event::JoinFailed { seed, reason } => {
                    match self.gossip.saved.as_ref().filter(|s| s.rejoins_through(seed)) {
                        // A member known before the restart may be gone for good: said once, not
                        // every retry for as long as the node runs.
                        Some(saved) if !saved.first_failure(seed) => {
                            tracing::debug!(%seed, %reason, "could not rejoin through this member yet; retrying");
                        }
                        Some(_) => tracing::info!(
                            %seed, %reason,
                            "could not rejoin through this member it knew before it stopped; retrying in the background (further failures are logged at debug level)"
                        ),
                        None => tracing::warn!(%seed, %reason, "could not join through this member yet; retrying"),
                    }
                }
                Event::JoinRefused { seed, reason } => {
                    tracing::error!(%seed, %reason, "the cluster refused this node");
                    self.fail(format!("the cluster refused this node (asked {seed}): {reason}"));
                }
                Event::RefusedJoin { name, addr, reason } => {
                    tracing::warn!(joiner = %name, %addr, %reason, "refused a node joining the cluster");
                }
                Event::LeaveAcknowledged => {
                    if let Some(done) = leaving.take() {
                        let _ = done.send(());
                    }
                }
                Event::NameConflict {
                    name,
                    other,
                    newer: true,
                } => {
                    // Cut off (paused, partitioned) for longer than the cluster waited, this
                    // process was declared dead and replaced: serving on would split the
                    // buckets it owns between two processes.
                    tracing::error!(%name, %other, "a newer process has this node's name in the cluster; stopping");
                    self.fail(format!(
                        "a process started later at {other} has the name {name} in the cluster (this one was \
                         declared dead meanwhile); stopping so that its buckets have one owner"
                    ));
                }
                Event::NameConflict {
                    name,
                    other,
                    newer: false,
                } => {
                    tracing::error!(%name, %other, "an older process still claims this node's name; it stops when it hears of this one");
                }
            }
        }
        changed
    }

    /// Saves where this durable node is and the members it knows, when that changed.
    fn save_members(&self, core: &Gossip) {
        if let Some(saver) = &self.gossip.saved {
            saver.save(&self.name, core.members().map(|m| (m.name, m.addr, m.state)));
        }
    }

    fn publish_members(&self, core: &Gossip, seen: &mut HashMap<NodeName, Instant>) {
        let now = Instant::now();
        let members: Vec<Member> = core
            .members()
            .map(|m| Member {
                name: m.name.clone(),
                addr: m.addr,
                state: m.state,
                incarnation: m.incarnation,
                last_change: m.last_change,
                last_seen: if *m.name == self.name {
                    Some(now)
                } else {
                    seen.get(m.name).copied()
                },
            })
            .collect();
        // Only members' names are kept: forgotten ones go.
        if seen.len() > members.len() {
            seen.retain(|name, _| members.iter().any(|m| m.name == *name));
        }
        *self.gossip.members.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(members);
    }

    /// Sends one message the core asked for: a datagram on the pooled connection when one is
    /// open and the message fits, else (in its own task) a stream, connecting first if needed.
    fn transmit(self: &Arc<Self>, t: Transmit) {
        let bytes = t.msg.encode();
        crate::metrics::gossip_sent(bytes.len());
        let live = self.peers.live(t.to);
        if !t.reliable
            && let Some(conn) = &live
            && conn.connection().datagram_fits(bytes.len())
        {
            let len = bytes.len();
            let sent = conn.connection().send_datagram(bytes.into());
            tracing::trace!(to = %t.to, len, ok = sent, "gossip datagram");
            return;
        }
        use std::sync::atomic::Ordering;
        // Only sends that must connect first count against the bound: a stream on an open
        // connection (a new table sent to every member at once) costs no handshake.
        let connects = live.is_none();
        if connects && self.gossip.connecting.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTING {
            self.gossip.connecting.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let node = Arc::clone(self);
        let deadline = tokio::time::Instant::now() + self.config.timeouts.request;
        // A join request's token: a connect failure is reported for that request alone (a
        // failure that comes after the attempt timed out, and the core sent another, is
        // then ignored; one that comes at once, a refused secret, is said at once).
        let joining = match &t.msg {
            Message::PushPull(pp) if !pp.is_reply => pp.join,
            _ => None,
        };
        let expected = joining.and_then(|_| {
            let names = self.gossip.join_names.lock().unwrap_or_else(PoisonError::into_inner);
            names.get(&t.to).cloned()
        });
        self.tasks.spawn(async move {
            let send = async {
                let linked = node.link(t.to, deadline).await;
                if let Some(token) = joining
                    && let Some(reason) = join_unsendable(&linked, expected.as_ref(), t.to)
                {
                    // Dropped only when the inbox is full: the attempt then times out instead.
                    let _ = node.gossip.offer(Input::JoinUnanswerable { token, reason });
                    return;
                }
                if let Ok(conn) = linked {
                    let fits = conn.connection().datagram_fits(bytes.len());
                    if !t.reliable && fits {
                        let _ = conn.connection().send_datagram(bytes.into());
                    } else {
                        let request = Request::Gossip {
                            message: ByteBuf::from(bytes),
                        };
                        if let Err(e) = conn.call(&request, deadline).await {
                            tracing::debug!(to = %t.to, error = %e, "gossip stream failed");
                            // The seed did not take our join (its inbox was full, say): retried
                            // after the backoff, not only once the join timeout has passed.
                            if let Some(token) = joining {
                                let reason = format!("{} did not take the join request: {e}", t.to);
                                let _ = node.gossip.offer(Input::JoinUnanswerable { token, reason });
                            }
                        }
                    }
                }
            };
            // A stopping node has already said it is leaving (and waited for that to be
            // heard); a send still connecting to an unreachable member must not hold up its
            // stop until the send's deadline, nor new joins go on being tried.
            tokio::select! {
                () = send => {}
                () = node.serve.stopping.cancelled() => {}
            }
            if connects {
                node.gossip.connecting.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{Ident, Sender};

    #[test]
    fn a_message_that_finds_the_inbox_full_is_refused_counted_and_said() {
        let name = NodeName::new("n1").unwrap();
        let addr: SocketAddr = "127.0.0.1:40411".parse().unwrap();
        let handle = GossipHandle::new(name.clone(), addr);
        let peer: SocketAddr = "127.0.0.1:40412".parse().unwrap();
        let msg = Message::Gossip {
            from: Sender {
                id: Ident::new(NodeName::new("n2").unwrap(), peer, 1),
                incarnation: 0,
            },
            piggyback: Vec::new(),
        };
        let offer = || {
            handle.offer(Input::Message {
                from: peer,
                msg: msg.clone(),
            })
        };
        // Nobody drains it here: the driver is not running.
        for _ in 0..GOSSIP_INBOX {
            assert!(offer().is_ok());
        }
        assert_eq!(handle.dropped(), 0);
        let dropped = offer().unwrap_err();
        assert_eq!(handle.dropped(), 1);
        let said = dropped.to_string();
        assert!(
            said.contains("inbox is full") && said.contains(&GOSSIP_INBOX.to_string()),
            "{said}"
        );
        assert!(offer().is_err());
        assert_eq!(handle.dropped(), 2);
    }
}
