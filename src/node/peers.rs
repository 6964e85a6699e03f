//! Connections from this node to other nodes: one pooled, authenticated QUIC connection per
//! peer, with a few long-lived request streams on it that many forwarded requests share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Me;
use crate::names::NodeName;
use crate::rpc::{CallError, Channel};
use crate::secret::Secret;
use crate::transport::{self, Authed, ConnectError};
use crate::wire::{RemoteError, Reply, Request, Role};

/// Request streams opened per peer connection; calls are spread over them.
const STREAMS_PER_PEER: usize = 4;

/// One live connection to a peer.
pub struct PeerConn {
    pub authed: Authed,
    pub addr: SocketAddr,
    channels: Vec<Mutex<Option<Arc<Channel>>>>,
    next: AtomicUsize,
}

impl PeerConn {
    fn is_alive(&self) -> bool {
        self.authed.conn.close_reason().is_none()
    }

    /// A request stream, opened on first use and replaced when it breaks.
    async fn channel(&self) -> Result<Arc<Channel>, String> {
        let slot = &self.channels[self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len()];
        if let Some(ch) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
            && !ch.is_broken()
        {
            return Ok(Arc::clone(ch));
        }
        let (send, recv) = self.authed.conn.open_bi().await.map_err(|e| e.to_string())?;
        let ch = Arc::new(Channel::spawn(recv, send));
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&ch));
        Ok(ch)
    }
}

/// A peer's connection slot; its lock makes concurrent callers wait for one connection attempt.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<PeerConn>>>>;

/// The pool: at most one connection per peer name, made on demand, shared by every task.
pub struct PeerPool {
    endpoint: quinn::Endpoint,
    secret: Secret,
    me: NodeName,
    listen: SocketAddr,
    conns: Mutex<HashMap<NodeName, Slot>>,
}

impl PeerPool {
    pub fn new(endpoint: quinn::Endpoint, secret: Secret, me: NodeName, listen: SocketAddr) -> Self {
        Self {
            endpoint,
            secret,
            me,
            listen,
            conns: Mutex::default(),
        }
    }

    /// The live connection to `name` at `addr`, connecting (once, however many ask) if needed.
    pub async fn connection(
        &self,
        name: &NodeName,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Arc<PeerConn>, RemoteError> {
        let slot = Arc::clone(
            self.conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(name.clone())
                .or_default(),
        );
        let mut slot = match tokio::time::timeout_at(deadline, slot.lock()).await {
            Ok(guard) => guard,
            Err(_) => return Err(self.unreachable(name, addr, "timed out waiting for the connection")),
        };
        if let Some(conn) = slot.as_ref()
            && conn.is_alive()
            && conn.addr == addr
        {
            return Ok(Arc::clone(conn));
        }
        let me = Me {
            role: Role::Node,
            name: self.me.as_str(),
            listen: Some(self.listen.to_string()),
        };
        let connect = transport::connect(&self.endpoint, addr, &self.secret, &me);
        let authed = match tokio::time::timeout_at(deadline, connect).await {
            Err(_) => return Err(self.unreachable(name, addr, "no answer before the deadline")),
            Ok(Err(ConnectError::AuthRefused { .. })) => {
                return Err(RemoteError::AuthRefused {
                    from: self.me.to_string(),
                    to: format!("{name} ({addr})"),
                });
            }
            Ok(Err(e)) => return Err(self.unreachable(name, addr, &e.to_string())),
            Ok(Ok(a)) => a,
        };
        if authed.peer.name != name.as_str() {
            authed.conn.close(transport::close::DONE, b"wrong node");
            return Err(self.unreachable(name, addr, &format!("the node there is named {}", authed.peer.name)));
        }
        let conn = Arc::new(PeerConn {
            authed,
            addr,
            channels: (0..STREAMS_PER_PEER).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        });
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Sends `request` to the peer and waits for its answer until `deadline`.
    pub async fn call(
        &self,
        name: &NodeName,
        addr: SocketAddr,
        request: Request,
        deadline: Instant,
    ) -> Result<Reply, RemoteError> {
        let conn = self.connection(name, addr, deadline).await?;
        let channel = conn.channel().await.map_err(|e| self.unreachable(name, addr, &e))?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        match channel.call(request, timeout).await {
            Ok(answer) => answer,
            Err(CallError::Timeout(after)) => Err(self.unreachable(name, addr, &format!("no answer within {after:?}"))),
            Err(CallError::Broken(why)) => Err(self.unreachable(name, addr, &why)),
            Err(CallError::TooLarge(e)) => Err(RemoteError::invalid(e)),
        }
    }

    /// Drops the pooled connection to `name` (it died, or the member left).
    pub fn forget(&self, name: &NodeName) {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    fn unreachable(&self, name: &NodeName, addr: SocketAddr, reason: &str) -> RemoteError {
        RemoteError::Unreachable {
            node: name.to_string(),
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// What a hop keeps of the deadline for itself, so that its own error ("owner unreachable")
/// reaches the caller before the caller's deadline fires.
pub fn hop_margin(timeout: Duration) -> Duration {
    (timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(100))
}
