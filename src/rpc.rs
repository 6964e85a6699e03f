//! Requests and responses multiplexed over one byte stream, many in flight at once.
//!
//! Generic over tokio's `AsyncRead`/`AsyncWrite` (a QUIC stream in production, an in-memory
//! pipe in tests); knows nothing of routing or storage. Frames carry ids, so responses may come
//! back in any order, and each side batches whatever is queued into one write.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire::{
    self, FrameBudget, FrameError, FrameReader, MAX_FRAME, RemoteError, Reply, Request, RequestFrame, ResponseFrame,
};
use crate::woken::OnlyWhenWoken;

/// What [`Handler::answer_now`] made of a request.
pub enum Now {
    /// The answer, given at once.
    Answer(Answer),
    /// The answer to come; the future must end by the request's deadline by itself.
    Waiting(Pin<Box<dyn Future<Output = Answer> + Send>>),
    /// The request, to be run by [`Handler::handle`] under its deadline. It is polled once
    /// at once, before the stream's next request is taken in: what it does before its first
    /// wait (a durable write queued for the store) happens in the order the requests came.
    Later(Request),
    /// A request that must be placed (queued toward the next node) before any later request
    /// of its stream is taken in, and cannot be yet (no stream open to that node, or its
    /// outbox full): the stream is not read on until this future, which must end by the
    /// request's deadline by itself, gives back the answer or the future of it.
    First(Pin<Box<dyn Future<Output = Now> + Send>>),
}

/// A request being placed ([`Now::First`]): its frame id, its kind, and the future that places it.
type Placing = (u64, &'static str, Pin<Box<dyn Future<Output = Now> + Send>>);

/// Identifies one served stream, for the lifetime of the node: a handler keeps the requests
/// of one stream together (in order, on one stream to the next node).
pub type StreamKey = u64;

static NEXT_STREAM: AtomicU64 = AtomicU64::new(0);

/// A request being answered on its stream's task: its frame id, its kind (for the log),
/// and the future of its answer, polled under a panic guard.
struct InFlight {
    id: u64,
    kind: &'static str,
    answer: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

impl Future for InFlight {
    /// The frame id, and the answer or what the panic said.
    type Output = (u64, Result<Answer, String>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let id = self.id;
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.answer.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(answer)) => std::task::Poll::Ready((id, Ok(answer))),
            Err(panic) => {
                let reason = caught(self.kind, &*panic, "request task panicked; the node goes on");
                std::task::Poll::Ready((id, Err(reason)))
            }
        }
    }
}

/// How many bytes of queued frames one write may carry.
const MAX_BATCH: usize = 256 * 1024;

/// How many bytes of requests may wait in a stream's outbox for the stream to take them
/// (toward a stalled peer, say); further callers wait for room, within their deadline. A
/// request larger than this is taken when the outbox is empty.
pub const MAX_OUTBOX: usize = 1024 * 1024;

/// How many times a stream's writer yields, while its batch grows, before it writes.
const MAX_GATHER_YIELDS: usize = 4;

/// How long a stream's last answers may wait for the peer's acknowledgement once the node is
/// stopping: ample for a live peer, short for a dead one.
const STOPPING_DELIVERY_WAIT: Duration = Duration::from_millis(500);

type Answer = Result<Reply, RemoteError>;

/// Why a call got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The stream broke or the node went away before answering.
    #[error("connection lost: {0}")]
    Broken(String),
    /// The deadline passed first.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request is too large to send.
    #[error("{0}")]
    TooLarge(String),
    /// The outbox is full ([`MAX_OUTBOX`]): [`Channel::start_within`] waits for room.
    #[error("too many requests are waiting to be sent")]
    Full,
}

/// A call waiting for its answer.
struct Waiter {
    answer: oneshot::Sender<Result<Answer, CallError>>,
    deadline: Instant,
    timeout: Duration,
}

/// A request in the outbox: its id, its deadline, and how long its encoding is.
struct Queued {
    id: u64,
    deadline: Instant,
    len: usize,
}

/// Everything the callers, the reader, the writer and the sweeper share, under one lock.
#[derive(Default)]
struct State {
    waiting: HashMap<u64, Waiter>,
    /// Encoded requests (without id or timeout) not yet handed to the stream, in order; the
    /// writer frames them, with what is left of each one's deadline, as it takes them.
    outbox: Vec<u8>,
    queued: VecDeque<Queued>,
    broken: Option<String>,
    /// The channel was dropped: the writer ends the stream, the sweeper stops.
    closed: bool,
    /// When the sweeper will next look for expired calls (none: it waits for a call).
    next_sweep: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Set once `state.broken` is, for a check without the lock.
    broken: AtomicBool,
    wake_writer: Notify,
    wake_sweeper: Notify,
    /// Signalled when the outbox has room again.
    room: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The calling side of one stream. Cheap to share: calls from many tasks interleave.
///
/// A call costs no allocation of its own beyond its answer slot: it encodes its frame into
/// the shared outbox, which the writer task hands to the stream whole (so the requests of many
/// callers leave in one write), and no timer: one sweeper task per stream fails the calls
/// whose deadline passed.
pub struct Channel {
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Channel {
    /// Starts the reader, writer and sweeper tasks for a fresh stream.
    pub fn spawn<R, W>(reader: R, writer: W) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        tokio::spawn(write_requests(writer, Arc::clone(&shared)));
        tokio::spawn(read_responses(reader, Arc::clone(&shared)));
        tokio::spawn(sweep_expired(Arc::clone(&shared)));
        Self {
            shared,
            next_id: AtomicU64::new(1),
        }
    }

    /// Whether the stream is known to be broken (the caller should open another).
    pub fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::Acquire)
    }

    /// Sends `request` and waits for its answer until `timeout`.
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Answer, CallError> {
        self.start_within(request, Instant::now() + timeout).await?.await
    }

    /// Queues `request` for sending once the outbox has room, waiting for it until
    /// `deadline`, and gives back the future of its answer.
    pub async fn start_within(&self, request: &Request, deadline: Instant) -> Result<PendingCall, CallError> {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.start(request, deadline.saturating_duration_since(Instant::now())) {
                Err(CallError::Full) => {}
                started => return started,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(CallError::Timeout(deadline.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Queues `request` for sending, now, and gives back the future of its answer, which
    /// borrows nothing: a forwarding node carries only this small future across the wait,
    /// not the request. [`CallError::Full`] when the outbox has no room for it.
    pub fn start(&self, request: &Request, timeout: Duration) -> Result<PendingCall, CallError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut st = self.shared.lock();
        if let Some(why) = &st.broken {
            return Err(CallError::Broken(why.clone()));
        }
        let was_empty = st.queued.is_empty();
        if !was_empty && st.outbox.len() >= MAX_OUTBOX {
            return Err(CallError::Full);
        }
        let len = wire::encode_request_body(request, &mut st.outbox).map_err(|e| CallError::TooLarge(e.to_string()))?;
        if !was_empty && st.outbox.len() > MAX_OUTBOX {
            let keep = st.outbox.len() - len;
            st.outbox.truncate(keep);
            return Err(CallError::Full);
        }
        st.queued.push_back(Queued { id, deadline, len });
        st.waiting.insert(
            id,
            Waiter {
                answer: tx,
                deadline,
                timeout,
            },
        );
        if was_empty {
            self.shared.wake_writer.notify_one();
        }
        if st.next_sweep.is_none_or(|t| deadline < t) {
            st.next_sweep = Some(deadline);
            self.shared.wake_sweeper.notify_one();
        }
        Ok(PendingCall {
            answer: rx,
            shared: Arc::clone(&self.shared),
            id: Some(id),
        })
    }
}

/// The answer to a call under way. Dropping it forgets the call.
pub struct PendingCall {
    answer: oneshot::Receiver<Result<Answer, CallError>>,
    shared: Arc<Shared>,
    /// The call's id until its answer came (whoever answered removed it from the table).
    id: Option<u64>,
}

impl Future for PendingCall {
    type Output = Result<Answer, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let got = std::task::ready!(Pin::new(&mut self.answer).poll(cx));
        self.id = None;
        std::task::Poll::Ready(match got {
            Ok(answer) => answer,
            Err(_) => Err(CallError::Broken(
                self.shared
                    .lock()
                    .broken
                    .clone()
                    .unwrap_or_else(|| "stream closed".into()),
            )),
        })
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.lock().waiting.remove(&id);
        }
    }
}

/// A timeout as a frame carries it: whole milliseconds, rounded up, at least 1 (0 on the wire
/// means "none given": the receiver would use its default, however little time is left).
fn wire_timeout(timeout: Duration) -> u32 {
    timeout.as_nanos().div_ceil(1_000_000).clamp(1, u32::MAX.into()) as u32
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_writer.notify_one();
        self.shared.wake_sweeper.notify_one();
    }
}

fn break_all(shared: &Shared, why: String) {
    let mut st = shared.lock();
    st.broken.get_or_insert(why);
    shared.broken.store(true, Ordering::Release);
    st.outbox.clear();
    st.queued.clear();
    st.waiting.clear(); // dropping the senders wakes every caller with the reason
    shared.room.notify_waiters(); // whoever waits for room hears the stream broke
}

/// Takes requests from the front of the outbox into `batch`, framed with what is left of
/// each one's deadline, up to [`MAX_BATCH`] bytes (at least one request); leaves out those
/// whose caller gave up or whose deadline passed. Gives back whether the channel is done.
fn take_batch(shared: &Shared, batch: &mut Vec<u8>) -> bool {
    let mut st = shared.lock();
    let now = Instant::now();
    let mut taken = 0;
    while let Some(q) = st.queued.front() {
        if !batch.is_empty() && batch.len() + q.len > MAX_BATCH {
            break;
        }
        let q = st.queued.pop_front().expect("looked at");
        if q.deadline > now && st.waiting.contains_key(&q.id) {
            let left = q.deadline - now;
            wire::encode_request_frame(q.id, wire_timeout(left), &st.outbox[taken..taken + q.len], batch);
        }
        taken += q.len;
    }
    if taken > 0 {
        st.outbox.drain(..taken);
        shared.room.notify_waiters();
    }
    st.queued.is_empty() && (st.closed || st.broken.is_some())
}

/// Drops from the outbox the requests whose caller is no longer waiting (its deadline
/// passed, or it gave up), so that they neither hold room nor leave later.
fn purge_outbox(shared: &Shared, st: &mut State) {
    if st.queued.iter().all(|q| st.waiting.contains_key(&q.id)) {
        return;
    }
    let (mut outbox, mut at) = (Vec::with_capacity(st.outbox.len()), 0);
    let waiting = &st.waiting;
    let old = std::mem::take(&mut st.outbox);
    st.queued.retain(|q| {
        let keep = waiting.contains_key(&q.id);
        if keep {
            outbox.extend_from_slice(&old[at..at + q.len]);
        }
        at += q.len;
        keep
    });
    st.outbox = outbox;
    shared.room.notify_waiters();
}

async fn write_requests<W: AsyncWrite + Unpin>(mut writer: W, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(16 * 1024);
    loop {
        shared.wake_writer.notified().await;
        // Let the tasks that are ready run first: requests that callers queue meanwhile (a
        // forwarding node's many client streams) then leave in this one write, and so in as
        // few packets as the stream allows. Yield again while the batch grows: on several
        // workers, callers on the other ones may still be queueing after the first yield.
        let mut queued = shared.lock().outbox.len();
        for _ in 0..MAX_GATHER_YIELDS {
            tokio::task::yield_now().await;
            let now = shared.lock().outbox.len();
            if now == queued || now >= MAX_BATCH {
                break;
            }
            queued = now;
        }
        // A batch at a time, each request's budget stamped as it is taken: what waits
        // behind a slow write keeps counting down, and is left out once its caller is gone.
        loop {
            let done = take_batch(&shared, &mut batch);
            if batch.is_empty() {
                if done {
                    let _ = writer.shutdown().await;
                    return;
                }
                break;
            }
            if let Err(e) = writer.write_all(&batch).await {
                break_all(&shared, e.to_string());
                return;
            }
            batch.clear();
            // Give back a buffer that grew large during a burst.
            if batch.capacity() > 2 * MAX_BATCH {
                batch = Vec::with_capacity(16 * 1024);
            }
        }
    }
}

/// Fails the calls whose deadline passed, sleeping until the earliest one.
async fn sweep_expired(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut st = shared.lock();
            let now = Instant::now();
            let expired: Vec<u64> = st
                .waiting
                .iter()
                .filter(|(_, w)| w.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            let any_expired = !expired.is_empty();
            for id in expired {
                if let Some(w) = st.waiting.remove(&id) {
                    let _ = w.answer.send(Err(CallError::Timeout(w.timeout)));
                }
            }
            if any_expired {
                purge_outbox(&shared, &mut st);
            }
            if st.closed && st.waiting.is_empty() {
                return;
            }
            st.next_sweep = st.waiting.values().map(|w| w.deadline).min();
            st.next_sweep
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.wake_sweeper.notified() => {}
                }
            }
            None => shared.wake_sweeper.notified().await,
        }
    }
}

async fn read_responses<R: AsyncRead + Unpin>(reader: R, shared: Arc<Shared>) {
    let mut reader = FrameReader::new(reader, MAX_FRAME);
    let why = loop {
        match reader.next::<ResponseFrame>().await {
            Ok(Some(ResponseFrame { id: 0, result: Err(e) })) => break format!("the node reset the stream: {e}"),
            Ok(Some(frame)) => {
                let waiter = shared.lock().waiting.remove(&frame.id);
                if let Some(w) = waiter {
                    let _ = w.answer.send(Ok(frame.result));
                }
            }
            Ok(None) => break "the node closed the stream".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    break_all(&shared, why);
}

/// The writing half of a stream that can say when everything written has been delivered.
///
/// A node that stops must not close its connections while answers still sit in send buffers
/// (a QUIC close discards them); serving a stream ends only once its answers are delivered.
pub trait FinishStream: AsyncWrite + Unpin + Send + 'static {
    /// Ends the stream and waits until the peer has received all of it.
    fn finish_delivered(self) -> impl Future<Output = ()> + Send;
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> FinishStream for tokio::io::WriteHalf<T> {
    async fn finish_delivered(mut self) {
        let _ = self.shutdown().await;
    }
}

/// What serves requests: the node, or a stand-in in tests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; the caller bounds it with `deadline`.
    fn handle(self: Arc<Self>, request: Request, deadline: Instant) -> impl Future<Output = Answer> + Send;

    /// Answers `request` at once when that needs no waiting (a local read, an in-memory
    /// write); or starts it and gives back the future of its answer (a forwarded request);
    /// or gives it back, to be run by [`Handler::handle`] under a deadline. It runs on the
    /// stream's reading task, under a panic guard, so it must never block.
    ///
    /// A [`Now::Waiting`] future must finish within `timeout` by itself: nothing else
    /// bounds it, and the stream's in-flight slot, and a stopping node, wait for it.
    ///
    /// `stream` names the stream the request came on: requests of one stream must take
    /// effect in the order they came, through any number of hops.
    fn answer_now(self: &Arc<Self>, request: Request, _timeout: Duration, _stream: StreamKey) -> Now {
        Now::Later(request)
    }

    /// This node's name, for errors raised around the handler (deadline, panic).
    fn node_name(&self) -> &str;
}

/// Per-stream serving limits, and the node's signal to stop taking requests.
#[derive(Clone)]
pub struct ServeContext {
    /// Requests in flight per stream, beyond which the stream is not read until one finishes.
    pub max_in_flight: usize,
    /// The deadline of a request that arrives without one, and of a new stream's first frame.
    pub default_timeout: Duration,
    /// How long an open stream may stay silent between frames before it is closed.
    pub idle_timeout: Duration,
    /// Cancelled when the node stops taking new requests.
    pub stopping: CancellationToken,
    /// What frames still being received may hold: the node's, or (once the node serves a
    /// connection) that connection's share of it.
    pub frames: FrameBudget,
}

/// Serves one stream: reads request frames, answers those that need no waiting at once and
/// runs the others concurrently, as futures of this task, each with its deadline (kept by
/// the future itself when [`Handler::answer_now`] started it, else by a timer here; a panic,
/// on any path, becomes an internal-error answer), and writes the answers back in batches.
///
/// Answers given at once collect in one buffer, handed to the writer when no further request
/// is already buffered or once it passes [`MAX_BATCH`]: a pipelined burst is answered with
/// few writes and no allocation per request, and with bounded memory however large its answers.
pub async fn serve<R, W, H>(reader: R, mut writer: W, handler: Arc<H>, ctx: ServeContext)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: FinishStream,
    H: Handler,
{
    // Requests that wait (a hop, a durable write, a chat) run as futures of this same task,
    // each under its deadline: their answers reach the socket without a hop through another
    // task, and no task is spawned per request.
    // (Boxed: the node's handler can start serving a peer's streams, so an unboxed type here
    // would contain itself.)
    let mut pending: FuturesUnordered<InFlight> = FuturesUnordered::new();
    // A panic inside a waiting request, as the answer to send.
    let node = || handler.node_name().to_string();
    let settle = |answer: Result<Answer, String>| {
        answer.unwrap_or_else(|reason| Err(RemoteError::Internal { node: node(), reason }))
    };
    // Woken for an answer, the task does not poll the stream, which has nothing new (a
    // QUIC read locks the connection), nor the node's stop signal (a shared lock).
    let mut reader = FrameReader::new(OnlyWhenWoken::new(reader), MAX_FRAME).with_budget(ctx.frames.clone());
    // A stream that opens and sends nothing, or dribbles a frame, is cut off at its deadline:
    // the first frame must come within the request deadline, later ones within the idle timeout.
    // The timer is re-armed only when it fires early, not at every frame.
    let mut quiet_until = Instant::now() + ctx.default_timeout;
    let quiet = tokio::time::sleep_until(quiet_until);
    tokio::pin!(quiet);
    let mut stopping = OnlyWhenWoken::new(Box::pin(ctx.stopping.clone().cancelled_owned()));
    let mut answered = Vec::with_capacity(16 * 1024);
    let mut peer_gone = false;
    let stream = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    // A request being placed ([`Now::First`]): the stream is not read until it is.
    let mut placing: Option<Placing> = None;
    loop {
        // Write what is answered once no further request is buffered, when no further
        // request may be taken in until one in flight finishes, or once the answers pass
        // the batch bound: a pipelined burst of large reads must not pile its answers up
        // (the write waits for the peer's flow control, which bounds what is buffered).
        let at_limit = pending.len() >= ctx.max_in_flight;
        if !answered.is_empty() && (!reader.has_buffered_frame() || at_limit || answered.len() >= MAX_BATCH) {
            if writer.write_all(&answered).await.is_err() {
                peer_gone = true; // requests taken in still finish, below
                break;
            }
            answered.clear();
            // Give back a buffer that grew for large answers: a stream at rest keeps little.
            if answered.capacity() > 2 * MAX_BATCH {
                answered = Vec::with_capacity(16 * 1024);
            }
        }
        let next = tokio::select! {
            // At the in-flight limit the stream is not read until a request finishes.
            next = reader.next_frame(), if !at_limit && placing.is_none() => next,
            (id, kind, now) = place(&mut placing, handler.node_name()), if placing.is_some() => {
                placing = None;
                if let Some(waiting) = take_now(id, kind, now, &mut answered, &mut placing, &node) {
                    pending.push(waiting);
                }
                continue;
            }
            Some((id, answer)) = pending.next(), if !pending.is_empty() => {
                encode_answer(id, settle(answer), &mut answered);
                while answered.len() < MAX_BATCH {
                    match pending.next().now_or_never() {
                        Some(Some((id, answer))) => encode_answer(id, settle(answer), &mut answered),
                        _ => break,
                    }
                }
                continue;
            }
            () = &mut quiet => {
                if Instant::now() < quiet_until {
                    quiet.as_mut().reset(quiet_until);
                    continue;
                }
                tracing::debug!("closing a stream that sent no request in time");
                break;
            }
            () = &mut stopping => break,
        };
        quiet_until = Instant::now() + ctx.idle_timeout;
        let payload = match next {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e @ FrameError::TooLarge { .. }) => {
                // The stream cannot be resynchronised after an oversized frame: say why, end it.
                tracing::warn!(error = %e, "refused an oversized frame; closing the stream");
                answered.extend_from_slice(&error_frame(0, RemoteError::invalid(e)));
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "request stream ended");
                break;
            }
        };
        let frame: RequestFrame = match wire::decode(&payload) {
            Ok(f) => f,
            Err(e) => {
                // The length prefix was sound, so the next frame can still be read.
                tracing::warn!(error = %e, "undecodable request frame");
                answered.extend_from_slice(&error_frame(0, RemoteError::invalid(e)));
                continue;
            }
        };
        let timeout = match frame.timeout_ms {
            0 => ctx.default_timeout,
            ms => Duration::from_millis(ms.into()),
        };
        let kind = frame.request.kind();
        let now = match answer_now(&handler, frame.request, timeout, stream) {
            Now::Later(request) => {
                let mut later = InFlight {
                    id: frame.id,
                    kind,
                    answer: Box::pin(run_with_deadline(Arc::clone(&handler), request, timeout)),
                };
                // Its first steps now, before the next request's (see `Now::Later`).
                match std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut later).poll(cx))).await {
                    std::task::Poll::Ready((id, answer)) => encode_answer(id, settle(answer), &mut answered),
                    std::task::Poll::Pending => pending.push(later),
                }
                continue;
            }
            now => now,
        };
        if let Some(waiting) = take_now(frame.id, kind, now, &mut answered, &mut placing, &node) {
            pending.push(waiting);
        }
    }
    // Answer everything already taken in before ending the stream.
    if let Some((id, kind, first)) = placing.take() {
        let now = first.await;
        if let Some(waiting) = take_now(id, kind, now, &mut answered, &mut placing, &node) {
            pending.push(waiting);
        }
    }
    while let Some((id, answer)) = pending.next().await {
        encode_answer(id, settle(answer), &mut answered);
    }
    if peer_gone {
        return;
    }
    let deliver = async move {
        if writer.write_all(&answered).await.is_ok() {
            writer.finish_delivered().await;
        }
    };
    // A live peer acknowledges the last answers within a round trip; a dead or paused one
    // only when the connection times out (30 s by default), which a stopping node must not
    // wait for.
    let stopped = async {
        ctx.stopping.cancelled().await;
        tokio::time::sleep(STOPPING_DELIVERY_WAIT).await;
    };
    tokio::select! {
        () = deliver => {}
        () = stopped => {}
    }
}

/// Acts on what [`Handler::answer_now`] (or a request being placed) made of request `id`:
/// an answer is encoded, a request to place is kept in `placing`, and the future of an
/// answer is given back, to be pushed among those in flight.
fn take_now(
    id: u64,
    kind: &'static str,
    now: Now,
    answered: &mut Vec<u8>,
    placing: &mut Option<Placing>,
    node: &dyn Fn() -> String,
) -> Option<InFlight> {
    match now {
        Now::Answer(answer) => encode_answer(id, answer, answered),
        Now::Waiting(answer) => return Some(InFlight { id, kind, answer }),
        Now::First(first) => *placing = Some((id, kind, first)),
        // Not made by a request being placed; the serving loop runs `Later` itself.
        Now::Later(_) => encode_answer(
            id,
            Err(RemoteError::Internal {
                node: node(),
                reason: format!("the {kind} request could not be placed"),
            }),
            answered,
        ),
    }
    None
}

/// Polls the request being placed, under a panic guard (a panic is an internal error).
async fn place(placing: &mut Option<Placing>, node: &str) -> (u64, &'static str, Now) {
    std::future::poll_fn(|cx| {
        let (id, kind, first) = placing.as_mut().expect("polled only while placing");
        match std::panic::catch_unwind(AssertUnwindSafe(|| first.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(now)) => std::task::Poll::Ready((*id, *kind, now)),
            Err(panic) => {
                let reason = caught(kind, &*panic, "request panicked; the node goes on");
                std::task::Poll::Ready((
                    *id,
                    *kind,
                    Now::Answer(Err(RemoteError::Internal {
                        node: node.to_string(),
                        reason,
                    })),
                ))
            }
        }
    })
    .await
}

/// [`Handler::answer_now`] under a panic guard: a panic is answered as an internal error.
fn answer_now<H: Handler>(handler: &Arc<H>, request: Request, timeout: Duration, stream: StreamKey) -> Now {
    let kind = request.kind();
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.answer_now(request, timeout, stream))) {
        Ok(now) => now,
        Err(panic) => Now::Answer(Err(RemoteError::Internal {
            node: handler.node_name().to_string(),
            reason: caught(kind, &*panic, "request panicked; the node goes on"),
        })),
    }
}

/// Appends the response frame for `id` to `out`; an answer too large to send becomes an error.
fn encode_answer(id: u64, answer: Answer, out: &mut Vec<u8>) {
    let start = out.len();
    if let Err(e) = wire::encode_frame(&ResponseFrame { id, result: answer }, out) {
        out.truncate(start);
        out.extend_from_slice(&error_frame(id, RemoteError::invalid(format!("answer too large: {e}"))));
    }
}

/// Runs one request by [`Handler::handle`] under its deadline. (A panic inside it is caught
/// where every waiting request is polled, in [`InFlight`].)
async fn run_with_deadline<H: Handler>(handler: Arc<H>, request: Request, timeout: Duration) -> Answer {
    let start = Instant::now();
    match tokio::time::timeout(timeout, Arc::clone(&handler).handle(request, start + timeout)).await {
        Ok(answer) => answer,
        Err(_) => Err(RemoteError::DeadlineExceeded {
            node: handler.node_name().to_string(),
            waited_ms: start.elapsed().as_millis() as u64,
        }),
    }
}

/// Logs a panic caught while answering a `kind` request, with `what` as the log line, and
/// gives back the reason its internal-error answer carries.
fn caught(kind: &str, panic: &(dyn std::any::Any + Send), what: &str) -> String {
    let reason = crate::supervisor::panic_text(panic);
    tracing::error!(request = kind, %reason, "{what}");
    format!("the {kind} request failed: {reason}")
}

fn error_frame(id: u64, e: RemoteError) -> Vec<u8> {
    wire::frame(&ResponseFrame { id, result: Err(e) }).expect("an error frame is small")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BucketOp, BucketRequest, RequestFrameRef};
    use bytes::BufMut;
    use serde_bytes::ByteBuf;
    use std::sync::atomic::AtomicUsize;

    /// Echoes a `get` key back as the value; `Ping` sleeps forever; key "boom" panics; key
    /// "counted" records how many run at once (one test uses it).
    struct Echo;

    static COUNTED_NOW: AtomicUsize = AtomicUsize::new(0);
    static COUNTED_MAX: AtomicUsize = AtomicUsize::new(0);

    impl Handler for Echo {
        async fn handle(self: Arc<Self>, request: Request, _deadline: Instant) -> Answer {
            match request {
                Request::Bucket(BucketRequest {
                    op: BucketOp::Get { key },
                    ..
                }) => {
                    if key == b"boom" {
                        panic!("boom requested");
                    }
                    if key == b"slow" {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if key == b"counted" {
                        let now = COUNTED_NOW.fetch_add(1, Ordering::SeqCst) + 1;
                        COUNTED_MAX.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        COUNTED_NOW.fetch_sub(1, Ordering::SeqCst);
                    }
                    Ok(Reply::Value(ByteBuf::from(key)))
                }
                Request::Ping => std::future::pending().await,
                _ => Err(RemoteError::invalid("unsupported")),
            }
        }

        /// Gets of keys starting with "now" are answered at once, "now-boom" panics there;
        /// those starting with "wait" are started here and answered a little later, and
        /// "wait-boom" panics then.
        fn answer_now(self: &Arc<Self>, request: Request, _timeout: Duration, _: StreamKey) -> Now {
            match &request {
                Request::Bucket(BucketRequest {
                    op: BucketOp::Get { key },
                    ..
                }) if key.starts_with(b"now") => {
                    if key == b"now-boom" {
                        panic!("boom at once");
                    }
                    Now::Answer(Ok(Reply::Value(ByteBuf::from(key.clone()))))
                }
                Request::Bucket(BucketRequest {
                    op: BucketOp::Get { key },
                    ..
                }) if key.starts_with(b"wait") => {
                    let key = key.clone();
                    Now::Waiting(Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if key == b"wait-boom" {
                            panic!("boom while waiting");
                        }
                        Ok(Reply::Value(ByteBuf::from(key)))
                    }))
                }
                _ => Now::Later(request),
            }
        }

        fn node_name(&self) -> &str {
            "echo"
        }
    }

    fn get(key: &str) -> Request {
        Request::Bucket(BucketRequest {
            bucket: b"b".to_vec(),
            op: BucketOp::Get {
                key: key.as_bytes().to_vec(),
            },
            path: vec![],
        })
    }

    fn ctx() -> ServeContext {
        ServeContext {
            max_in_flight: 64,
            default_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            stopping: CancellationToken::new(),
            frames: FrameBudget::node(wire::UNFINISHED_FRAMES_PER_NODE),
        }
    }

    fn pair() -> Channel {
        pair_with(ctx())
    }

    fn pair_with(ctx: ServeContext) -> Channel {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (sr, sw) = tokio::io::split(server);
        tokio::spawn(serve(sr, sw, Arc::new(Echo), ctx));
        let (cr, cw) = tokio::io::split(client);
        Channel::spawn(cr, cw)
    }

    /// Calls with every key at once, from tasks of their own; each must get its key back.
    async fn expect_echoes(ch: &Arc<Channel>, keys: impl IntoIterator<Item = String>) {
        let calls: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let ch = Arc::clone(ch);
                tokio::spawn(async move {
                    let got = ch.call(&get(&key), Duration::from_secs(5)).await.unwrap().unwrap();
                    assert_eq!(got, Reply::Value(ByteBuf::from(key.into_bytes())));
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
    }

    /// Calls `boom`, which panics in the handler, and expects an internal error whose reason
    /// says `says`; then calls `after` on the same stream and expects its key back. Gives
    /// back the error, for further checks.
    async fn expect_caught(ch: &Channel, boom: &str, says: &str, after: &str) -> RemoteError {
        let err = ch.call(&get(boom), Duration::from_secs(5)).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, RemoteError::Internal { reason, .. } if reason.contains(says)),
            "{err}"
        );
        let ok = ch.call(&get(after), Duration::from_secs(5)).await.unwrap();
        assert_eq!(ok, Ok(Reply::Value(ByteBuf::from(after.as_bytes().to_vec()))));
        err
    }

    #[tokio::test]
    async fn many_calls_in_flight_on_one_stream_each_get_their_own_answer() {
        let ch = Arc::new(pair());
        let keys = (0..200).map(|i| {
            if i % 3 == 0 {
                "slow".to_string()
            } else {
                format!("k{i}")
            }
        });
        expect_echoes(&ch, keys).await;
    }

    #[tokio::test]
    async fn a_stream_at_its_in_flight_limit_is_read_again_once_a_request_finishes() {
        let ch = Arc::new(pair_with(ServeContext {
            max_in_flight: 3,
            ..ctx()
        }));
        let calls: Vec<_> = (0..12)
            .map(|_| {
                let ch = Arc::clone(&ch);
                tokio::spawn(async move { ch.call(&get("counted"), Duration::from_secs(5)).await })
            })
            .collect();
        for c in calls {
            let got = c.await.unwrap().unwrap().unwrap();
            assert_eq!(got, Reply::Value(ByteBuf::from(b"counted".to_vec())));
        }
        let most = COUNTED_MAX.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} requests ran at once; the limit is 3");
    }

    #[tokio::test]
    async fn answers_given_at_once_are_written_when_the_in_flight_limit_is_reached() {
        // One request may be in flight; a `Ping` takes that place for a minute. The get
        // answered at once just before it, in the same burst, must not wait for it.
        let ch = pair_with(ServeContext {
            max_in_flight: 1,
            ..ctx()
        });
        let (first, behind) = (get("now-first"), get("now-behind"));
        let first = ch.call(&first, Duration::from_secs(60));
        let stuck = ch.call(&Request::Ping, Duration::from_secs(60));
        let behind = ch.call(&behind, Duration::from_secs(60));
        tokio::pin!(stuck, behind);
        // The first poll queues all three frames, in order, before the channel's writer runs
        // (this runtime has one thread): they reach the stream as one burst.
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                biased;
                answer = first => answer,
                _ = &mut stuck => panic!("the ping was answered"),
                _ = &mut behind => panic!("the request behind the limit was read"),
            }
        })
        .await
        .expect("the answer given at once waited for the request in flight");
        assert_eq!(
            answered.unwrap().unwrap(),
            Reply::Value(ByteBuf::from(b"now-first".to_vec()))
        );
    }

    /// Answers every request at once with a value of [`BIG`] bytes.
    struct Big;

    const BIG: usize = 1024 * 1024;

    impl Handler for Big {
        async fn handle(self: Arc<Self>, _: Request, _: Instant) -> Answer {
            unreachable!("every request is answered at once")
        }

        fn answer_now(self: &Arc<Self>, _: Request, _: Duration, _: StreamKey) -> Now {
            Now::Answer(Ok(Reply::Value(ByteBuf::from(vec![7; BIG]))))
        }

        fn node_name(&self) -> &str {
            "big"
        }
    }

    /// Records the largest buffer one write was handed; takes everything at once.
    #[derive(Clone, Default)]
    struct LargestWrite(Arc<AtomicUsize>);

    impl AsyncWrite for LargestWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.fetch_max(buf.len(), Ordering::Relaxed);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl FinishStream for LargestWrite {
        async fn finish_delivered(self) {}
    }

    #[tokio::test]
    async fn a_pipelined_burst_of_large_answers_is_written_in_bounded_batches() {
        // 64 gets arrive in one read; each is answered at once with 1 MiB. The answers must
        // leave once they pass the batch bound, not pile up until the burst is read.
        let mut burst = Vec::new();
        for id in 1..=64 {
            let frame = RequestFrame {
                id,
                timeout_ms: 5_000,
                request: get("k"),
            };
            wire::encode_frame(&frame, &mut burst).unwrap();
        }
        let largest = LargestWrite::default();
        serve(std::io::Cursor::new(burst), largest.clone(), Arc::new(Big), ctx()).await;
        let largest = largest.0.load(Ordering::Relaxed);
        assert!(largest >= BIG, "the answers were not written: {largest}");
        assert!(
            largest <= MAX_BATCH + BIG + 64,
            "one write carried {largest} bytes of answers; the batch bound is {MAX_BATCH}"
        );
    }

    fn put_of(len: usize) -> Request {
        Request::Bucket(BucketRequest {
            bucket: b"b".to_vec(),
            op: BucketOp::Put {
                key: b"k".to_vec(),
                value: vec![1; len],
            },
            path: vec![],
        })
    }

    #[tokio::test]
    async fn the_outbox_toward_a_stalled_peer_is_bounded_and_its_callers_fail_by_their_deadline() {
        // The peer reads nothing: the first write fills the pipe and never finishes.
        let (_peer, ours) = tokio::io::duplex(64 * 1024);
        let (cr, cw) = tokio::io::split(ours);
        let ch = Arc::new(Channel::spawn(cr, cw));
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let ch = Arc::clone(&ch);
                tokio::spawn(async move { ch.call(&put_of(64 * 1024), Duration::from_millis(300)).await })
            })
            .collect();
        let mut most = 0;
        for _ in 0..50 {
            tokio::task::yield_now().await;
            most = most.max(ch.shared.lock().outbox.len());
        }
        assert!(
            most <= MAX_OUTBOX + 64 * 1024 + 64,
            "{most} bytes queued toward a stalled peer; the bound is {MAX_OUTBOX}"
        );
        for call in calls {
            let answer = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(answer, Err(CallError::Timeout(_))), "{answer:?}");
        }
    }

    #[tokio::test]
    async fn a_queued_request_whose_caller_gave_up_is_not_sent_and_the_rest_leave_with_what_is_left() {
        let (peer, ours) = tokio::io::duplex(16 * 1024);
        let (cr, cw) = tokio::io::split(ours);
        let ch = Channel::spawn(cr, cw);
        // Fills the pipe: the writer waits in the middle of this one.
        let big = ch.start(&put_of(64 * 1024), Duration::from_secs(10)).unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let gone = ch.start(&get("gone"), Duration::from_millis(100)).unwrap();
        let dropped = ch.start(&get("dropped"), Duration::from_secs(10)).unwrap();
        let kept = ch.start(&get("kept"), Duration::from_secs(5)).unwrap();
        drop(dropped);
        assert!(matches!(gone.await, Err(CallError::Timeout(_))));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The peer reads at last.
        let (pr, _pw) = tokio::io::split(peer);
        let mut reader = FrameReader::new(pr, MAX_FRAME);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let frame: RequestFrame = reader.next().await.unwrap().unwrap();
            seen.push((frame.id, frame.timeout_ms));
        }
        assert_eq!(seen[0].0, 1, "{seen:?}");
        assert_eq!(seen[1].0, 4, "the requests given up on were sent: {seen:?}");
        assert!(seen[1].1 <= 4_800, "the budget was stamped when queued: {seen:?}");
        drop((big, kept));
    }

    #[tokio::test]
    async fn a_panicking_request_is_an_internal_error_and_the_stream_goes_on() {
        let ch = pair();
        let err = expect_caught(&ch, "boom", "boom requested", "after").await;
        assert_eq!(err.exit_code(), 6);
    }

    #[tokio::test]
    async fn answers_given_at_once_and_by_tasks_interleave_and_a_panic_at_once_is_caught() {
        let ch = Arc::new(pair());
        let keys = (0..300).map(|i| match i % 3 {
            0 => format!("now{i}"),
            1 => "slow".to_string(),
            _ => format!("k{i}"),
        });
        expect_echoes(&ch, keys).await;
        expect_caught(&ch, "now-boom", "boom at once", "now-after").await;
    }

    #[tokio::test]
    async fn requests_started_at_once_are_answered_when_ready_and_a_panic_there_is_caught() {
        let ch = Arc::new(pair());
        let keys = (0..100).map(|i| {
            if i % 2 == 0 {
                format!("wait{i}")
            } else {
                format!("now{i}")
            }
        });
        expect_echoes(&ch, keys).await;
        let err = expect_caught(&ch, "wait-boom", "boom while waiting", "wait-after").await;
        assert!(
            matches!(&err, RemoteError::Internal { node, .. } if node == "echo"),
            "{err}"
        );
    }

    #[test]
    fn a_timeout_under_a_millisecond_is_sent_as_one_not_as_none() {
        assert_eq!(wire_timeout(Duration::from_micros(300)), 1);
        assert_eq!(wire_timeout(Duration::ZERO), 1);
        assert_eq!(wire_timeout(Duration::from_micros(1_500)), 2);
        assert_eq!(wire_timeout(Duration::from_secs(5)), 5_000);
        assert_eq!(wire_timeout(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_leaves_no_waiter_behind() {
        let ch = pair();
        let pending = ch.start(&Request::Ping, Duration::from_secs(60)).unwrap();
        assert_eq!(ch.shared.lock().waiting.len(), 1);
        drop(pending);
        assert!(ch.shared.lock().waiting.is_empty());
        // Also when the future was polled first.
        let mut pending = ch.start(&Request::Ping, Duration::from_secs(60)).unwrap();
        assert!((&mut pending).now_or_never().is_none());
        drop(pending);
        assert!(ch.shared.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_call_under_way_is_answered_after_its_channel_is_dropped() {
        let ch = pair();
        let slow = ch.start(&get("slow"), Duration::from_secs(5)).unwrap();
        let stuck = ch.start(&Request::Ping, Duration::from_millis(200)).unwrap();
        drop(ch);
        assert_eq!(slow.await.unwrap(), Ok(Reply::Value(ByteBuf::from(b"slow".to_vec()))));
        let started = Instant::now();
        assert!(matches!(stuck.await, Err(CallError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_answered_with_a_deadline_error() {
        let ch = pair();
        let err = ch.call(&Request::Ping, Duration::from_millis(50)).await;
        // Either side may notice first; both are deadline failures.
        match err {
            Err(CallError::Timeout(_)) | Ok(Err(RemoteError::DeadlineExceeded { .. })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_between_frames_is_answered_and_later_frames_still_served() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (sr, sw) = tokio::io::split(server);
        tokio::spawn(serve(sr, sw, Arc::new(Echo), ctx()));
        let (cr, mut cw) = tokio::io::split(client);
        let mut bytes = Vec::new();
        bytes.put_u32(5);
        bytes.extend_from_slice(&[0xff; 5]);
        wire::encode_frame(
            &RequestFrame {
                id: 9,
                timeout_ms: 1000,
                request: get("x"),
            },
            &mut bytes,
        )
        .unwrap();
        bytes.put_u32(u32::MAX);
        cw.write_all(&bytes).await.unwrap();
        let mut reader = FrameReader::new(cr, MAX_FRAME);
        let mut answers = Vec::new();
        while let Some(frame) = reader.next::<ResponseFrame>().await.unwrap() {
            answers.push(frame);
        }
        // The request is answered whenever its task finishes; the two errors come in order.
        let served: Vec<_> = answers.iter().filter(|a| a.id == 9).collect();
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].result, Ok(Reply::Value(ByteBuf::from(b"x".to_vec()))));
        let errors: Vec<String> = answers
            .iter()
            .filter(|a| a.id == 0)
            .map(|a| a.result.clone().unwrap_err().to_string())
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("undecodable"), "{errors:?}");
        assert!(errors[1].contains("exceeds"), "{errors:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_never_sends_is_closed_at_its_deadline() {
        let (client, server) = tokio::io::duplex(1024);
        let (sr, sw) = tokio::io::split(server);
        let served = tokio::spawn(serve(sr, sw, Arc::new(Echo), ctx()));
        let (mut cr, _cw) = tokio::io::split(client);
        // The node ends its side of the stream after the 5 s deadline, although we keep ours open.
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut cr, &mut buf).await.unwrap();
        assert!(buf.is_empty());
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_broken_stream_wakes_every_caller_with_the_reason() {
        let (client, server) = tokio::io::duplex(1024);
        let (cr, cw) = tokio::io::split(client);
        let ch = Channel::spawn(cr, cw);
        let request = get("x");
        let call = ch.call(&request, Duration::from_secs(5));
        drop(server);
        assert!(matches!(call.await, Err(CallError::Broken(_))));
        assert!(ch.is_broken());
    }

    /// Counts the reads asked of the stream it wraps.
    struct CountingReader<R> {
        inner: R,
        polls: Arc<AtomicUsize>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    /// Starts every request and hands the test the switch that answers it.
    struct Held(tokio::sync::mpsc::UnboundedSender<oneshot::Sender<()>>);

    impl Handler for Held {
        async fn handle(self: Arc<Self>, _: Request, _: Instant) -> Answer {
            unreachable!("every request is started at once")
        }

        fn answer_now(self: &Arc<Self>, _: Request, _: Duration, _: StreamKey) -> Now {
            let (answer, answered) = oneshot::channel();
            self.0.send(answer).unwrap();
            Now::Waiting(Box::pin(async move {
                let _ = answered.await;
                Ok(Reply::Done)
            }))
        }

        fn node_name(&self) -> &str {
            "held"
        }
    }

    #[tokio::test]
    async fn a_stream_task_woken_for_an_answer_does_not_read_the_stream_again() {
        // A forwarding node's stream task wakes once for the request and once for the owner's
        // answer; a read of a QUIC stream locks its connection, so the second wake-up skips it.
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (sr, sw) = tokio::io::split(server);
        let polls = Arc::new(AtomicUsize::new(0));
        let reader = CountingReader {
            inner: sr,
            polls: Arc::clone(&polls),
        };
        let (started, mut requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(serve(reader, sw, Arc::new(Held(started)), ctx()));
        let (cr, cw) = tokio::io::split(client);
        let ch = Channel::spawn(cr, cw);
        let call = ch.start(&Request::Ping, Duration::from_secs(5)).unwrap();
        // On this one-thread runtime the stream task has read the request, started it and
        // gone back to waiting before this task runs again.
        let answer = requests.recv().await.unwrap();
        let before = polls.load(Ordering::Relaxed);
        answer.send(()).unwrap();
        assert_eq!(call.await.unwrap(), Ok(Reply::Done));
        assert_eq!(
            polls.load(Ordering::Relaxed),
            before,
            "the stream was read again for the answer"
        );
    }

    /// Counts the writes handed to it and the bytes they carried; takes everything at once.
    #[derive(Clone, Default)]
    struct CountingWriter(Arc<Mutex<(usize, usize)>>);

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut counts = self.0.lock().unwrap();
            counts.0 += 1;
            counts.1 += buf.len();
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn requests_queued_while_the_writer_yields_leave_in_one_write() {
        // On several workers, the callers of a burst (a forwarding node's client streams) run
        // on the others while the stream's writer yields; here one caller queues a request per
        // scheduler turn. The writer keeps gathering while the batch grows.
        let (_answers, reader) = tokio::io::duplex(1024);
        let writes = CountingWriter::default();
        let ch = Channel::spawn(reader, writes.clone());
        let requests: Vec<Request> = (0..4).map(|i| get(&format!("k{i}"))).collect();
        let mut calls = Vec::new();
        for request in &requests {
            calls.push(ch.start(request, Duration::from_secs(5)).unwrap());
            tokio::task::yield_now().await;
        }
        let mut frames = Vec::new();
        for (id, request) in (1..).zip(&requests) {
            let frame = RequestFrameRef {
                id,
                timeout_ms: 5_000,
                request,
            };
            wire::encode_frame(&frame, &mut frames).unwrap();
        }
        for _ in 0..100 {
            if writes.0.lock().unwrap().1 >= frames.len() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(*writes.0.lock().unwrap(), (1, frames.len()), "(writes, bytes)");
    }
}
