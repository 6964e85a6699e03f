//! One authenticated connection as the rest of the code sees it: request streams, datagrams,
//! and why it ended. Callers never name quinn; the replicated ranges of later issues send
//! their messages through this type too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use quinn::{ConnectionError, VarInt};

use crate::rpc::Channel;

/// The sending half of a unidirectional stream (a node's raft frames to a peer).
pub type SendStream = quinn::SendStream;
/// The receiving half of a unidirectional stream (a peer's raft frames).
pub type RecvStream = quinn::RecvStream;

/// An established connection (the handshake is done before one is handed out). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection(quinn::Connection);

/// Why a connection (or a stream on it) could not be used: it has ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Ended(ConnectionError);

impl Ended {
    /// Why it ended, in words for an error message (see [`super::ended_because`]).
    pub fn explained(&self) -> String {
        super::ended_because(&self.0)
    }
}

impl Connection {
    pub(super) fn new(conn: quinn::Connection) -> Self {
        Self(conn)
    }

    /// Whether the connection is still open (neither side closed it, nor did it time out).
    pub fn is_alive(&self) -> bool {
        self.0.close_reason().is_none()
    }

    /// Whether the node at the peer's address reset this connection: a process there has
    /// no state for it, as when the peer was killed and restarted on the same address.
    pub fn was_reset(&self) -> bool {
        matches!(self.0.close_reason(), Some(ConnectionError::Reset))
    }

    /// Why the connection ended, in words for an error message; `None` while it is open.
    pub fn ended_because(&self) -> Option<String> {
        self.0.close_reason().map(|e| super::ended_because(&e))
    }

    /// Closes the connection with one of the [`super::close`] codes.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.0.close(code, reason);
    }

    /// The address the other side sends from.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// An id for this connection, unique among this endpoint's connections (tests).
    pub fn stable_id(&self) -> usize {
        self.0.stable_id()
    }

    /// Whether a datagram of `len` bytes may be sent now (the peer takes datagrams, and one
    /// that long fits in a packet).
    pub fn datagram_fits(&self, len: usize) -> bool {
        self.0.max_datagram_size().is_some_and(|max| len <= max)
    }

    /// Sends a datagram (unreliable: it may be lost); false if it could not even be queued.
    pub fn send_datagram(&self, bytes: Bytes) -> bool {
        self.0.send_datagram(bytes).is_ok()
    }

    /// The next datagram the other side sent, or `None` once the connection ended.
    pub async fn read_datagram(&self) -> Option<Bytes> {
        self.0.read_datagram().await.ok()
    }

    /// The frames that carry something: requests, answers, datagrams. Not PINGs (the
    /// keep-alives), ACKs or flow control, which flow on an unused connection too.
    pub fn activity(&self) -> u64 {
        let s = self.0.stats();
        s.frame_tx.stream + s.frame_rx.stream + s.frame_tx.datagram + s.frame_rx.datagram
    }

    /// Opens a raw bidirectional stream (the handshake, and tests on the raw wire).
    pub async fn open_bi(&self) -> Result<(quinn::SendStream, quinn::RecvStream), ConnectionError> {
        self.0.open_bi().await
    }

    /// Opens a request stream: the calling side of it.
    pub async fn open_channel(&self) -> Result<Channel, Ended> {
        let (send, recv) = self.0.open_bi().await.map_err(Ended)?;
        Ok(Channel::spawn(recv, send))
    }

    /// Opens a raw unidirectional stream: the sending side of a peer's raft frames.
    pub async fn open_uni(&self) -> Result<quinn::SendStream, Ended> {
        self.0.open_uni().await.map_err(Ended)
    }

    /// Waits for the other side to open a unidirectional stream (raft frames from a peer).
    pub async fn accept_uni(&self) -> Result<quinn::RecvStream, Ended> {
        self.0.accept_uni().await.map_err(Ended)
    }

    /// Waits for the other side to open a stream, to be served: its reading and writing
    /// halves (quinn's, which the serving loop takes as any async reader and writer).
    pub async fn accept_stream(&self) -> Result<(quinn::SendStream, quinn::RecvStream), Ended> {
        self.0.accept_bi().await.map_err(Ended)
    }
}

/// Request streams on one connection that are opened again when they break (the other side
/// closes idle streams; a stream breaks when its frames go wrong): a client's one stream, a
/// peer connection's few. A request is never resent: only a stream already known to be
/// broken is replaced.
pub struct RequestStreams {
    slots: Vec<Mutex<Option<Arc<Channel>>>>,
    /// Held while a stream is opened, so that callers who find the same slot empty open
    /// one stream between them, not one each.
    opening: tokio::sync::Mutex<()>,
}

impl RequestStreams {
    /// `n` slots, none opened yet.
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1)).map(|_| Mutex::new(None)).collect(),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// How many slots there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never: there is always at least one slot.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The stream in slot `i` (modulo the slots), if it is open and not broken.
    pub fn sound(&self, i: usize) -> Option<Arc<Channel>> {
        let ch = self.slots[i % self.slots.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ch.as_ref().filter(|ch| !ch.is_broken()).cloned()
    }

    /// A slot with no sound stream in it, if any.
    pub fn vacant(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&i| self.sound(i).is_none())
    }

    /// Opens a stream on `conn` into slot `i`, the first time or when the last one broke; or
    /// takes the one another caller opened there meanwhile.
    pub async fn reopen(&self, conn: &Connection, i: usize) -> Result<Arc<Channel>, Ended> {
        let _opening = self.opening.lock().await;
        if let Some(ch) = self.sound(i) {
            return Ok(ch);
        }
        let ch = Arc::new(conn.open_channel().await?);
        *self.slots[i % self.slots.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&ch));
        Ok(ch)
    }
}
