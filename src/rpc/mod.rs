//! Requests and responses multiplexed over one byte stream, many in flight at once.
//!
//! Generic over tokio's `AsyncRead`/`AsyncWrite` (a QUIC stream in production, an in-memory
//! pipe in tests); knows nothing of routing or storage. Frames carry ids, so responses may come
//! back in any order, and each side batches whatever is queued into one write.
//!
//! - `call`: the calling side ([`Channel`], [`PendingCall`]), its writer and its sweeper.
//! - `serve`: the serving loop ([`serve`], [`Handler`], [`Now`]) and its panic guard.
//! - `order`: which of a stream's requests wait for which ([`Class`]: reads behind writes).

mod call;
mod order;
mod serve;
#[cfg(test)]
mod tests;

pub use call::{CallError, Channel, MAX_OUTBOX, PendingCall};
pub use order::Class;
pub use serve::{FinishStream, Handler, Now, ServeContext, StreamKey, new_stream_key, serve};

use crate::wire::{RemoteError, Reply};

/// How many bytes of queued frames one write may carry, on either side.
const MAX_BATCH: usize = 256 * 1024;

type Answer = Result<Reply, RemoteError>;
