//! What a node does with each request. A bucket request is routed in one place,
//! `Node::bucket_now`, into "apply it here" (by [`super::ops`], one function per operation)
//! or "send it on to its owner"; the other requests (tables, members, chat, gossip) are
//! answered by [`Handler::handle`].

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::ops::{self, Applied};
use super::{Node, PeerConn, hop_margin};
use crate::metrics::RequestTimer;
use crate::names::NodeName;
use crate::routing::RoutingTable;
use crate::rpc::{Handler, Now, StreamKey};
use crate::wire::{
    BucketOp, BucketRequest, ChatLine, ChatMessage, MAX_CHAT, MAX_HOPS, MemberInfo, RemoteError, Reply, Request,
};

type Answer = Result<Reply, RemoteError>;

impl Handler for Node {
    async fn handle(self: Arc<Self>, request: Request, deadline: Instant) -> Answer {
        // Keep a little of the deadline back so our own error reaches the caller in time.
        let deadline = deadline - hop_margin(deadline.saturating_duration_since(Instant::now()));
        match request {
            // Routed and answered by `answer_now` (`Node::bucket_now`), which never gives one back.
            Request::Bucket(_) => Err(RemoteError::Internal {
                node: self.name.to_string(),
                reason: "a bucket request reached the node unrouted".into(),
            }),
            Request::Table => Ok(Reply::Table((*self.table()).clone())),
            Request::SetTable { entries } => self.set_table(entries, None, false, false, false, deadline).await,
            Request::SetTableIf {
                entries,
                expected,
                forwarded,
                force,
                call_off,
            } => {
                self.set_table(entries, Some(expected), forwarded, force, call_off, deadline)
                    .await
            }
            Request::FinishMove {
                entry,
                ended,
                under,
                forwarded,
            } => self.finish_move(entry, ended, under, forwarded, deadline).await,
            Request::Leave => {
                // Answered first: the node drains the requests in flight, this one included,
                // before it stops.
                self.leave.cancel();
                Ok(Reply::Done)
            }
            Request::Members => Ok(Reply::Members(self.members())),
            Request::Stats => Ok(Reply::Stats(Box::new(self.stats().await))),
            Request::Moves => Ok(Reply::Moves(self.move_log.report())),
            Request::RangeSize { first, last } => {
                let range = kvnode_replica::RangeId { first, last };
                match self.store.range_size(range).await {
                    Ok((keys, bytes)) => Ok(Reply::RangeSize { keys, bytes }),
                    Err(e) => Err(RemoteError::Internal {
                        node: self.name.to_string(),
                        reason: format!("range {range} could not be read: {e}"),
                    }),
                }
            }
            Request::Keyring { op, fan_out } => Box::pin(self.keyring_request(op, fan_out, deadline)).await,
            Request::Ping => Ok(Reply::Pong {
                name: self.name.clone(),
            }),
            Request::Chat(msg) => Box::pin(self.chat(msg, deadline)).await,
            Request::Gossip { message } => {
                crate::metrics::gossip_received(message.len());
                let msg = crate::gossip::Message::decode(&message).map_err(RemoteError::invalid)?;
                // The sender is where the message says it is from; the core checks the rest.
                let from = msg.sender().id.addr;
                // Dropped when the inbox is full: the sender is told (issue 22, point 4).
                match self.gossip.offer(super::gossip::Input::Message { from, msg }) {
                    Ok(()) => Ok(Reply::Done),
                    Err(dropped) => Err(RemoteError::Overloaded {
                        node: self.name.to_string(),
                        reason: dropped.to_string(),
                    }),
                }
            }
            #[cfg(feature = "fault-injection")]
            Request::Panic => panic!("fault injection: a request that panics"),
            #[cfg(feature = "fault-injection")]
            Request::CrashPart { part } => {
                self.crash_switch(&part).notify_one();
                Ok(Reply::Done)
            }
        }
    }

    fn answer_now(self: &Arc<Self>, request: Request, timeout: Duration, stream: StreamKey) -> Now {
        match request {
            Request::Bucket(req) => self.bucket_now(req, timeout, stream),
            Request::Ping => Now::Answer(Ok(Reply::Pong {
                name: self.name.clone(),
            })),
            other => Now::Later(other),
        }
    }

    fn node_name(&self) -> &str {
        self.name.as_str()
    }
}

impl Node {
    /// Where a bucket request goes by this node's table; or why nowhere (a bad request, a
    /// loop, too many hops, no entry). The request is left as it came: this node joins its
    /// path when it passes the request on, or answers a route query.
    fn route(&self, req: &BucketRequest) -> Result<Dest, RemoteError> {
        req.validate().map_err(RemoteError::invalid)?;
        let path = || req.path.iter().chain([&self.name]).map(|n| n.to_string()).collect();
        if req.path.contains(&self.name) {
            return Err(RemoteError::RoutingLoop { path: path() });
        }
        if req.path.len() > MAX_HOPS {
            return Err(RemoteError::HopLimit { path: path() });
        }
        let table = self.table();
        if table.setter().is_empty() && !self.gossip.joined() {
            // A node started to join a cluster, with no table of its own, that has not heard
            // the cluster's yet: a write taken now could belong to any member (SPEC §5 gives
            // everything to a node only when it has no cluster to join).
            return Err(RemoteError::NoRoute {
                message: format!(
                    "node {} has not joined its cluster yet, so it has no routing table; retry once it has (see `kvnode members --via {}`), or start it with --table",
                    self.name, self.name
                ),
            });
        }
        match table.entry_of(&req.bucket) {
            None => Err(RemoteError::NoRoute {
                message: table.no_entry_message(&req.bucket),
            }),
            // A replicated range, or one on the move (its group carries it meanwhile).
            Some(entry) if let Some(nodes) = table.group_of(entry) => Ok(Dest::Replicated(
                kvnode_replica::RangeId {
                    first: entry.first,
                    last: entry.last,
                },
                nodes,
                entry.replicas().len(),
            )),
            Some(entry) if *entry.preferred_leader() == self.name => Ok(Dest::Here),
            Some(entry) => Ok(Dest::There(entry.preferred_leader().clone())),
        }
    }

    /// [`Handler::answer_now`] for a bucket request: [`Node::bucket_routed`], counted and
    /// timed to its answer for the metrics.
    pub(super) fn bucket_now(self: &Arc<Self>, req: BucketRequest, timeout: Duration, stream: StreamKey) -> Now {
        let mut timer = RequestTimer::start(&req.op, req.path.len());
        let watch = matches!(req.op, BucketOp::Watch { .. });
        let now = self.bucket_routed(req, timeout, stream, &mut timer);
        timed(if watch { self.until_stopping(now) } else { now }, timer)
    }

    /// The one place a bucket request is routed: into "apply it here" or "send it on to its
    /// owner" (saying so to `timer`).
    ///
    /// Applied here, it is answered at once when that needs no waiting (anything on the
    /// in-memory store); else the future of its answer ends by the deadline (a write waiting
    /// for the durable store's sync, a durable read or a listing of keys, each off the event
    /// loop). Sent on, it is queued at once when the next stream to its owner is open (its
    /// future ends by the deadline: the stream fails the call then); else it must connect or
    /// open a stream first ([`Now::First`]). A route query sent on is answered from the table
    /// when the owner cannot be reached.
    ///
    /// The requests of one incoming `stream` all go to the owner on one stream, in the order
    /// they came (issue 22): when one cannot be queued at once (no connection or stream yet,
    /// or the outbox toward the owner is full), the incoming stream waits until it is.
    fn bucket_routed(
        self: &Arc<Self>,
        mut req: BucketRequest,
        timeout: Duration,
        stream: StreamKey,
        timer: &mut RequestTimer,
    ) -> Now {
        // Keep back a little of the deadline for our own error, so it reaches the caller in
        // time. (Read from the clock only by what waits: most answers are given at once.)
        let deadline = || Instant::now() + timeout - hop_margin(timeout);
        match self.route(&req) {
            Err(e) => Now::Answer(Err(e)),
            Ok(Dest::Here) if matches!(req.op, BucketOp::Route) => Now::Answer(self.route_here(req)),
            // Where a watch is served: at the bucket's owner, from its change feed; sent on
            // to it like any bucket request. (A replicated range's: at its leader, below.)
            Ok(Dest::Here) if matches!(req.op, BucketOp::Watch { .. }) => {
                self.watch_here(req, timeout, super::watch::Source::Node)
            }
            // A replicated range (issue 25): to its leader, by `Node::replicated`; a read at
            // the leader under its lease is answered here, as on one node, once the lease is
            // seen to have held past the read (`super::lease`).
            Ok(Dest::Replicated(range, nodes, holders)) => {
                if matches!(req.op, BucketOp::Get { .. } | BucketOp::Keys { .. }) && self.replicas.leased(range) {
                    match ops::apply(req.clone(), &self.store, &self.name) {
                        Applied::Now(answer) if self.replicas.leased(range) => return Now::Answer(answer),
                        // The lease ran out meanwhile: the way every request goes.
                        Applied::Now(_) => {}
                        Applied::Later(answer) => {
                            let (node, deadline) = (Arc::clone(self), deadline());
                            let answer = async move {
                                let answer = answer.await;
                                if node.replicas.leased(range) {
                                    return answer;
                                }
                                node.replicated(req, range, nodes, holders, deadline).await
                            };
                            return Now::Waiting(Box::pin(self.within(deadline, answer)));
                        }
                    }
                }
                let (node, deadline) = (Arc::clone(self), deadline());
                let answer = node.replicated(req, range, nodes, holders, deadline);
                Now::Waiting(Box::pin(self.within(deadline, answer)))
            }
            // A group of this node's still covers the bucket (it ended here: a move onto this
            // node, or a split or merge gathered here, and it is applying the last of its log,
            // or running again after a restart to apply what it had not): the request waits
            // for it to end, so that no write taken now is overwritten by an older one the
            // group applies after it.
            // The stream is not read on meanwhile (`Now::First`): its later requests take
            // effect after this one, as they came. Routed again once the group has ended: the
            // table may have changed meanwhile (a split's next step gives the bytes a group).
            Ok(Dest::Here) if self.ending_here(&req.bucket) => {
                let (node, deadline) = (Arc::clone(self), deadline());
                Now::First(Box::pin(async move {
                    if let Err(e) = node.until_ended(&req.bucket, deadline).await {
                        return Now::Answer(Err(e));
                    }
                    match node.route(&req) {
                        Err(e) => Now::Answer(Err(e)),
                        Ok(Dest::Here) => match ops::apply(req, &node.store, &node.name) {
                            Applied::Now(answer) => Now::Answer(answer),
                            Applied::Later(answer) => Now::Waiting(Box::pin(node.within(deadline, answer))),
                        },
                        Ok(Dest::Replicated(range, nodes, holders)) => {
                            let answer = Arc::clone(&node).replicated(req, range, nodes, holders, deadline);
                            Now::Waiting(Box::pin(node.within(deadline, answer)))
                        }
                        Ok(Dest::There(_)) => Now::Answer(Err(RemoteError::Overloaded {
                            node: node.name.to_string(),
                            reason: "the table gave the bucket to another node while the request waited here for a replica group to end; it was not applied: retry it".into(),
                        })),
                    }
                }))
            }
            Ok(Dest::Here) => match ops::apply(req, &self.store, &self.name) {
                Applied::Now(answer) => Now::Answer(answer),
                Applied::Later(answer) => Now::Waiting(Box::pin(self.within(deadline(), answer))),
            },
            // A route query changes nothing, so no order is at stake: it takes a hop of its
            // own, which may connect first.
            Ok(Dest::There(owner)) if matches!(req.op, BucketOp::Route) => {
                timer.forwarded();
                let (node, deadline) = (Arc::clone(self), deadline());
                let answer = async move { node.route_query(req, owner, deadline).await };
                Now::Waiting(Box::pin(self.within(deadline, answer)))
            }
            Ok(Dest::There(owner)) => {
                timer.forwarded();
                req.path.push(self.name.clone());
                let deadline = deadline();
                let request = Request::Bucket(req);
                let queued = self
                    .open_hop(&owner)
                    .and_then(|peer| Some((peer.send_pinned(stream, &request, deadline)?, peer)));
                if let Some((answer, peer)) = queued {
                    return self.answer_forwarded(peer, answer, owner, request, deadline);
                }
                // Only until the connection and its streams are open (a test counts these).
                tracing::debug!(to = %owner, "forwarding by the slow path: no open stream to the owner yet");
                let node = Arc::clone(self);
                Now::First(Box::pin(async move {
                    let started = Instant::now();
                    let placed = tokio::time::timeout_at(deadline, async {
                        let peer = node.hop(&owner, deadline).await?;
                        let answer = peer.place_pinned(stream, &request, deadline).await?;
                        Ok::<_, RemoteError>((peer, answer))
                    });
                    match Box::pin(placed).await {
                        Ok(Ok((peer, answer))) => node.answer_forwarded(peer, answer, owner, request, deadline),
                        Ok(Err(e)) => Now::Answer(Err(e)),
                        Err(_) => Now::Answer(Err(RemoteError::DeadlineExceeded {
                            node: owner.to_string(),
                            waited_ms: started.elapsed().as_millis() as u64,
                        })),
                    }
                }))
            }
        }
    }

    /// A route query that reached its owner: this node, with the replicas its table names
    /// for the range.
    fn route_here(&self, req: BucketRequest) -> Answer {
        let replicas = self.replicas_of(&req.bucket, &self.name);
        ops::route(&self.name, req.path, replicas)
    }

    /// The nodes this node's table names for `bucket`'s range; `owner` alone if the table
    /// changed since the request was routed and covers it no more.
    fn replicas_of(&self, bucket: &[u8], owner: &NodeName) -> Vec<NodeName> {
        let table = self.table();
        table
            .replicas_of(bucket)
            .map_or_else(|| vec![owner.clone()], <[NodeName]>::to_vec)
    }

    /// A route query sent on to `owner`; answered from the table when the owner cannot be
    /// reached: the client then reports the owner's state (issue 22, point 9).
    async fn route_query(self: &Arc<Self>, mut req: BucketRequest, owner: NodeName, deadline: Instant) -> Answer {
        req.path.push(self.name.clone());
        let path = req.path.clone();
        let replicas = self.replicas_of(&req.bucket, &owner);
        match self.forward(&owner, Request::Bucket(req), deadline).await {
            Err(RemoteError::Unreachable { node, .. }) if node == owner.as_str() => Ok(Reply::Owner {
                node: owner,
                path,
                replicas,
            }),
            answer => answer,
        }
    }

    /// `answer`, or a deadline error from this node once `deadline` passes: a future given
    /// as [`Now::Waiting`] must end by the deadline by itself.
    fn within<F>(&self, deadline: Instant, answer: F) -> impl Future<Output = Answer> + Send + use<F>
    where
        F: Future<Output = Answer> + Send + 'static,
    {
        let name = self.name.clone();
        let start = Instant::now();
        async move {
            tokio::time::timeout_at(deadline, answer).await.unwrap_or_else(|_| {
                Err(RemoteError::DeadlineExceeded {
                    node: name.to_string(),
                    waited_ms: start.elapsed().as_millis() as u64,
                })
            })
        }
    }

    /// The answer to `request`, forwarded to `owner` over `peer`: `answer`, or for a read
    /// that met a restarted owner, the answer to it sent again.
    fn answer_forwarded(
        self: &Arc<Self>,
        peer: Arc<PeerConn>,
        answer: impl Future<Output = Answer> + Send + 'static,
        owner: NodeName,
        request: Request,
        deadline: Instant,
    ) -> Now {
        if !request.may_repeat() {
            return Now::Waiting(Box::pin(answer));
        }
        let node = Arc::clone(self);
        Now::Waiting(Box::pin(async move {
            let answer = answer.await;
            node.again_if_reset(&peer, answer, &owner, &request, deadline).await
        }))
    }

    /// The live connection this node last forwarded to `to` over, if any, and if its last
    /// call was answered: after one was not, [`Node::forward`] looks `to` up again (it may
    /// have died and come back at another address, while the old connection lingers until
    /// its idle timeout).
    fn open_hop(&self, to: &NodeName) -> Option<Arc<PeerConn>> {
        let hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        hops.get(to).filter(|p| p.is_alive() && !p.went_unanswered()).cloned()
    }

    /// Drops the connection cached for forwarding to `name`, unless it goes to `unless_at`:
    /// gossip says the node came back at another address (or, with `None`, died or left),
    /// and the next forward should look it up rather than wait on a process that is gone.
    pub(super) fn forget_hop(&self, name: &NodeName, unless_at: Option<SocketAddr>) {
        let mut hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        if hops.get(name).is_some_and(|p| Some(p.addr) != unless_at) {
            hops.remove(name);
        }
    }

    /// Sends a request one hop on, to `to`, with what is left of the deadline.
    pub(super) async fn forward(self: &Arc<Self>, to: &NodeName, request: Request, deadline: Instant) -> Answer {
        let peer = self.hop(to, deadline).await?;
        let answer = peer.call(&request, deadline).await;
        self.again_if_reset(&peer, answer, to, &request, deadline).await
    }

    /// The connection to forward to `to` over: the one last used, or a new one.
    pub(super) async fn hop(self: &Arc<Self>, to: &NodeName, deadline: Instant) -> Result<Arc<PeerConn>, RemoteError> {
        if let Some(peer) = self.open_hop(to) {
            return Ok(peer);
        }
        let addr = self.locate(to).await?;
        tracing::debug!(to = %to, %addr, "forwarding over a new connection");
        // Boxed: connecting is rare, and its future is large; unboxed it would make every
        // forwarded request's future as large.
        let peer = Box::pin(self.peer(to, addr, deadline)).await?;
        let mut hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        hops.retain(|_, p| p.is_alive());
        hops.insert(to.clone(), Arc::clone(&peer));
        Ok(peer)
    }

    /// `answer`, the answer to `request` sent to `to` over `peer`; or, when `peer` failed
    /// because the node at its address reset it (`to` was killed and started again there,
    /// and this was the first this node sent it since), the answer to `request` sent once
    /// more over a new connection, if sending it twice is harmless (a read: see
    /// [`Request::may_repeat`]). Without this, the first read forwarded to a restarted node
    /// would fail with "try again"; a write still does, for its caller to decide.
    async fn again_if_reset(
        self: &Arc<Self>,
        peer: &PeerConn,
        answer: Answer,
        to: &NodeName,
        request: &Request,
        deadline: Instant,
    ) -> Answer {
        if !matches!(answer, Err(RemoteError::Unreachable { .. })) || !peer.was_reset() || !request.may_repeat() {
            return answer;
        }
        tracing::info!(to = %to, addr = %peer.addr, "{to} reset its connection (it restarted): sending the {} again over a new one", request.kind());
        let again = async {
            let peer = self.hop(to, deadline).await?;
            peer.call(request, deadline).await
        };
        // Boxed: rare, and it would otherwise enlarge every forwarded request's future.
        // Bounded here too: finding `to` may mean a DNS lookup of its [peers] address.
        match Box::pin(tokio::time::timeout_at(deadline, again)).await {
            Ok(again) => again,
            Err(_) => answer,
        }
    }

    /// A new table for the whole cluster, set if the cluster's is still at version
    /// `expected` (the version the caller read; `None`: whatever it is now).
    ///
    /// Every set is decided by one node, the coordinator: the live member with the lowest
    /// name, by this node's membership. It compares and installs under the table's lock, so
    /// of two sets read at one version exactly one wins and the other is told the table
    /// changed underneath it. Deciding on whichever node was asked would not do: two nodes
    /// could each make version V+1 and tell their callers so, and gossip would then keep only
    /// one of the two (the higher setter name) everywhere. The coordinator is a choice every
    /// node makes alike once gossip has settled; while membership is still changing (the
    /// coordinator just died, a lower-named node is joining), two nodes may each believe they
    /// are it for a moment, and sets made through both in that moment are ordered by gossip
    /// as before. A coordinator that has not yet heard of the version the caller read says
    /// so, as a change, rather than set a table over one it has not seen.
    ///
    /// The table is handed to gossip with a wait for room in its inbox, never dropped as a
    /// datagram may be when the inbox is full: the caller is told the table is set.
    ///
    /// A range whose nodes change is not switched over: the coordinator keeps its entry and
    /// adds a move (`RoutingTable::plan_change`, issue 26), which the range's group carries
    /// out and its leader then finishes ([`Node::finish_move`]); `force` sets the entries as
    /// given instead, moving nothing; `call_off` lets an entry naming a moving range's own
    /// nodes call its move off.
    pub(super) async fn set_table(
        self: &Arc<Self>,
        entries: Vec<crate::routing::Entry>,
        expected: Option<u64>,
        forwarded: bool,
        force: bool,
        call_off: bool,
        deadline: Instant,
    ) -> Answer {
        // Checked here too, so that a bad table is refused by the node asked, not forwarded.
        RoutingTable::new(entries.clone(), 0, "").map_err(RemoteError::invalid)?;
        let coordinator = self.table_coordinator();
        if !forwarded && coordinator != self.name {
            tracing::debug!(to = %coordinator, "a new routing table: sending it to the coordinator");
            let request = Request::SetTableIf {
                entries,
                // What the caller read, or without a condition what this node holds.
                expected: expected.unwrap_or_else(|| self.table().version()),
                forwarded: true,
                force,
                call_off,
            };
            return self.forward(&coordinator, request, deadline).await;
        }
        let live = |n: &NodeName| self.live_member(n);
        let (table, saving) = {
            let mut held = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let expected = expected.unwrap_or(held.version());
            if held.version() != expected {
                return Err(RemoteError::TableChanged {
                    node: self.name.to_string(),
                    expected,
                    found: held.version(),
                    setter: held.setter().to_string(),
                });
            }
            // Under the lock, against the table this coordinator holds.
            let planned = held
                .plan_change(&entries, force, call_off, live)
                .map_err(RemoteError::invalid)?;
            if held.entries() == planned.entries.as_slice()
                && held.moves() == planned.moves.as_slice()
                && held.then() == planned.then.as_slice()
                && !held.setter().is_empty()
            {
                // No change: no new version for gossip to spread. The caller sees the
                // version it read, and says so.
                return Ok(Reply::Table((**held).clone()));
            }
            let table = self.next_table(&held, planned)?;
            let saving = self.install_table(&mut held, table.clone());
            (table, saving)
        };
        self.publish_table(table, saving).await
    }

    /// The version after `held` with `planned`'s entries, moves and table to follow, set by
    /// this node; each range's group keeps its generation, and a group born here gets a new one.
    fn next_table(&self, held: &RoutingTable, planned: crate::routing::Planned) -> Result<RoutingTable, RemoteError> {
        Self::table_after(held, planned, self.name.as_str())
    }

    /// The version after `held` with `planned`'s entries, moves and table to follow, as set
    /// by `setter` (see [`Node::next_table`]).
    fn table_after(
        held: &RoutingTable,
        planned: crate::routing::Planned,
        setter: &str,
    ) -> Result<RoutingTable, RemoteError> {
        RoutingTable::new(planned.entries, held.version() + 1, setter)
            .and_then(|t| t.with_moves(planned.moves))
            .and_then(|t| t.with_then(planned.then))
            .map(|t| t.with_generations(Some(held)))
            .map_err(RemoteError::invalid)
    }

    /// A table this coordinator installed: once saved (set means kept: a crash right after the
    /// answer restarts with it), handed to gossip and answered.
    async fn publish_table(&self, table: RoutingTable, saving: Option<tokio::task::JoinHandle<()>>) -> Answer {
        if let Some(saving) = saving {
            let _ = saving.await;
        }
        self.gossip.send(super::gossip::Input::SetTable(table.clone())).await;
        Ok(Reply::Table(table))
    }

    /// A range's group has moved to `entry`'s nodes (its leader says so): the coordinator makes
    /// them the entry's, in a new version, and drops the move. Repeated by the leader until its
    /// table shows it; finishing a finished move changes nothing.
    pub(super) async fn finish_move(
        self: &Arc<Self>,
        entry: crate::routing::Entry,
        ended: Option<kvnode_replica::Generation>,
        under: (u64, String),
        forwarded: bool,
        deadline: Instant,
    ) -> Answer {
        let coordinator = self.table_coordinator();
        if !forwarded && coordinator != self.name {
            let request = Request::FinishMove {
                entry,
                ended,
                under,
                forwarded: true,
            };
            return self.forward(&coordinator, request, deadline).await;
        }
        let (table, saving) = {
            let mut held = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let under = (under.0, under.1.as_str());
            let Some(planned) = held.finish_move(&entry, ended, under).map_err(RemoteError::invalid)? else {
                return Ok(Reply::Table((**held).clone()));
            };
            let replaced = held
                .move_of(entry.first, entry.last)
                .filter(|m| !m.same_nodes(&entry))
                .cloned();
            let table = self.next_table(&held, planned)?;
            match (ended, replaced) {
                (Some(history), Some(replaced)) => {
                    tracing::warn!(range = %entry.range(), to = %entry, %history, %replaced, "range {}'s group was sealed onto {entry} before the table's move to {replaced} could take effect (a table of another coordinator, or a move re-aimed late): the range is named there, and that move is dropped", entry.range())
                }
                (Some(history), None) => {
                    tracing::info!(range = %entry.range(), to = %entry, %history, "a move is done: the range's group ended onto one node, which holds the range now")
                }
                (None, _) => {
                    tracing::info!(range = %entry.range(), to = %entry, "a move is done: the table names the range's new nodes")
                }
            }
            let saving = self.install_table(&mut held, table.clone());
            (table, saving)
        };
        self.publish_table(table, saving).await
    }

    /// At the coordinator, once the table's moves are done: plans the table it is to follow
    /// (`RoutingTable::then`: a split or merge whose bytes were moved onto one node first),
    /// as `route --set` would have, and publishes it. `Err` says why a plan is refused now
    /// (a node it names is down); the caller tries again later, and `route --set` may
    /// replace the table meanwhile.
    pub(super) async fn follow_then(self: &Arc<Self>) -> Result<(), String> {
        if self.table_coordinator() != self.name {
            return Ok(());
        }
        let (table, saving) = {
            let mut held = self.table.write().unwrap_or_else(PoisonError::into_inner);
            if held.then().is_empty() || !held.moves().is_empty() {
                return Ok(());
            }
            let planned = held.plan_then(|n| self.live_member(n)).map_err(|why| {
                let then: Vec<String> = held.then().iter().map(ToString::to_string).collect();
                format!("the table's next step, {}, cannot be taken yet: {why}", then.join(","))
            })?;
            // Set in the name of the table it follows: a function of that table alone, so two
            // nodes that both believe they coordinate (membership still settling) make the
            // same table, with the same generations for the groups it starts.
            let table = Self::table_after(&held, planned, held.setter()).map_err(|e| e.to_string())?;
            tracing::info!(table = %table, "the ranges to re-cut are each on one node now: re-cut there, and moving to their nodes");
            let saving = self.install_table(&mut held, table.clone());
            (table, saving)
        };
        self.publish_table(table, saving)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Whether `node` is this node or a live member of its cluster (by its gossip).
    fn live_member(&self, node: &NodeName) -> bool {
        *node == self.name
            || self
                .gossip
                .members()
                .iter()
                .any(|m| m.name == *node && m.state.is_live())
    }

    /// The node that decides every `route --set` (see [`Node::set_table`]): the live member
    /// with the lowest name, this node when it knows no other.
    pub(super) fn table_coordinator(&self) -> NodeName {
        self.gossip
            .members()
            .iter()
            .filter(|m| matches!(m.state, crate::gossip::State::Alive | crate::gossip::State::Suspect))
            .map(|m| m.name.clone())
            .chain([self.name.clone()])
            .min()
            .unwrap_or_else(|| self.name.clone())
    }

    fn members(&self) -> Vec<MemberInfo> {
        self.gossip.member_infos()
    }

    /// Delivers a chat line here (printing it, and answering with the auto-reply), or passes
    /// it on to its addressee and prints the reply that comes back, as in the lesson.
    async fn chat(self: &Arc<Self>, mut msg: ChatMessage, deadline: Instant) -> Answer {
        if msg.text.len() > MAX_CHAT || msg.from.is_empty() || msg.from.len() > 128 {
            return Err(RemoteError::invalid(format!(
                "chat messages are at most {MAX_CHAT} bytes, with a sender name of 1 to 128 bytes"
            )));
        }
        if msg.to == self.name {
            // Bounded here (short of the caller's deadline) so that the sender hears why, not
            // "no answer; is it running?" from a node that is.
            let printed = tokio::time::timeout_at(deadline, self.chat_out.print(&msg.from, &msg.text)).await;
            if let Err(why) = printed.unwrap_or_else(|_| Err(super::chat_out::NOT_READ.into())) {
                return Err(RemoteError::Internal {
                    node: self.name.to_string(),
                    reason: format!("the message was not printed: {why}"),
                });
            }
            let reply = self.config.auto_reply.as_ref().map(|text| ChatLine {
                from: self.name.to_string(),
                text: text.clone(),
            });
            return Ok(Reply::ChatAck { reply });
        }
        if msg.path.contains(&self.name) || msg.path.len() > MAX_HOPS {
            msg.path.push(self.name.clone());
            return Err(RemoteError::RoutingLoop {
                path: msg.path.iter().map(|n| n.to_string()).collect(),
            });
        }
        msg.path.push(self.name.clone());
        let to = msg.to.clone();
        // The hint is for the first node that handles the message: it is used (or not) here,
        // and never passed on, so one message makes at most one node dial an address a
        // client gave.
        let hint = msg.at.take();
        let answer = match self.chat_hint(&to, hint.as_deref(), deadline).await {
            // Not known here by name, but the sender said where it is.
            Some(addr) => {
                tracing::info!(from = %msg.from, %to, %addr, "chat: dialling the address the sender gave for a node not known here");
                let peer = Box::pin(self.peer(&to, addr, deadline)).await?;
                peer.call(&Request::Chat(msg), deadline).await?
            }
            None => self.forward(&to, Request::Chat(msg), deadline).await?,
        };
        if let Reply::ChatAck { reply: Some(line) } = &answer {
            // The message was delivered; the reply printed here is a courtesy.
            let _ = tokio::time::timeout_at(deadline, self.chat_out.print(&line.from, &line.text)).await;
        }
        Ok(answer)
    }

    /// The address the sender gave for a chat message's addressee, if this node knows
    /// nothing of that name: what the cluster knows wins, an address or that the node is
    /// dead or has left.
    async fn chat_hint(&self, to: &NodeName, at: Option<&str>, deadline: Instant) -> Option<SocketAddr> {
        let at: crate::names::HostPort = at?.parse().ok()?;
        if self.gossip.member(to).is_some() || self.locate(to).await.is_ok() {
            return None;
        }
        tokio::time::timeout_at(deadline, at.resolve()).await.ok()?.ok()
    }
}

/// `now`, with `timer` stopped when its answer is given (at once, or when its future ends).
fn timed(now: Now, timer: RequestTimer) -> Now {
    match now {
        Now::Answer(answer) => {
            timer.done(&answer);
            Now::Answer(answer)
        }
        Now::Waiting(answer) => Now::Waiting(Box::pin(async move {
            let answer = answer.await;
            timer.done(&answer);
            answer
        })),
        Now::First(placing) => Now::First(Box::pin(async move { timed(placing.await, timer) })),
        // Not given for a bucket request (`handle` would refuse it): nothing to time.
        Now::Later(request) => Now::Later(request),
    }
}

/// Where [`Node::route`] sends a bucket request.
enum Dest {
    /// This node owns the bucket.
    Here,
    /// The named node does, by this node's table.
    There(NodeName),
    /// The range's group does (a replicated range, issue 25, or a moving one, issue 26): its
    /// leader serves it. The group's nodes, the entry's first, and how many are the entry's.
    Replicated(kvnode_replica::RangeId, Vec<NodeName>, usize),
}
