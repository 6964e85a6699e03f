//! The calling side of a stream: callers queue requests into a shared outbox, one writer
//! task hands it to the stream in batches, one reader task matches answers to callers, and
//! one sweeper task fails the calls whose deadline passed. Knows nothing of serving.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{Answer, MAX_BATCH};
use crate::wire::{self, FrameReader, MAX_FRAME, Request, ResponseFrame};

/// How many bytes of requests may wait in a stream's outbox for the stream to take them
/// (toward a stalled peer, say); further callers wait for room, within their deadline. A
/// request larger than this is taken when the outbox is empty.
pub const MAX_OUTBOX: usize = 1024 * 1024;

/// How many times a stream's writer yields, while its batch grows, before it writes.
const MAX_GATHER_YIELDS: usize = 4;

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
pub(super) struct Waiter {
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
pub(super) struct State {
    pub(super) waiting: HashMap<u64, Waiter>,
    /// Encoded requests (without id or timeout) not yet handed to the stream, in order; the
    /// writer frames them, with what is left of each one's deadline, as it takes them.
    pub(super) outbox: Vec<u8>,
    queued: VecDeque<Queued>,
    broken: Option<String>,
    /// The channel was dropped: the writer ends the stream, the sweeper stops.
    closed: bool,
    /// When the sweeper will next look for expired calls (none: it waits for a call).
    next_sweep: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Shared {
    state: Mutex<State>,
    /// Set once `state.broken` is, for a check without the lock.
    broken: AtomicBool,
    wake_writer: Notify,
    wake_sweeper: Notify,
    /// Signalled when the outbox has room again.
    room: Notify,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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
    pub(super) shared: Arc<Shared>,
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

#[cfg(test)]
pub(super) mod tests {
    //! The calling side alone, against a stream that answers nothing or reads nothing.

    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::AsyncWrite;

    use super::*;
    use crate::wire::{BucketOp, BucketRequest, RequestFrame, RequestFrameRef};

    /// A get of `key` in bucket "b".
    pub(in crate::rpc) fn get(key: &str) -> Request {
        Request::Bucket(BucketRequest {
            bucket: b"b".to_vec(),
            op: BucketOp::Get {
                key: key.as_bytes().to_vec(),
            },
            path: vec![],
        })
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

    #[test]
    fn a_timeout_under_a_millisecond_is_sent_as_one_not_as_none() {
        assert_eq!(wire_timeout(Duration::from_micros(300)), 1);
        assert_eq!(wire_timeout(Duration::ZERO), 1);
        assert_eq!(wire_timeout(Duration::from_micros(1_500)), 2);
        assert_eq!(wire_timeout(Duration::from_secs(5)), 5_000);
        assert_eq!(wire_timeout(Duration::from_secs(u64::MAX)), u32::MAX);
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
