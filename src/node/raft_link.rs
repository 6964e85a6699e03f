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
use crate::wire::FrameReader;

/// Frames waiting for one peer's stream; more are dropped (Raft resends).
const QUEUE: usize = 256;

/// How long a sender may take to reach a peer before the frames for it are dropped.
const CONNECT: Duration = Duration::from_secs(1);

/// Each peer's queue of outgoing frames, and the task that writes them.
#[derive(Default)]
pub(super) struct RaftLinks {
    queues: Mutex<HashMap<NodeName, mpsc::Sender<Frame>>>,
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

    /// Writes the frames queued for `to` on one stream, reopened when it breaks.
    async fn raft_sender(self: Arc<Self>, to: NodeName, mut queue: mpsc::Receiver<Frame>) {
        let mut stream: Option<SendStream> = None;
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
            if stream.is_none() {
                stream = self.open_raft_stream(&to).await;
            }
            let Some(s) = stream.as_mut() else { continue };
            if let Err(e) = s.write_all(&bytes).await {
                tracing::debug!(%to, error = %e, "raft stream broke; reopening it for the next frame");
                stream = None;
            }
        }
    }

    async fn open_raft_stream(self: &Arc<Self>, to: &NodeName) -> Option<SendStream> {
        let deadline = tokio::time::Instant::now() + CONNECT;
        let opened = tokio::time::timeout_at(deadline, async {
            let peer = self.hop(to, deadline).await.ok()?;
            peer.connection().open_uni().await.ok()
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
                Err(e) => e.to_string(),
            };
            tracing::warn!(%peer, error = %why, "bad raft frame from {peer}; closing that raft stream");
            let _ = reader.into_inner().stop(transport::close::BAD_RAFT_FRAME);
            return;
        }
    }
}
