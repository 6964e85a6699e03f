//! The front session: one client connection of a local listener (the text protocol, RESP)
//! as the node sees it. Its bucket requests are routed exactly as QUIC ones are, by
//! `Node::bucket_now` (there is no second routing path), take effect in the order they were
//! placed, and are answered in that order.
//!
//! Knows no socket and no protocol: a listener parses a command, [`FrontSession::place`]s
//! its bucket request, and writes the answers [`FrontSession::next_answer`] gives back.
//! It keeps the same contract as the QUIC serving loop (`rpc::serve`): a [`Now::Waiting`]
//! future is polled once at once, before the next request is placed (its first poll queues
//! a durable write); a [`Now::First`] future is awaited before the next request is taken in;
//! and a panic while routing, placing or answering becomes an internal-error answer while
//! the session goes on.
//!
//! One more promise than a QUIC stream's: reads and writes take effect in the order placed
//! too, not only writes among themselves. A durable read does not wait for the store's
//! writer (SPEC §7: reads never do), so a GET pipelined right behind a PUT could be read
//! before the PUT's batch is committed, and one right before a DELETE could be read after it.
//! So a read is placed only once the session's earlier writes are answered, and a write once
//! its earlier reads are. Pipelines of writes alone, or of reads alone, are not held up.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use super::Node;
use crate::rpc::{self, Class, Now, StreamKey};
use crate::wire::{BucketOp, BucketRequest, RemoteError, Reply};

type Answer = Result<Reply, RemoteError>;

/// One client connection of a local listener (text protocol, RESP): its bucket requests are
/// routed exactly as QUIC ones are (`Node::bucket_now`), take effect in the order they were
/// placed, and are answered in that order.
pub struct FrontSession {
    node: Arc<Node>,
    /// Keeps this connection's requests in order through any number of hops, as a QUIC
    /// stream's key does; drawn from the same counter, so the two never collide.
    stream: StreamKey,
    /// Each request's deadline (the node's `timeouts.request`).
    timeout: Duration,
    /// The answers of the requests placed and not yet taken, oldest first; `None` while
    /// one is still to come. The oldest is request number `taken`.
    answers: VecDeque<Option<Answer>>,
    taken: u64,
    /// The futures of the answers still to come, tagged with their request's number; all
    /// of them are polled together, so one that must be polled to make progress (a route
    /// query sent on) is not held up behind an older one.
    coming: FuturesUnordered<Tagged>,
    /// The numbers of the writes, and of the reads, placed whose answers are still to come.
    writes_coming: HashSet<u64>,
    reads_coming: HashSet<u64>,
}

impl Node {
    /// A session for one client connection of a local listener.
    pub fn front_session(self: &Arc<Self>) -> FrontSession {
        FrontSession {
            node: Arc::clone(self),
            stream: rpc::new_stream_key(),
            timeout: self.config.timeouts.request,
            answers: VecDeque::new(),
            taken: 0,
            coming: FuturesUnordered::new(),
            writes_coming: HashSet::new(),
            reads_coming: HashSet::new(),
        }
    }
}

impl FrontSession {
    /// Routes and places one request (waits only while it cannot be placed yet: Now::First).
    ///
    /// Answers of earlier requests that come meanwhile are kept for [`Self::next_answer`].
    pub async fn place(&mut self, bucket: Vec<u8>, op: BucketOp) {
        // A read waits for the session's earlier writes and a write for its earlier reads,
        // as on a QUIC stream (`rpc::Class`).
        let class = Class::of_op(&op);
        match class {
            Some(Class::Write) => self.answered(|s| s.reads_coming.is_empty()).await,
            Some(Class::Read) => self.answered(|s| s.writes_coming.is_empty()).await,
            None => {}
        }
        let number = self.taken + self.answers.len() as u64;
        self.answers.push_back(None);
        let kind = op.kind();
        let req = BucketRequest {
            bucket,
            op,
            path: Vec::new(),
        };
        let (node, timeout, stream) = (&self.node, self.timeout, self.stream);
        let mut now = match std::panic::catch_unwind(AssertUnwindSafe(|| node.bucket_now(req, timeout, stream))) {
            Ok(now) => now,
            Err(panic) => Now::Answer(Err(self.caught(kind, &*panic))),
        };
        loop {
            match now {
                Now::Answer(answer) => return self.settle(number, answer),
                Now::Waiting(answer) => {
                    let mut tagged = Tagged {
                        number,
                        kind,
                        node: self.node.name.to_string(),
                        answer,
                    };
                    // Polled once now, before the next request is placed: a durable write
                    // is queued in the order the requests came.
                    match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut tagged).poll(cx))).await {
                        Poll::Ready((number, answer)) => self.settle(number, answer),
                        Poll::Pending => {
                            match class {
                                Some(Class::Write) => self.writes_coming.insert(number),
                                Some(Class::Read) => self.reads_coming.insert(number),
                                None => false,
                            };
                            self.coming.push(tagged);
                        }
                    }
                    return;
                }
                Now::First(first) => now = self.placed(kind, first).await,
                // `bucket_now` never gives a request back to be run later.
                Now::Later(_) => {
                    let answer = Err(RemoteError::Internal {
                        node: self.node.name.to_string(),
                        reason: format!("the {kind} request could not be placed"),
                    });
                    return self.settle(number, answer);
                }
            }
        }
    }

    /// The answer to the oldest placed request not yet taken; None when nothing is in flight.
    ///
    /// Cancel-safe: dropped before it is ready, it loses nothing (a listener may wait for it
    /// and for its socket at once).
    pub async fn next_answer(&mut self) -> Option<Result<Reply, RemoteError>> {
        loop {
            match self.answers.front() {
                None => return None,
                Some(Some(_)) => return self.take(),
                Some(None) => match self.coming.next().await {
                    Some((number, answer)) => self.settle(number, answer),
                    // Cannot be: an answer still to come has its future here.
                    None => return self.lost(),
                },
            }
        }
    }

    /// The answer to the oldest one, if it is ready now (for batching answers into one write).
    pub fn ready_answer(&mut self) -> Option<Result<Reply, RemoteError>> {
        if matches!(self.answers.front(), Some(None)) {
            // Whatever has come since it was last looked at: each future is polled only if
            // it was woken.
            while let Some(Some((number, answer))) = self.coming.next().now_or_never() {
                self.settle(number, answer);
            }
        }
        match self.answers.front() {
            Some(Some(_)) => self.take(),
            _ => None,
        }
    }

    /// Requests placed whose answers are not yet taken.
    pub fn in_flight(&self) -> usize {
        self.answers.len()
    }

    /// Awaits a request being placed (under the panic guard), while the answers of earlier
    /// ones go on coming in.
    async fn placed(&mut self, kind: &'static str, first: Pin<Box<dyn Future<Output = Now> + Send>>) -> Now {
        let mut first = std::panic::AssertUnwindSafe(first).catch_unwind();
        loop {
            tokio::select! {
                biased;
                placed = &mut first => {
                    return placed.unwrap_or_else(|panic| Now::Answer(Err(self.caught(kind, &*panic))));
                }
                Some((number, answer)) = self.coming.next(), if !self.coming.is_empty() => {
                    self.settle(number, answer);
                }
            }
        }
    }

    /// Waits until `done` holds, taking in answers meanwhile (they are kept).
    async fn answered(&mut self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            match self.coming.next().await {
                Some((number, answer)) => self.settle(number, answer),
                None => {
                    // Cannot be: each answer still to come has its future.
                    self.writes_coming.clear();
                    self.reads_coming.clear();
                }
            }
        }
    }

    /// Keeps the answer to request `number` until it is taken.
    fn settle(&mut self, number: u64, answer: Answer) {
        self.writes_coming.remove(&number);
        self.reads_coming.remove(&number);
        if let Some(slot) = number
            .checked_sub(self.taken)
            .and_then(|at| self.answers.get_mut(at as usize))
        {
            *slot = Some(answer);
        }
    }

    fn take(&mut self) -> Option<Answer> {
        let answer = self.answers.pop_front().flatten();
        self.taken += 1;
        answer
    }

    /// An answer that has no future to come from: said, rather than waited for forever.
    fn lost(&mut self) -> Option<Answer> {
        self.answers.pop_front();
        self.taken += 1;
        Some(Err(RemoteError::Internal {
            node: self.node.name.to_string(),
            reason: "an answer was lost".into(),
        }))
    }

    fn caught(&self, kind: &str, panic: &(dyn std::any::Any + Send)) -> RemoteError {
        caught(self.node.name.as_str(), kind, panic)
    }
}

/// The internal-error answer to a `kind` request that panicked on `node`, logged.
fn caught(node: &str, kind: &str, panic: &(dyn std::any::Any + Send)) -> RemoteError {
    let reason = crate::supervisor::panic_text(panic);
    tracing::error!(request = kind, %reason, "request panicked; the node goes on");
    RemoteError::Internal {
        node: node.to_string(),
        reason: format!("the {kind} request failed: {reason}"),
    }
}

/// The future of one request's answer, with the request's number, polled under a panic
/// guard: a panic is its internal-error answer.
struct Tagged {
    number: u64,
    kind: &'static str,
    node: String,
    answer: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

impl Future for Tagged {
    type Output = (u64, Answer);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let number = self.number;
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.answer.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(answer)) => Poll::Ready((number, answer)),
            Err(panic) => Poll::Ready((number, Err(caught(&self.node, self.kind, &*panic)))),
        }
    }
}
