//! The calling and the serving side of a stream, against each other.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BufMut;
use futures_util::FutureExt;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::call::tests::get;
use super::*;
use crate::wire::{
    self, BucketOp, BucketRequest, FrameBudget, FrameReader, MAX_FRAME, RemoteError, Reply, Request, RequestFrame,
    ResponseFrame,
};

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
