//! The text listener: the guide's `kv_server` on a loopback TCP port (`--text-listen`).
//! The only code that touches its sockets; the protocol is [`crate::text_protocol`], and
//! every command goes through a [`FrontSession`] (so through `Node::bucket_now`, routed
//! exactly as a QUIC request is).
//!
//! Lines are answered in the order they came, pipelined or not; every answer ready after a
//! read goes out in one write. A connection keeps at most `limits.max_requests_per_stream`
//! commands in flight: at the cap it is not read on, so a client that never reads its
//! answers cannot make the node buffer without limit.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{FrontSession, Node};
use crate::text_protocol::{self, Kind, Lines, MAX_LINE, UNKNOWN_COMMAND};
use crate::wire::{RemoteError, Reply};

/// Answers gathered beyond this many bytes are written before more are gathered: a burst
/// of large GETs must not pile all its values up in memory.
const MAX_WRITE: usize = 256 * 1024;

/// How long a connection closed for an over-long line is drained before it is dropped, so
/// that the error line reaches the client rather than being lost to a reset.
const LINGER: Duration = Duration::from_secs(2);

/// What the next answer on a connection is.
enum Expect {
    /// The session's next answer, to a command of this kind.
    Answer(Kind),
    /// An answer known when the line was read (`UNKNOWN COMMAND`, a line too long).
    Said(Vec<u8>),
}

/// Binds the text listener; a failure is a start error.
pub(super) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until the node stops taking requests, each served on its own task
/// (tracked by the node's tasks, so a stopping node waits for their answers).
pub(super) async fn serve(node: Arc<Node>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(node.config.limits.max_connections as usize));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = node.serve.stopping.cancelled() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    tracing::warn!(%peer, limit = node.config.limits.max_connections, "refused a text connection: too many open");
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let node_ = Arc::clone(&node);
                node.tasks.spawn(async move {
                    connection(node_, socket, peer).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors, say: the listener goes on once some are free.
                tracing::warn!(error = %e, "the text listener could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one text connection until the client closes it, a line is too long, or the node
/// stops; the commands already read are answered first in every case.
async fn connection(node: Arc<Node>, mut socket: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, "text connection");
    let cap = node.config.limits.max_requests_per_stream as usize;
    let mut session = node.front_session();
    let mut expect: VecDeque<Expect> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(4096);
    let mut lines = Lines::new(MAX_LINE);
    let mut out = Vec::with_capacity(4096);
    // No more reading: the client closed its side, a line was too long, or the node stops.
    let mut ended = false;
    let mut too_long = false;
    loop {
        // Every whole line already read, up to the cap on commands in flight.
        let mut lines_left = false;
        while !ended {
            if expect.len() >= cap {
                lines_left = true; // perhaps: looked at once answers make room
                break;
            }
            match lines.next_line(&mut buf) {
                Ok(Some(line)) => match text_protocol::parse(&line) {
                    Ok(command) => {
                        let (bucket, op, kind) = command.into_request();
                        session.place(bucket, op).await;
                        expect.push_back(Expect::Answer(kind));
                    }
                    Err(_) => expect.push_back(Expect::Said(UNKNOWN_COMMAND.to_vec())),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, "closing a text connection: {e}");
                    expect.push_back(Expect::Said(e.answer()));
                    (ended, too_long) = (true, true);
                    buf = BytesMut::new();
                }
            }
        }
        // Every answer ready now, in one write (or a few, for large values).
        while gather_ready(&mut expect, &mut session, &mut out) {
            if write(&mut socket, &mut out).await.is_err() {
                return;
            }
        }
        if write(&mut socket, &mut out).await.is_err() {
            return;
        }
        if ended && expect.is_empty() {
            break;
        }
        if lines_left && expect.len() < cap {
            continue; // answers made room for lines already read
        }
        let reading = !ended && expect.len() < cap;
        if !reading {
            // Only an answer still to come can move this connection on.
            if let Some(answer) = session.next_answer().await {
                take_answer(&mut expect, answer, &mut out);
            }
            continue;
        }
        buf.reserve(64 * 1024);
        tokio::select! {
            read = socket.read_buf(&mut buf) => match read {
                // A half-written line at the end is dropped: the guide's server would never
                // have seen its end either.
                Ok(0) => ended = true,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "text connection failed");
                    return;
                }
            },
            Some(answer) = session.next_answer(), if session.in_flight() > 0 => {
                take_answer(&mut expect, answer, &mut out);
            }
            () = node.serve.stopping.cancelled() => ended = true,
        }
    }
    if too_long {
        linger(socket).await;
    }
}

/// Encodes the session's answer into `out` as the front command's.
fn take_answer(expect: &mut VecDeque<Expect>, answer: Result<Reply, RemoteError>, out: &mut Vec<u8>) {
    match expect.pop_front() {
        Some(Expect::Answer(kind)) => text_protocol::encode_answer(kind, answer, out),
        // Cannot be: said answers are taken before the session's next one is awaited.
        other => {
            tracing::error!("text connection: an answer came out of order");
            if let Some(Expect::Said(said)) = other {
                out.extend_from_slice(&said);
            }
        }
    }
}

/// Moves every answer ready now, in order, into `out`; true if it stopped because `out` is
/// full (write it, then gather again).
fn gather_ready(expect: &mut VecDeque<Expect>, session: &mut FrontSession, out: &mut Vec<u8>) -> bool {
    while out.len() < MAX_WRITE {
        match expect.front() {
            None => return false,
            Some(Expect::Said(_)) => {
                if let Some(Expect::Said(said)) = expect.pop_front() {
                    out.extend_from_slice(&said);
                }
            }
            Some(Expect::Answer(_)) => match session.ready_answer() {
                Some(answer) => take_answer(expect, answer, out),
                None => return false,
            },
        }
    }
    true
}

async fn write(socket: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    socket.write_all(out).await?;
    out.clear();
    if out.capacity() > 2 * MAX_WRITE {
        *out = Vec::with_capacity(4096);
    }
    Ok(())
}

/// Ends a connection whose client may still be sending (the rest of an over-long line):
/// closed at once with unread bytes, the socket would be reset, and the client could lose
/// the error line sent last. So: end our side, and read what comes, for a bounded time.
async fn linger(mut socket: TcpStream) {
    let _ = socket.shutdown().await;
    let mut sink = vec![0; 64 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
