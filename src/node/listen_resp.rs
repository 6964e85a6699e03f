//! The RESP listener (`resp_listen`): Redis clients on TCP (or TLS, `resp_tls`), each
//! command mapped by `crate::resp` and sent through the node's router by a
//! [`FrontSession`], as a QUIC request would be.
//!
//! The only code that touches a RESP socket. Per connection: everything one read brought is
//! parsed and placed, then every answer goes out in one write. Memory stays bounded whatever
//! the client does: a request is limited before its bytes are buffered (`resp::parse`), at
//! most `limits.max_requests_per_stream` operations are in flight, and replies waiting to
//! be written are sent as soon as they pass [`OUT_HIGH`], the node not reading on until the
//! client has taken them (a client that never reads stops being read).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Node;
use super::front::FrontSession;
use super::penalty::Warning;
use crate::config::RespConfig;
use crate::resp::{self, Action, Answer, Finish, Frame, InfoStats, Listing, Session};
use crate::wire::{BucketOp, RemoteError, Reply};

/// Replies waiting to be written past this many bytes are written before anything more is
/// read or placed.
pub const OUT_HIGH: usize = 256 * 1024;
/// How much room each read is given.
const READ_CHUNK: usize = 64 * 1024;

/// What the connections of one listener share.
struct Shared {
    config: RespConfig,
    port: u16,
    started: Instant,
    clients: AtomicUsize,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Binds the RESP socket (a failure is a start error).
pub(super) async fn bind(config: &RespConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Accepts RESP clients until the node stops.
pub(super) async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    config: RespConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let port = listener.local_addr().map_or(config.listen.port(), |a| a.port());
    tracing::info!(addr = %config.listen, port, tls = config.tls, bucket = %String::from_utf8_lossy(&config.bucket), "serving RESP (Redis's protocol)");
    let shared = Arc::new(Shared {
        port,
        started: Instant::now(),
        clients: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        slots: Arc::new(Semaphore::new(node.config.limits.max_connections as usize)),
        tls,
        config,
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = node.serve.stopping.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: the listener goes on once some are back.
                tracing::warn!(error = %e, "could not accept a RESP connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let (node2, shared2) = (Arc::clone(&node), Arc::clone(&shared));
        node.tasks.spawn(async move {
            let Ok(slot) = Arc::clone(&shared2.slots).try_acquire_owned() else {
                let mut socket = socket;
                let _ = socket.write_all(b"-ERR max number of clients reached\r\n").await;
                return;
            };
            match shared2.tls.clone() {
                None => connection(node2, shared2, socket, peer).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(node2.config.timeouts.handshake, acceptor.accept(socket));
                    match handshake.await {
                        Ok(Ok(tls)) => connection(node2, shared2, tls, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "RESP TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "RESP TLS handshake not finished in time"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// One entry of a connection's replies, in request order.
enum Pending {
    Ready(Frame),
    /// Waits for `left` more answers of the front session.
    Ops {
        left: usize,
        answers: Vec<Answer>,
        finish: Finish,
    },
}

/// One client connection, as a state between reads.
struct Conn<'a, S> {
    node: &'a Arc<Node>,
    shared: &'a Shared,
    peer: SocketAddr,
    socket: S,
    session: Session,
    front: FrontSession,
    pending: std::collections::VecDeque<Pending>,
    out: Vec<u8>,
    cap: usize,
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    node: Arc<Node>,
    shared: Arc<Shared>,
    socket: S,
    peer: SocketAddr,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.clients.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn {
        node: &node,
        shared: &shared,
        peer,
        socket,
        session: Session::new(id, shared.config.bucket.clone(), node.keys.in_use().as_bytes()),
        front: node.front_session(),
        pending: Default::default(),
        out: Vec::with_capacity(16 * 1024),
        cap: node.config.limits.max_requests_per_stream.max(1) as usize,
    };
    match conn.run().await {
        Ok(()) => tracing::debug!(%peer, "RESP client left"),
        Err(e) => tracing::debug!(%peer, error = %e, "RESP connection ended"),
    }
    shared.clients.fetch_sub(1, Ordering::Relaxed);
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn run(&mut self) -> std::io::Result<()> {
        let mut input = BytesMut::with_capacity(READ_CHUNK);
        loop {
            input.reserve(READ_CHUNK);
            let read = tokio::select! {
                r = self.socket.read_buf(&mut input) => r?,
                () = self.node.serve.stopping.cancelled() => return Ok(()),
            };
            let mut close = read == 0;
            loop {
                match resp::next_request(&mut input, self.session.is_authenticated()) {
                    Ok(Some(args)) => {
                        if self.act(args).await? {
                            close = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The stream is out of step: say why, then close.
                        tracing::debug!(peer = %self.peer, error = %e, "closing a RESP connection");
                        self.pending.push_back(Pending::Ready(Frame::err(e)));
                        close = true;
                        break;
                    }
                }
            }
            self.settle_all().await;
            self.flush().await?;
            if close {
                let _ = self.socket.shutdown().await;
                return Ok(());
            }
        }
    }

    /// Carries out one request; `true` when the connection is to close after its reply.
    async fn act(&mut self, args: Vec<bytes::Bytes>) -> std::io::Result<bool> {
        match self.session.handle(args) {
            Action::Reply(frame) => self.pending.push_back(Pending::Ready(frame)),
            Action::ReplyAndClose(frame) => {
                self.pending.push_back(Pending::Ready(frame));
                return Ok(true);
            }
            Action::Ops { ops, finish } => {
                self.pending.push_back(Pending::Ops {
                    left: ops.len(),
                    answers: Vec::with_capacity(ops.len()),
                    finish,
                });
                for (bucket, op) in ops {
                    self.make_room().await?;
                    self.front.place(bucket, op).await;
                }
            }
            Action::List { bucket, listing } => {
                self.settle_all().await;
                let frame = self.list(bucket, listing).await;
                self.pending.push_back(Pending::Ready(frame));
            }
            Action::Authenticate { password, then } => {
                let frame = self.authenticate(&password, then);
                self.pending.push_back(Pending::Ready(frame));
            }
            Action::Info { sections } => {
                self.settle_all().await;
                let keys = if resp::command::info_wants(&sections, "keyspace") {
                    let bucket = self.shared.config.bucket.clone();
                    self.keys(bucket).await.ok().map(|k| k.len() as u64)
                } else {
                    None
                };
                let stats = InfoStats {
                    node: self.node.name.to_string(),
                    port: self.shared.port,
                    uptime_secs: self.shared.started.elapsed().as_secs(),
                    clients: self.shared.clients.load(Ordering::Relaxed),
                    keys,
                };
                self.pending
                    .push_back(Pending::Ready(self.session.info(&sections, &stats)));
            }
        }
        if self.out.len() > OUT_HIGH {
            self.flush().await?;
        }
        Ok(false)
    }

    /// Waits until one more operation may be placed: takes answers while at the cap, and
    /// writes the replies they complete once past [`OUT_HIGH`].
    async fn make_room(&mut self) -> std::io::Result<()> {
        while self.front.in_flight() >= self.cap {
            self.take_one().await;
            if self.out.len() > OUT_HIGH {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Takes the oldest answer (waiting for it), then encodes every reply now complete.
    async fn take_one(&mut self) {
        let answer = self.front.next_answer().await;
        self.file(answer);
    }

    /// Files an answer with the oldest reply that waits for one, and encodes the replies
    /// at the front that are complete.
    fn file(&mut self, answer: Option<Answer>) {
        if let Some(answer) = answer
            && let Some(Pending::Ops { left, answers, .. }) = self
                .pending
                .iter_mut()
                .find(|p| matches!(p, Pending::Ops { left, .. } if *left > 0))
        {
            answers.push(answer);
            *left -= 1;
        }
        while let Some(front) = self.pending.front() {
            if matches!(front, Pending::Ops { left, .. } if *left > 0) {
                break;
            }
            let frame = match self.pending.pop_front() {
                Some(Pending::Ready(frame)) => frame,
                Some(Pending::Ops { answers, finish, .. }) => finish.reply(answers),
                None => break,
            };
            resp::encode(&frame, self.session.protocol, &mut self.out);
        }
    }

    /// Waits for every answer placed, encoding the replies in order.
    async fn settle_all(&mut self) {
        self.file(None);
        while self.front.in_flight() > 0 {
            self.take_one().await;
        }
    }

    /// Writes the replies encoded so far, in one write.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            // A client that does not read must not hold a stopping node up.
            tokio::select! {
                written = self.socket.write_all(&self.out) => written?,
                () = self.node.serve.stopping.cancelled() => {
                    return Err(std::io::Error::other("the node is stopping"));
                }
            }
            self.socket.flush().await?;
            self.out.clear();
            if self.out.capacity() > 4 * OUT_HIGH {
                self.out = Vec::with_capacity(16 * 1024);
            }
        }
        Ok(())
    }

    /// Checks a password, within the rate limit of failed authentications per source.
    fn authenticate(&mut self, password: &[u8], then: resp::AfterAuth) -> Frame {
        let now = Instant::now();
        let mut penalties = self.node.penalties.lock().unwrap_or_else(PoisonError::into_inner);
        if !penalties.allow(self.peer, now) {
            return Frame::err("too many wrong passwords from this address; slowed down, try again in a second");
        }
        // Any secret of the keyring, as for a QUIC client: a rotation keeps Redis clients of
        // either secret working while both are installed.
        if self.node.keys.current().accepts_password(password) {
            penalties.succeeded(self.peer);
            drop(penalties);
            return self.session.authenticated(then);
        }
        match penalties.failed(self.peer, now) {
            Some(Warning::First) => {
                tracing::warn!(peer = %self.peer, "a RESP client gave a wrong password (the cluster secret)");
            }
            Some(Warning::Repeated(n)) => {
                tracing::warn!(address = %self.peer.ip(), attempts = n, "more wrong RESP passwords from this address; it is being slowed down");
            }
            None => {}
        }
        resp::command::wrong_password()
    }

    /// The reply to `HLEN`, `HKEYS` or `HGETALL` (nothing else in flight).
    async fn list(&mut self, bucket: Vec<u8>, listing: Listing) -> Frame {
        let keys = match self.keys(bucket.clone()).await {
            Ok(keys) => keys,
            Err(e) => return resp::reply::failure(&e),
        };
        let mut values = Vec::new();
        if listing == Listing::All {
            for key in &keys {
                if self.front.in_flight() >= self.cap
                    && let Some(answer) = self.front.next_answer().await
                {
                    values.push(answer);
                }
                self.front
                    .place(bucket.clone(), BucketOp::Get { key: key.clone() })
                    .await;
            }
            while let Some(answer) = self.front.next_answer().await {
                values.push(answer);
            }
        }
        listing.reply(keys, values)
    }

    /// All of a bucket's keys, page by page (none for a bucket that does not exist).
    async fn keys(&mut self, bucket: Vec<u8>) -> Result<Vec<Vec<u8>>, RemoteError> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let after = keys.last().map(|k| serde_bytes::ByteBuf::from(k.clone()));
            self.front.place(bucket.clone(), BucketOp::Keys { after }).await;
            match self.front.next_answer().await {
                Some(Ok(Reply::Keys { keys: page, more })) => {
                    keys.extend(page.into_iter().map(|k| k.into_vec()));
                    if !more {
                        return Ok(keys);
                    }
                }
                Some(Err(RemoteError::BucketNotFound { .. })) => return Ok(keys),
                Some(Err(e)) => return Err(e),
                Some(Ok(other)) => {
                    return Err(RemoteError::Internal {
                        node: self.node.name.to_string(),
                        reason: format!("a listing was answered with {other:?}"),
                    });
                }
                None => return Ok(keys),
            }
        }
    }
}
