//! What a node does with each request: execute it, or forward it toward its owner.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use serde_bytes::ByteBuf;
use tokio::time::Instant;

use super::{Node, hop_margin};
use crate::names::{NodeName, escape_text};
use crate::routing::RoutingTable;
use crate::rpc::Handler;
use crate::store::{Lookup, StoreError};
use crate::wire::{
    BucketOp, BucketRequest, ChatLine, ChatMessage, MAX_CHAT, MAX_HOPS, MemberInfo, RemoteError, Reply, Request,
};

type Answer = Result<Reply, RemoteError>;

impl Handler for Node {
    async fn handle(self: Arc<Self>, request: Request, deadline: Instant) -> Answer {
        // Keep a little of the deadline back so our own error reaches the caller in time.
        let deadline = deadline - hop_margin(deadline.saturating_duration_since(Instant::now()));
        match request {
            Request::Bucket(req) => self.bucket(req, deadline).await,
            Request::Table => Ok(Reply::Table((*self.table()).clone())),
            Request::SetTable { entries } => self.set_table(entries),
            Request::Members => Ok(Reply::Members(self.members())),
            Request::Ping => Ok(Reply::Pong {
                name: self.name.clone(),
            }),
            Request::Chat(msg) => self.chat(msg, deadline).await,
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

    fn node_name(&self) -> &str {
        self.name.as_str()
    }
}

impl Node {
    /// Routes a bucket request: execute it here if this node owns the bucket, else forward it
    /// to the owner, which checks its own table again.
    async fn bucket(self: &Arc<Self>, mut req: BucketRequest, deadline: Instant) -> Answer {
        req.validate().map_err(RemoteError::invalid)?;
        let seen = req.path.contains(&self.name);
        req.path.push(self.name.clone());
        let path = || req.path.iter().map(|n| n.to_string()).collect();
        if seen {
            return Err(RemoteError::RoutingLoop { path: path() });
        }
        if req.path.len() > MAX_HOPS + 1 {
            return Err(RemoteError::HopLimit { path: path() });
        }
        let table = self.table();
        let Some(owner) = table.owner_of(&req.bucket).cloned() else {
            return Err(RemoteError::NoRoute {
                message: table.no_entry_message(&req.bucket),
            });
        };
        if owner == self.name {
            return self.execute(req).await;
        }
        self.forward(&owner, Request::Bucket(req), deadline).await
    }

    /// Sends a request one hop on, to `to`, with what is left of the deadline.
    async fn forward(self: &Arc<Self>, to: &NodeName, request: Request, deadline: Instant) -> Answer {
        let addr = self.locate(to)?;
        tracing::debug!(to = %to, %addr, kind = request.kind(), "forwarding");
        let peer = self.peer(to, addr, deadline).await?;
        peer.call(request, deadline).await
    }

    async fn execute(&self, req: BucketRequest) -> Answer {
        let BucketRequest { bucket, op, path } = req;
        let bucket_err = || RemoteError::BucketNotFound {
            bucket: ByteBuf::from(bucket.clone()),
        };
        let internal = |e: StoreError| RemoteError::Internal {
            node: self.name.to_string(),
            reason: e.to_string(),
        };
        match op {
            BucketOp::Put { key, value } => {
                self.store
                    .put(&bucket, &key, Bytes::from(value))
                    .await
                    .map_err(internal)?;
                Ok(Reply::Done)
            }
            BucketOp::Get { key } => match self.store.get(&bucket, &key).await.map_err(internal)? {
                Lookup::Found(v) => Ok(Reply::Value(ByteBuf::from(v.to_vec()))),
                Lookup::NoKey => Err(RemoteError::KeyNotFound {
                    bucket: ByteBuf::from(bucket),
                    key: ByteBuf::from(key),
                }),
                Lookup::NoBucket => Err(bucket_err()),
            },
            BucketOp::Delete { key } => match self.store.delete(&bucket, &key).await.map_err(internal)? {
                Lookup::Found(()) => Ok(Reply::Done),
                Lookup::NoKey => Err(RemoteError::KeyNotFound {
                    bucket: ByteBuf::from(bucket),
                    key: ByteBuf::from(key),
                }),
                Lookup::NoBucket => Err(bucket_err()),
            },
            BucketOp::Keys => match self.store.keys(&bucket).await.map_err(internal)? {
                Lookup::Found(keys) => Ok(Reply::Keys(
                    keys.into_iter().map(|k| ByteBuf::from(k.to_vec())).collect(),
                )),
                Lookup::NoKey | Lookup::NoBucket => Err(bucket_err()),
            },
            BucketOp::Route => Ok(Reply::Owner {
                node: self.name.clone(),
                path,
            }),
        }
    }

    /// A new table for the whole cluster: the next version, set by this node.
    fn set_table(&self, entries: Vec<crate::routing::Entry>) -> Answer {
        let version = self.table().version() + 1;
        let table = RoutingTable::new(entries, version, self.name.as_str()).map_err(RemoteError::invalid)?;
        self.offer_table(table.clone());
        self.gossip.offer(super::gossip::Input::SetTable(table.clone()));
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
            print_chat_line(&msg.from, &msg.text);
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
        let answer = self.forward(&to, Request::Chat(msg), deadline).await?;
        if let Reply::ChatAck { reply: Some(line) } = &answer {
            print_chat_line(&line.from, &line.text);
        }
        Ok(answer)
    }
}

/// `SENDER: MESSAGE` on stdout, one line, control characters escaped. A closed stdout is not
/// this node's problem: the line is dropped, the node goes on.
fn print_chat_line(from: &str, text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}: {}", escape_text(from), escape_text(text));
    let _ = out.flush();
}
