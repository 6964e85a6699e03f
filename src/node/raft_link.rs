//! Raft frames between nodes (issue 25): each node sends a peer its frames on one long-lived
//! unidirectional QUIC stream of the peer connection, opened on first use and again when it
//! breaks (Raft resends what was lost). Each frame is a length-prefixed postcard
//! [`kvnode_replica::Frame`], one round's messages of every group the two share, at most
//! [`kvnode_replica::MAX_FRAME`] bytes.
//!
//! An incoming frame is from the peer the connection authenticated, whatever the frame says
//! (the replica core drops a message whose sender is another). A frame that is oversize or
//! malformed ends that stream, with a log line; the connection and the node go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvnode_replica::{Frame, MAX_FRAME};
use tokio::sync::mpsc;

use super::Node;
use super::replicas::{Input, Outbox};
use crate::names::NodeName;
use crate::transport::{self, Connection, RecvStream, SendStream};
use crate::wire::{FrameError, FrameReader};

/// Frames waiting for one peer's stream; more are dropped (Raft resends).
const QUEUE: usize = 256;

/// How long a sender may take to reach a peer before the frames for it are dropped.
const CONNECT: Duration = Duration::from_secs(1);

/// How long one frame's write may wait (for flow control a dead peer never grants) before
/// the stream is given up and reopened.
const WRITE: Duration = Duration::from_secs(1);

/// Each peer's queue of outgoing frames, and the task that writes them.
#[derive(Default)]
pub(super) struct RaftLinks {
    queues: Mutex<HashMap<NodeName, mpsc::Sender<Frame>>>,
    /// The connection each peer last sent its raft frames on: alive for sure, so frames to
    /// it go there too. A peer killed and restarted comes back on a new connection while the
    /// old one may look open for a while (until its idle timeout); without this, frames to
    /// it would go into the old one meanwhile.
    heard_on: Mutex<HashMap<NodeName, Connection>>,
}

/// The node as the driver's [`Outbox`].
pub(super) struct NodeOutbox(pub(super) std::sync::Weak<Node>);

impl Outbox for NodeOutbox {
    fn send(&self, to: &NodeName, frame: Frame) {
        if let Some(node) = self.0.upgrade() {
            node.send_raft(to, frame);
        }
    }
}

impl Node {
    /// Queues `frame` for `to`'s raft stream, starting its sender on first use.
    fn send_raft(self: &Arc<Self>, to: &NodeName, frame: Frame) {
        let mut queues = self.raft_links.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.entry(to.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            self.tasks.spawn(Arc::clone(self).raft_sender(to.clone(), rx));
            tx
        });
        if queue.try_send(frame).is_err() {
            tracing::trace!(%to, "raft frame dropped: the peer's queue is full");
        }
    }

    /// Writes the frames queued for `to` on one stream, reopened when it breaks, when a
    /// write stalls, or when `to` has been heard on another connection than the stream's.
    async fn raft_sender(self: Arc<Self>, to: NodeName, mut queue: mpsc::Receiver<Frame>) {
        // The stream, and the id of the connection it is on.
        let mut stream: Option<(SendStream, usize)> = None;
        loop {
            let frame = tokio::select! {
                f = queue.recv() => f,
                () = self.serve.stopping.cancelled() => None,
            };
            let Some(frame) = frame else { return };
            let payload = frame.encode();
            if payload.len() > MAX_FRAME {
                tracing::warn!(%to, len = payload.len(), "raft frame over the limit; dropped");
                continue;
            }
            let mut bytes = Vec::with_capacity(4 + payload.len());
            bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&payload);
            let heard = self.raft_links.heard_on(&to).filter(Connection::is_alive);
            if let (Some((_, on)), Some(h)) = (&stream, &heard)
                && *on != h.stable_id()
            {
                tracing::debug!(%to, "the peer sends on a newer connection; its raft stream follows");
                stream = None;
            }
            if stream.is_none() {
                stream = self.open_raft_stream(&to, heard).await;
            }
            let Some((s, _)) = stream.as_mut() else { continue };
            let broke = match tokio::time::timeout(WRITE, s.write_all(&bytes)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("a write waited over {WRITE:?}")),
            };
            if let Some(why) = broke {
                tracing::debug!(%to, error = %why, "raft stream broke; reopening it for the next frame");
                stream = None;
            }
        }
    }

    /// A stream to `to`: on `heard` (the connection it last sent on) if given, else on the
    /// pooled connection (made if need be).
    async fn open_raft_stream(
        self: &Arc<Self>,
        to: &NodeName,
        heard: Option<Connection>,
    ) -> Option<(SendStream, usize)> {
        let deadline = tokio::time::Instant::now() + CONNECT;
        let opened = tokio::time::timeout_at(deadline, async {
            let conn = match heard {
                Some(c) => c,
                None => self.hop(to, deadline).await.ok()?.connection().clone(),
            };
            let id = conn.stable_id();
            conn.open_uni().await.ok().map(|s| (s, id))
        });
        match opened.await {
            Ok(Some(s)) => Some(s),
            _ => {
                tracing::trace!(%to, "cannot open a raft stream yet");
                None
            }
        }
    }

    /// Reads the raft streams node `peer` opens on `conn`, handing their frames to the driver.
    pub(super) async fn read_raft_streams(self: Arc<Self>, conn: Connection, peer: NodeName) {
        loop {
            let stream = tokio::select! {
                s = conn.accept_uni() => s,
                () = self.serve.stopping.cancelled() => return,
            };
            let Ok(recv) = stream else { return };
            self.raft_links.heard(&peer, &conn);
            self.tasks.spawn(Arc::clone(&self).read_raft_stream(recv, peer.clone()));
        }
    }

    async fn read_raft_stream(self: Arc<Self>, recv: RecvStream, peer: NodeName) {
        let mut reader = FrameReader::new(recv, MAX_FRAME).with_budget(self.serve.frames.clone());
        loop {
            let next = tokio::select! {
                f = reader.next_frame() => f,
                () = self.serve.stopping.cancelled() => return,
            };
            let why = match next {
                Ok(None) => return,
                Ok(Some(bytes)) => match Frame::decode(&bytes) {
                    Ok(frame) => {
                        // Dropped when the driver's inbox is full: Raft resends.
                        let _ = self.replicas.offer(Input::Frame {
                            from: peer.clone(),
                            frame,
                        });
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
                // The connection ended (the peer stopped, died, or moved to a newer one):
                // nothing bad was sent.
                Err(FrameError::Io(e)) => {
                    tracing::debug!(%peer, error = %e, "raft stream from {peer} ended");
                    return;
                }
                Err(e) => e.to_string(),
            };
            tracing::warn!(%peer, error = %why, "bad raft frame from {peer}; closing that raft stream");
            let _ = reader.into_inner().stop(transport::close::BAD_RAFT_FRAME);
            return;
        }
    }
}

impl RaftLinks {
    fn heard(&self, peer: &NodeName, conn: &Connection) {
        let mut heard = self.heard_on.lock().unwrap_or_else(PoisonError::into_inner);
        if heard.get(peer).is_none_or(|c| c.stable_id() != conn.stable_id()) {
            heard.insert(peer.clone(), conn.clone());
        }
    }

    fn heard_on(&self, peer: &NodeName) -> Option<Connection> {
        self.heard_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .cloned()
    }
}
