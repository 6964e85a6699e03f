//! Polling a source only when it has signalled since it last said "not yet".
//!
//! A task that waits on several sources at once (`select!`) polls each of them whenever any
//! one wakes it. That is cheap for a channel, and not for a QUIC stream: a poll there locks
//! the connection and looks the stream up. A forwarding node's stream task is woken once
//! for the request and once more for the owner's answer; [`OnlyWhenWoken`] lets the second
//! wake-up skip the stream, which has nothing new to say.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, ReadBuf};

/// Wraps a future or a reader; polls it only when it has woken the task since it last
/// returned `Pending` (and always the first time, and again after it was ready).
pub struct OnlyWhenWoken<T> {
    inner: T,
    flag: Arc<Flag>,
    /// The waker `inner` is given: it raises the flag, then wakes the task.
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<T: Unpin> OnlyWhenWoken<T> {
    pub fn new(inner: T) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Self { inner, flag, waker }
    }

    fn poll_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        // Registered before the flag is read: a wake-up between the two still wakes the task.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let ready = poll(Pin::new(&mut self.inner), &mut Context::from_waker(&self.waker));
        if ready.is_ready() {
            // It may have more to give at once, without waking anyone: ask it next time.
            self.flag.woken.store(true, Ordering::Release);
        }
        ready
    }
}

impl<F: Future + Unpin> Future for OnlyWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().poll_with(cx, |f, cx| f.poll(cx))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for OnlyWhenWoken<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_with(cx, |r, cx| r.poll_read(cx, buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::AsyncWriteExt;

    /// Counts its polls; pending until `ready` is set, waking whoever polled it last.
    #[derive(Default)]
    struct Gate {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: AtomicWaker,
    }

    impl Gate {
        fn open(&self) {
            self.ready.store(true, Ordering::Release);
            self.waker.wake();
        }
    }

    impl Future for &Gate {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.waker.register(cx.waker());
            if self.ready.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn noop_cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn the_inner_future_is_polled_first_then_only_after_it_woke_the_task() {
        let gate = Gate::default();
        let mut f = OnlyWhenWoken::new(&gate);
        let mut cx = noop_cx();
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(gate.polls.load(Ordering::Relaxed), 1, "polled again without a wake-up");
        gate.open();
        assert!(Pin::new(&mut f).poll(&mut cx).is_ready());
        assert_eq!(gate.polls.load(Ordering::Relaxed), 2);
        // Once ready, it is asked again next time (it may have more), with no wake-up needed.
        assert!(Pin::new(&mut f).poll(&mut cx).is_ready());
        assert_eq!(gate.polls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_wake_up_from_the_inner_source_reaches_the_task() {
        let gate = Arc::new(Gate::default());
        let opener = Arc::clone(&gate);
        let waiting = tokio::spawn(async move { OnlyWhenWoken::new(&*gate).await });
        tokio::task::yield_now().await;
        opener.open();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the task was never woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_reader_is_read_through_in_full_across_wake_ups() {
        let (mut tx, rx) = tokio::io::duplex(4);
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut OnlyWhenWoken::new(rx), &mut all)
                .await
                .map(|_| all)
        });
        let data: Vec<u8> = (0..=255).cycle().take(10_000).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        assert_eq!(reading.await.unwrap().unwrap(), data);
    }
}
