//! Chat lines on the node's stdout, written by a thread of their own: a reader that stops
//! reading (a full pipe) holds up that thread, never the event loop that serves requests.
//! (`tests/chat_supervision.rs` floods a one-thread node whose stdout nobody reads.)

use std::io::Write;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use tokio::sync::oneshot;

use crate::names::escape_text;

/// Lines waiting to be written; beyond this a line is dropped, with a warning.
const QUEUE: usize = 1024;

/// A line, and where to say whether it was written (or why not).
type Line = (String, oneshot::Sender<Result<(), String>>);

/// Why a chat line was not printed: said to the sender, who otherwise believes it was.
pub const NOT_READ: &str = "its stdout is not being read (a pipe nobody empties?)";

/// The writer of chat lines, started with the first line.
#[derive(Default)]
pub struct ChatOut {
    queue: OnceLock<SyncSender<Line>>,
}

impl ChatOut {
    /// Writes `SENDER: MESSAGE` as one line, control characters escaped, and returns once it
    /// is written (the caller's deadline bounds the wait, and then says [`NOT_READ`]), or
    /// why it was not: stdout is closed, or so far behind that the line was dropped. The
    /// node goes on either way.
    pub async fn print(&self, from: &str, text: &str) -> Result<(), String> {
        let line = format!("{}: {}\n", escape_text(from), escape_text(text));
        let (done, written) = oneshot::channel();
        match self.queue().try_send((line, done)) {
            Ok(()) => written
                .await
                .unwrap_or_else(|_| Err("it cannot print chat lines".into())),
            Err(TrySendError::Full(_)) => {
                tracing::warn!(from, "stdout is not being read; a chat line was dropped");
                Err(NOT_READ.into())
            }
            Err(TrySendError::Disconnected(_)) => Err("it cannot print chat lines".into()),
        }
    }

    fn queue(&self) -> &SyncSender<Line> {
        self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel::<Line>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("kvnode-chat-out".into())
                .spawn(move || {
                    let mut warned = false;
                    for (line, done) in rx {
                        if done.is_closed() {
                            // Its sender was told it was not printed (its deadline passed
                            // while the line waited): printed now, it would be a lie.
                            continue;
                        }
                        let mut out = std::io::stdout().lock();
                        let written = out.write_all(line.as_bytes()).and_then(|()| out.flush());
                        let _ = done.send(written.map_err(|e| {
                            if !std::mem::replace(&mut warned, true) {
                                tracing::warn!(error = %e, "cannot write chat lines to stdout; they are not printed");
                            }
                            format!("its stdout is closed or broken ({e})")
                        }));
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the thread that prints chat lines; they are dropped");
            }
            tx
        })
    }
}
