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

type Line = (String, oneshot::Sender<()>);

/// The writer of chat lines, started with the first line.
#[derive(Default)]
pub struct ChatOut {
    queue: OnceLock<SyncSender<Line>>,
}

impl ChatOut {
    /// Writes `SENDER: MESSAGE` as one line, control characters escaped, and returns once it
    /// is written (the caller's deadline bounds the wait). A closed stdout is not the node's
    /// problem: the line is dropped and the node goes on.
    pub async fn print(&self, from: &str, text: &str) {
        let line = format!("{}: {}\n", escape_text(from), escape_text(text));
        let (done, written) = oneshot::channel();
        match self.queue().try_send((line, done)) {
            Ok(()) => {
                let _ = written.await;
            }
            Err(TrySendError::Full(_)) => {
                tracing::warn!(from, "stdout is not being read; a chat line was dropped");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn queue(&self) -> &SyncSender<Line> {
        self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel::<Line>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("kvnode-chat-out".into())
                .spawn(move || {
                    for (line, done) in rx {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
                        let _ = done.send(());
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the thread that prints chat lines; they are dropped");
            }
            tx
        })
    }
}
