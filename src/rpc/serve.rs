//! The serving side of a stream: the loop that reads request frames, asks the [`Handler`]
//! for each answer, runs the answers still to come as futures of the stream's own task
//! under a panic guard, and writes the answers back in batches. Knows nothing of calling.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::order::{Class, Classes};
use super::{Answer, MAX_BATCH};
use crate::wire::{
    self, FrameBudget, FrameError, FrameReader, MAX_FRAME, RemoteError, Request, RequestFrame, ResponseFrame,
};
use crate::woken::OnlyWhenWoken;

/// What [`Handler::answer_now`] made of a request.
pub enum Now {
    /// The answer, given at once.
    Answer(Answer),
    /// The answer to come; the future must end by the request's deadline by itself. It is
    /// polled once at once, before the stream's next request is taken in: what it does
    /// before its first wait (a durable write queued for the store) happens in the order the
    /// requests came.
    Waiting(Pin<Box<dyn Future<Output = Answer> + Send>>),
    /// The request, to be run by [`Handler::handle`] under its deadline; its future is
    /// polled once at once, as a [`Now::Waiting`] one is.
    Later(Request),
    /// A request that must be placed (queued toward the next node) before any later request
    /// of its stream is taken in, and cannot be yet (no stream open to that node, or its
    /// outbox full): the stream is not read on until this future, which must end by the
    /// request's deadline by itself, gives back the answer or the future of it.
    First(Pin<Box<dyn Future<Output = Now> + Send>>),
}

/// A request being placed ([`Now::First`]): its frame id, its kind, its class, and the future
/// that places it.
type Placing = (
    u64,
    &'static str,
    Option<Class>,
    Pin<Box<dyn Future<Output = Now> + Send>>,
);

/// Identifies one served stream, for the lifetime of the node: a handler keeps the requests
/// of one stream together (in order, on one stream to the next node).
pub type StreamKey = u64;

static NEXT_STREAM: AtomicU64 = AtomicU64::new(0);

/// A key no other stream of this process has: for each served QUIC stream, and for each
/// connection of a local listener (text protocol, RESP), which routes its requests as a
/// stream does.
pub fn new_stream_key() -> StreamKey {
    NEXT_STREAM.fetch_add(1, Ordering::Relaxed)
}

/// A request being answered on its stream's task: its frame id, its kind (for the log),
/// and the future of its answer, polled under a panic guard.
struct InFlight {
    id: u64,
    kind: &'static str,
    class: Option<Class>,
    answer: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

impl Future for InFlight {
    /// The frame id, the request's class, and the answer or what the panic said.
    type Output = (u64, Option<Class>, Result<Answer, String>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let (id, class) = (self.id, self.class);
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.answer.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(answer)) => std::task::Poll::Ready((id, class, Ok(answer))),
            Err(panic) => {
                let reason = caught(self.kind, &*panic, "request task panicked; the node goes on");
                std::task::Poll::Ready((id, class, Err(reason)))
            }
        }
    }
}

/// How long a stream's last answers may wait for the peer's acknowledgement once the node is
/// stopping: ample for a live peer, short for a dead one.
const STOPPING_DELIVERY_WAIT: Duration = Duration::from_millis(500);

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
    let stream = new_stream_key();
    // A request being placed ([`Now::First`]): the stream is not read until it is.
    let mut placing: Option<Placing> = None;
    // The reads and writes in flight, and a request taken in that must wait for those of the
    // other class to be answered (see [`Class`]): the stream is not read until it is released.
    let mut classes = Classes::default();
    let mut held: Option<(RequestFrame, Option<Class>)> = None;
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
        if let Some((frame, class)) = held.take_if(|(_, class)| !classes.must_wait(*class) && placing.is_none()) {
            take_in(
                frame,
                class,
                &handler,
                stream,
                ctx.default_timeout,
                &mut answered,
                &mut placing,
                &node,
            )
            .start(&mut answered, &mut pending, &mut classes, &settle)
            .await;
            continue;
        }
        let next = tokio::select! {
            // At the in-flight limit the stream is not read until a request finishes.
            next = reader.next_frame(), if !at_limit && placing.is_none() && held.is_none() => next,
            (id, kind, class, now) = place(&mut placing, handler.node_name()), if placing.is_some() => {
                placing = None;
                take_now(id, kind, class, now, &mut answered, &mut placing, &node)
                    .start(&mut answered, &mut pending, &mut classes, &settle)
                    .await;
                continue;
            }
            Some((id, class, answer)) = pending.next(), if !pending.is_empty() => {
                classes.ended(class);
                encode_answer(id, settle(answer), &mut answered);
                while answered.len() < MAX_BATCH {
                    match pending.next().now_or_never() {
                        Some(Some((id, class, answer))) => {
                            classes.ended(class);
                            encode_answer(id, settle(answer), &mut answered);
                        }
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
        let class = Class::of(&frame.request);
        if classes.must_wait(class) {
            held = Some((frame, class));
            continue;
        }
        take_in(
            frame,
            class,
            &handler,
            stream,
            ctx.default_timeout,
            &mut answered,
            &mut placing,
            &node,
        )
        .start(&mut answered, &mut pending, &mut classes, &settle)
        .await;
    }
    // Answer everything already taken in before ending the stream: the request being placed,
    // then the one held (once those of the other class are answered), then all in flight.
    if let Some((id, kind, class, first)) = placing.take() {
        let now = first.await;
        take_now(id, kind, class, now, &mut answered, &mut placing, &node)
            .start(&mut answered, &mut pending, &mut classes, &settle)
            .await;
    }
    if let Some((frame, class)) = held.take() {
        while classes.must_wait(class) {
            let Some((id, class, answer)) = pending.next().await else {
                break;
            };
            classes.ended(class);
            encode_answer(id, settle(answer), &mut answered);
        }
        let mut placing = None;
        take_in(
            frame,
            class,
            &handler,
            stream,
            ctx.default_timeout,
            &mut answered,
            &mut placing,
            &node,
        )
        .start(&mut answered, &mut pending, &mut classes, &settle)
        .await;
        if let Some((id, kind, class, first)) = placing.take() {
            let now = first.await;
            take_now(id, kind, class, now, &mut answered, &mut placing, &node)
                .start(&mut answered, &mut pending, &mut classes, &settle)
                .await;
        }
    }
    while let Some((id, _, answer)) = pending.next().await {
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

/// Takes in one request: asks the handler what it makes of it (see [`take_now`]).
#[allow(clippy::too_many_arguments)]
fn take_in<H: Handler>(
    frame: RequestFrame,
    class: Option<Class>,
    handler: &Arc<H>,
    stream: StreamKey,
    default_timeout: Duration,
    answered: &mut Vec<u8>,
    placing: &mut Option<Placing>,
    node: &dyn Fn() -> String,
) -> Option<InFlight> {
    let timeout = match frame.timeout_ms {
        0 => default_timeout,
        ms => Duration::from_millis(ms.into()),
    };
    let kind = frame.request.kind();
    let now = match answer_now(handler, frame.request, timeout, stream) {
        Now::Later(request) => Now::Waiting(Box::pin(run_with_deadline(Arc::clone(handler), request, timeout))),
        now => now,
    };
    take_now(frame.id, kind, class, now, answered, placing, node)
}

/// Acts on what [`Handler::answer_now`] (or a request being placed) made of request `id`:
/// an answer is encoded, a request to place is kept in `placing`, and the future of an
/// answer is given back, to be pushed among those in flight.
fn take_now(
    id: u64,
    kind: &'static str,
    class: Option<Class>,
    now: Now,
    answered: &mut Vec<u8>,
    placing: &mut Option<Placing>,
    node: &dyn Fn() -> String,
) -> Option<InFlight> {
    match now {
        Now::Answer(answer) => encode_answer(id, answer, answered),
        Now::Waiting(answer) => {
            return Some(InFlight {
                id,
                kind,
                class,
                answer,
            });
        }
        Now::First(first) => *placing = Some((id, kind, class, first)),
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

/// What [`take_now`] gave back: the future of an answer to start, if any.
trait Start {
    /// Polls the future of a request's answer once at once, before the stream's next request
    /// is taken in (see [`Now::Waiting`]): its answer is encoded if ready, else it joins those
    /// in flight, counted by its class.
    async fn start(
        self,
        answered: &mut Vec<u8>,
        pending: &mut FuturesUnordered<InFlight>,
        classes: &mut Classes,
        settle: &(dyn Fn(Result<Answer, String>) -> Answer + Sync),
    );
}

impl Start for Option<InFlight> {
    async fn start(
        self,
        answered: &mut Vec<u8>,
        pending: &mut FuturesUnordered<InFlight>,
        classes: &mut Classes,
        settle: &(dyn Fn(Result<Answer, String>) -> Answer + Sync),
    ) {
        let Some(mut started) = self else { return };
        match std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut started).poll(cx))).await {
            std::task::Poll::Ready((id, _, answer)) => encode_answer(id, settle(answer), answered),
            std::task::Poll::Pending => {
                classes.started(started.class);
                pending.push(started);
            }
        }
    }
}

/// Polls the request being placed, under a panic guard (a panic is an internal error).
async fn place(placing: &mut Option<Placing>, node: &str) -> (u64, &'static str, Option<Class>, Now) {
    std::future::poll_fn(|cx| {
        let (id, kind, class, first) = placing.as_mut().expect("polled only while placing");
        match std::panic::catch_unwind(AssertUnwindSafe(|| first.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(now)) => std::task::Poll::Ready((*id, *kind, *class, now)),
            Err(panic) => {
                let reason = caught(kind, &*panic, "request panicked; the node goes on");
                std::task::Poll::Ready((
                    *id,
                    *kind,
                    *class,
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
