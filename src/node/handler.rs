//! What a node does with each request: execute it, or forward it toward its owner.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde_bytes::ByteBuf;
use tokio::time::Instant;

use super::{Node, PeerConn, hop_margin};
use crate::names::NodeName;
use crate::routing::RoutingTable;
use crate::rpc::{Handler, Now};
use crate::store::{Lookup, StoreError};
use crate::wire::{
    BucketOp, BucketRequest, ChatLine, ChatMessage, KEYS_PAGE, MAX_CHAT, MAX_HOPS, MemberInfo, RemoteError, Reply,
    Request,
};

type Answer = Result<Reply, RemoteError>;

impl Handler for Node {
    async fn handle(self: Arc<Self>, request: Request, deadline: Instant) -> Answer {
        // Keep a little of the deadline back so our own error reaches the caller in time.
        let deadline = deadline - hop_margin(deadline.saturating_duration_since(Instant::now()));
        match request {
            Request::Bucket(req) => self.bucket(req, deadline).await,
            Request::Table => Ok(Reply::Table((*self.table()).clone())),
            Request::SetTable { entries } => self.set_table(entries).await,
            Request::Members => Ok(Reply::Members(self.members())),
            Request::Ping => Ok(Reply::Pong {
                name: self.name.clone(),
            }),
            Request::Chat(msg) => Box::pin(self.chat(msg, deadline)).await,
            Request::Gossip { message } => {
                let msg = crate::gossip::Message::decode(&message).map_err(RemoteError::invalid)?;
                // The sender is where the message says it is from; the core checks the rest.
                let from = msg.sender().id.addr;
                self.gossip.offer(super::gossip::Input::Message { from, msg });
                Ok(Reply::Done)
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

    fn answer_now(self: &Arc<Self>, request: Request, timeout: Duration) -> Now {
        match request {
            Request::Bucket(req) => self.bucket_now(req, timeout),
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
    /// Routes a bucket request: execute it here if this node owns the bucket, else forward it
    /// to the owner, which checks its own table again.
    async fn bucket(self: &Arc<Self>, mut req: BucketRequest, deadline: Instant) -> Answer {
        match self.route(&req)? {
            // Boxed: a store write's future is large, and forwarded requests, the common
            // case here, need none of it.
            Dest::Here => Box::pin(self.execute(req)).await,
            Dest::There(owner) => {
                // Only until the connection and its streams are open (a test counts these).
                tracing::debug!(to = %owner, "forwarding by the slow path: no open stream to the owner yet");
                req.path.push(self.name.clone());
                self.forward(&owner, Request::Bucket(req), deadline).await
            }
        }
    }

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
        match table.owner_of(&req.bucket) {
            None => Err(RemoteError::NoRoute {
                message: table.no_entry_message(&req.bucket),
            }),
            Some(owner) if *owner == self.name => Ok(Dest::Here),
            Some(owner) => Ok(Dest::There(owner.clone())),
        }
    }

    /// [`Handler::answer_now`] for a bucket request: executed at once when it is this node's
    /// and needs no waiting (a read, or anything on the in-memory store); sent on at once
    /// when its owner is another node and the next stream to it is open (its future ends
    /// by the deadline: the stream fails the call then). Anything else (a durable write,
    /// a hop that must connect or open a stream first) is given back as it came, to go the
    /// deadline-bounded path of [`Node::bucket`].
    fn bucket_now(self: &Arc<Self>, mut req: BucketRequest, timeout: Duration) -> Now {
        match self.route(&req) {
            Err(e) => Now::Answer(Err(e)),
            Ok(Dest::Here) => match self.execute_sync(req) {
                Ok(answer) => Now::Answer(answer),
                Err(deferred) => Now::Later(Request::Bucket(deferred.into_request())),
            },
            Ok(Dest::There(owner)) => {
                let hop = self.open_hop(&owner).and_then(|peer| Some((peer.next_stream()?, peer)));
                let Some((stream, peer)) = hop else {
                    return Now::Later(Request::Bucket(req));
                };
                req.path.push(self.name.clone());
                // As in `handle`: keep back a little of the deadline for our own error.
                let deadline = Instant::now() + timeout - hop_margin(timeout);
                let request = Request::Bucket(req);
                let answer = peer.send(&stream, &request, deadline);
                if !request.may_repeat() {
                    return Now::Waiting(Box::pin(answer));
                }
                let node = Arc::clone(self);
                Now::Waiting(Box::pin(async move {
                    let answer = answer.await;
                    node.again_if_reset(&peer, answer, &owner, &request, deadline).await
                }))
            }
        }
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
    async fn forward(self: &Arc<Self>, to: &NodeName, request: Request, deadline: Instant) -> Answer {
        let peer = self.hop(to, deadline).await?;
        let answer = peer.call(&request, deadline).await;
        self.again_if_reset(&peer, answer, to, &request, deadline).await
    }

    /// The connection to forward to `to` over: the one last used, or a new one.
    async fn hop(self: &Arc<Self>, to: &NodeName, deadline: Instant) -> Result<Arc<PeerConn>, RemoteError> {
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

    /// Executes a request this node owns; a write to the durable store waits for its sync,
    /// and a listing of keys runs on a blocking thread.
    async fn execute(&self, req: BucketRequest) -> Answer {
        let deferred = match self.execute_sync(req) {
            Ok(answer) => return answer,
            Err(deferred) => deferred,
        };
        match deferred {
            Deferred::Put { bucket, key, value, .. } => {
                self.store
                    .put(&bucket, &key, Bytes::from(value))
                    .await
                    .map_err(|e| self.internal(e))?;
                Ok(Reply::Done)
            }
            Deferred::Delete { bucket, key, .. } => {
                let found = self.store.delete(&bucket, &key).await.map_err(|e| self.internal(e))?;
                removed(found, bucket, key)
            }
            Deferred::Keys { bucket, after, .. } => match self
                .store
                .keys(&bucket, after.as_deref().map(Vec::as_slice), KEYS_PAGE)
                .await
            {
                Err(e) => Err(self.internal(e)),
                Ok(Lookup::Found(page)) => Ok(Reply::Keys {
                    keys: page.keys.into_iter().map(|k| ByteBuf::from(k.to_vec())).collect(),
                    more: page.more,
                }),
                Ok(Lookup::NoKey | Lookup::NoBucket) => Err(no_bucket(bucket)),
            },
        }
    }

    /// Executes everything that needs no waiting; gives back a write to the durable store
    /// and a listing of keys (a scan of the whole bucket, too long for the event loop).
    fn execute_sync(&self, req: BucketRequest) -> Result<Answer, Deferred> {
        let BucketRequest { bucket, op, path } = req;
        let answer = match op {
            BucketOp::Put { key, value } => match self.store.memory() {
                Some(m) => {
                    m.put(&bucket, &key, Bytes::from(value));
                    Ok(Reply::Done)
                }
                None => {
                    return Err(Deferred::Put {
                        bucket,
                        key,
                        value,
                        path,
                    });
                }
            },
            BucketOp::Delete { key } => match self.store.memory() {
                Some(m) => removed(m.delete(&bucket, &key), bucket, key),
                None => return Err(Deferred::Delete { bucket, key, path }),
            },
            BucketOp::Get { key } => match self.store.get_now(&bucket, &key) {
                Err(e) => Err(self.internal(e)),
                Ok(Lookup::Found(v)) => Ok(Reply::Value(ByteBuf::from(v.to_vec()))),
                Ok(Lookup::NoKey) => Err(RemoteError::KeyNotFound {
                    bucket: ByteBuf::from(bucket),
                    key: ByteBuf::from(key),
                }),
                Ok(Lookup::NoBucket) => Err(no_bucket(bucket)),
            },
            BucketOp::Keys { after } => return Err(Deferred::Keys { bucket, after, path }),
            BucketOp::Route => {
                let mut path = path;
                path.push(self.name.clone());
                Ok(Reply::Owner {
                    node: self.name.clone(),
                    path,
                })
            }
        };
        Ok(answer)
    }

    fn internal(&self, e: StoreError) -> RemoteError {
        RemoteError::Internal {
            node: self.name.to_string(),
            reason: e.to_string(),
        }
    }

    /// A new table for the whole cluster: the next version, set by this node. Handed to
    /// gossip with a wait for room in its inbox, never dropped as a datagram may be when
    /// the inbox is full: the caller is told the table is set.
    async fn set_table(&self, entries: Vec<crate::routing::Entry>) -> Answer {
        let version = self.table().version() + 1;
        let table = RoutingTable::new(entries, version, self.name.as_str()).map_err(RemoteError::invalid)?;
        if let Some(saving) = self.offer_table(table.clone()) {
            // Set means kept: a crash right after the answer restarts with this table.
            let _ = saving.await;
        }
        self.gossip.send(super::gossip::Input::SetTable(table.clone())).await;
        Ok(Reply::Table(table))
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

/// Where [`Node::route`] sends a bucket request.
enum Dest {
    /// This node owns the bucket.
    Here,
    /// The named node does, by this node's table.
    There(NodeName),
}

/// What [`Node::execute_sync`] does not do on the spot, with the request's path: a write
/// that must wait for the durable store's group commit, or a listing of keys.
enum Deferred {
    Put {
        bucket: Vec<u8>,
        key: Vec<u8>,
        value: Vec<u8>,
        path: Vec<NodeName>,
    },
    Delete {
        bucket: Vec<u8>,
        key: Vec<u8>,
        path: Vec<NodeName>,
    },
    Keys {
        bucket: Vec<u8>,
        after: Option<ByteBuf>,
        path: Vec<NodeName>,
    },
}

impl Deferred {
    fn into_request(self) -> BucketRequest {
        let (bucket, op, path) = match self {
            Self::Put {
                bucket,
                key,
                value,
                path,
            } => (bucket, BucketOp::Put { key, value }, path),
            Self::Delete { bucket, key, path } => (bucket, BucketOp::Delete { key }, path),
            Self::Keys { bucket, after, path } => (bucket, BucketOp::Keys { after }, path),
        };
        BucketRequest { bucket, op, path }
    }
}

fn no_bucket(bucket: Vec<u8>) -> RemoteError {
    RemoteError::BucketNotFound {
        bucket: ByteBuf::from(bucket),
    }
}

/// The answer to a delete, from what the store found.
fn removed(found: Lookup<()>, bucket: Vec<u8>, key: Vec<u8>) -> Answer {
    match found {
        Lookup::Found(()) => Ok(Reply::Done),
        Lookup::NoKey => Err(RemoteError::KeyNotFound {
            bucket: ByteBuf::from(bucket),
            key: ByteBuf::from(key),
        }),
        Lookup::NoBucket => Err(no_bucket(bucket)),
    }
}
