//! The wire format: length-prefixed postcard frames and the messages they carry (SPEC §4).
//!
//! It knows no quinn: frames are encoded into byte buffers and read from any tokio
//! `AsyncRead`, so the codec is tested on in-memory pipes and fed random bytes.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use kvnode_replica::Generation;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::gossip::State;
use crate::names::{NodeName, escape_bytes};
use crate::routing::{Entry, RoutingTable};

mod keyring;
pub use keyring::{KeyringOp, KeyringView, NodeKeyring};

/// Bumped on any incompatible change; checked first in the handshake. (5: `BucketOp::Create`
/// `BucketOp::PutExisting` and `BucketOp::PutReporting`, which a node of version 4 could not
/// decode. 6: a routing entry holds a list of replicas where it held one node, in tables,
/// gossip and `route --set`, and `Reply::Owner` carries the range's replicas; a node of
/// version 5 would misread both. 7: `Request::Stats` and `Reply::Stats`, for `kvnode stats`.
/// 8: `Request::Keyring` and its replies, for `kvnode secret`. 9: nodes send each other raft
/// frames, `kvnode_replica::Frame` length-prefixed, on unidirectional streams, which a node of
/// version 8 does not accept. 10: a raft frame also carries the lost-state rule's probes and
/// their answers, and `kvnode stats`'s figures the replicated ranges held by role, which a
/// node of version 9 would misread. 11: `BucketOp::Watch`, `Reply::Changes` and the watch
/// errors, for `kvnode watch`. 12: each unidirectional stream between nodes starts with a byte
/// saying what it carries, raft frames (0) or one snapshot sent whole in chunks (1), which a
/// node of version 11 would read as the start of a frame; and `WatchPosition::range`, for
/// watches of replicated ranges. 13: a routing table carries the moves under way,
/// `SetTableIf::force`, and `Request::FinishMove`, for moving data with the table (issue 26);
/// `RemoteError::LeaderMoved`. 14: a snapshot stream of a range on disk carries the range in
/// parts (`kvnode_replica::SnapshotPart`) after a head announcing no data, which a node of
/// version 13 would take as an empty range; `Request::Moves` and `Request::RangeSize`. 15: each
/// raft message, probe and snapshot head carries its group's generation, and a routing table
/// the generation of each range's group (`kvnode_replica::Generation`, issue 26); a raft frame
/// carries `removed`, the answers to vote requests from a node a group no longer counts. 16: a
/// routing table carries `then`, the table to plan once its moves are done (a replicated
/// range split or merged by way of one node). 17: `Request::FinishMove` carries `ended`, the
/// history a move into one node sealed there, without which such a move is not finished, and
/// `under`, the table it was finished by.)
pub const PROTOCOL_VERSION: u16 = 17;
/// The TLS ALPN identifier of this protocol.
pub const ALPN: &[u8] = b"kvnode/1";
/// The largest frame either side accepts, checked before allocating.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// The largest handshake frame: a handshake message is a name, a nonce and a MAC.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Bucket names and keys are 1 to 1024 bytes.
pub const MAX_BUCKET: usize = 1024;
pub const MAX_KEY: usize = 1024;
/// Values are at most 8 MiB.
pub const MAX_VALUE: usize = 8 * 1024 * 1024;
/// A request may cross at most this many nodes.
pub const MAX_HOPS: usize = 8;
/// Chat messages are at most this many bytes.
pub const MAX_CHAT: usize = 64 * 1024;
/// The keys one answer to `keys` carries at most, in bytes: a quarter of a frame, so that a
/// bucket of any size is listed in pieces.
pub const KEYS_PAGE: usize = 4 * 1024 * 1024;
const LEN_PREFIX: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    /// The payload is not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(postcard::Error),
    /// A message could not be encoded (it would exceed the frame limit).
    #[error("could not encode frame: {0}")]
    Encode(postcard::Error),
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Appends one frame (4-byte big-endian length, then the postcard payload) to `out`. On an
/// error, `out` is left as it was (it may hold other frames of a batch).
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    if let Err(e) = postcard::serialize_with_flavor(msg, Append(&mut *out)) {
        out.truncate(start);
        return Err(FrameError::Encode(e));
    }
    let len = out.len() - start - LEN_PREFIX;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max: MAX_FRAME });
    }
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends one frame whose payload is already bytes (a raft frame, a snapshot's chunk): the
/// same 4-byte big-endian length as [`encode_frame`]'s, then `payload`. The caller keeps it
/// within what the reader allows.
pub fn frame_bytes(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends the encoding of `request` alone to `out`, to be framed later by
/// [`encode_request_frame`]; gives back its length. On an error, `out` is left as it was.
pub fn encode_request_body(request: &Request, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let start = out.len();
    if let Err(e) = postcard::serialize_with_flavor(request, Append(&mut *out)) {
        out.truncate(start);
        return Err(FrameError::Encode(e));
    }
    // The id and timeout in front take at most 15 bytes.
    let len = out.len() - start;
    if len + 15 > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max: MAX_FRAME });
    }
    Ok(len)
}

/// Appends the frame of a request whose body [`encode_request_body`] encoded: the same bytes
/// as a [`RequestFrameRef`] with that request, the timeout stamped now.
pub fn encode_request_frame(id: u64, timeout_ms: u32, body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    postcard::serialize_with_flavor(&(id, timeout_ms), Append(&mut *out)).expect("two integers encode");
    out.extend_from_slice(body);
    let len = (out.len() - start - LEN_PREFIX) as u32;
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// A postcard output that appends to a borrowed buffer.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes one message as a fresh frame.
pub fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(64);
    encode_frame(msg, &mut out)?;
    Ok(out)
}

/// Decodes a payload (a frame without its length prefix); trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(payload) {
        Ok((msg, [])) => Ok(msg),
        // A well-formed message followed by junk is as suspect as junk.
        Ok(_) => Err(FrameError::Decode(postcard::Error::DeserializeBadEncoding)),
        Err(e) => Err(FrameError::Decode(e)),
    }
}

/// Bytes that frames still being received may hold on one connection; more wait.
pub const UNFINISHED_FRAMES_PER_CONNECTION: usize = 32 * 1024 * 1024;
/// Bytes that frames still being received may hold on the whole node; more wait.
pub const UNFINISHED_FRAMES_PER_NODE: usize = 128 * 1024 * 1024;
/// Frames up to this size are read without a share of the budget: a stream buffers at most
/// this much of one before it is whole, and small requests never wait behind large ones.
pub const SMALL_FRAME: usize = 64 * 1024;

/// What frames still being received may hold, in bytes, on one connection and on the whole
/// node. A reader takes a larger frame's whole announced length from both before it reads
/// its body, and gives it back once the frame is whole: past the budget, a stream is not
/// read on, and QUIC flow control holds the sender back. (A share of the announced length,
/// not of the bytes received, so that streams never wait for each other half-way through
/// their frames.)
#[derive(Clone)]
pub struct FrameBudget {
    connection: Arc<Semaphore>,
    node: Arc<Semaphore>,
    /// The sizes of the two: a frame larger than a whole budget takes all of it.
    sizes: (u32, u32),
}

impl FrameBudget {
    /// A node's budget of `bytes`; each connection takes its own share with
    /// [`FrameBudget::for_connection`].
    pub fn node(bytes: usize) -> Self {
        let bytes = bytes.min(u32::MAX as usize);
        let node = Arc::new(Semaphore::new(bytes));
        Self {
            connection: Arc::clone(&node),
            node,
            sizes: (bytes as u32, bytes as u32),
        }
    }

    /// A budget of `bytes` for one connection, within this node's.
    pub fn for_connection(&self, bytes: usize) -> Self {
        let bytes = bytes.min(u32::MAX as usize);
        Self {
            connection: Arc::new(Semaphore::new(bytes)),
            node: Arc::clone(&self.node),
            sizes: (bytes as u32, self.sizes.1),
        }
    }
}

/// Reads frames from a byte stream, several per read when the peer pipelines.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
    budget: Option<FrameBudget>,
    /// The share of the budget the frame being received holds.
    held: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            max,
            budget: None,
            held: None,
        }
    }

    /// Reads frames larger than [`SMALL_FRAME`] only within `budget`.
    pub fn with_budget(mut self, budget: FrameBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The next frame's payload, or `None` when the stream ended cleanly between frames.
    ///
    /// The length is checked against the limit before any buffer grows for it.
    pub async fn next_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if self.buf.len() >= LEN_PREFIX {
                let len = u32::from_be_bytes(self.buf[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
                if len > self.max {
                    return Err(FrameError::TooLarge { len, max: self.max });
                }
                if self.buf.len() >= LEN_PREFIX + len {
                    self.buf.advance(LEN_PREFIX);
                    self.held = None; // the frame is whole: its share goes back
                    return Ok(Some(self.buf.split_to(len)));
                }
                if len > SMALL_FRAME
                    && self.held.is_none()
                    && let Some(budget) = &self.budget
                {
                    // Not read on until the budget has room for the whole frame. (Cancelled
                    // here, nothing is held: the next call asks again.)
                    let n = len as u32;
                    let connection = Arc::clone(&budget.connection).acquire_many_owned(n.min(budget.sizes.0));
                    let connection = connection.await.expect("the budget is never closed");
                    let node = Arc::clone(&budget.node).acquire_many_owned(n.min(budget.sizes.1));
                    let node = node.await.expect("the budget is never closed");
                    self.held = Some((connection, node));
                }
                self.buf.reserve(LEN_PREFIX + len - self.buf.len());
            } else {
                self.buf.reserve(LEN_PREFIX);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    got => Err(FrameError::Truncated {
                        got,
                        want: self.frame_len().unwrap_or(LEN_PREFIX),
                    }),
                };
            }
        }
    }

    /// Reads and decodes one message; a clean end of stream is `None`.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_frame().await? {
            Some(payload) => decode(&payload).map(Some),
            None => Ok(None),
        }
    }

    /// Whether a whole frame is already buffered (so a writer can wait to batch replies).
    pub fn has_buffered_frame(&self) -> bool {
        self.frame_len().is_some_and(|len| self.buf.len() >= len)
    }

    /// The whole length of the frame at the front of the buffer, its length prefix
    /// included, once the prefix is buffered.
    fn frame_len(&self) -> Option<usize> {
        let prefix = self.buf.get(..LEN_PREFIX)?;
        Some(LEN_PREFIX + u32::from_be_bytes(prefix.try_into().ok()?) as usize)
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake messages (see `auth` for what the MACs cover).

/// Who opened the connection: a command-line client or another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Client,
    Node,
}

/// The first message each side sends. `version` is the first field so that a peer of any
/// version can read it and refuse clearly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    /// A node's name, or `client@HOST` / the `--as` name for a client.
    pub name: String,
    /// Fresh random bytes; both nonces go into both proofs.
    pub nonce: [u8; 32],
    /// Where a node can be reached (its listen address), so peers can gossip it.
    pub listen: Option<String>,
}

/// The proof that the sender knows the shared secret, bound to this connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub mac: [u8; 32],
}

/// Reads the protocol version from the front of a `Hello` payload, whatever follows.
pub fn peek_version(payload: &[u8]) -> Option<u16> {
    postcard::take_from_bytes::<u16>(payload).ok().map(|(v, _)| v)
}

// ---------------------------------------------------------------------------------------------
// Requests and responses.

/// One request on a stream; `id` matches it to its response (responses may come out of order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    /// What is left of the caller's deadline, in milliseconds; it shrinks at every hop.
    pub timeout_ms: u32,
    pub request: Request,
}

/// A [`RequestFrame`] that borrows its request, so a caller can encode a request it keeps
/// (and reuses); it encodes to exactly the same bytes.
#[derive(Debug, Serialize)]
pub struct RequestFrameRef<'a> {
    pub id: u64,
    pub timeout_ms: u32,
    pub request: &'a Request,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub result: Result<Reply, RemoteError>,
}

/// Everything a client or a node can ask a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A request about one bucket, routed to its owner hop by hop.
    Bucket(BucketRequest),
    /// The routing table this node holds.
    Table,
    /// Set a new routing table for the whole cluster (spread by gossip).
    SetTable { entries: Vec<Entry> },
    /// The members this node knows.
    Members,
    /// Is the node alive? Answered with its name.
    Ping,
    /// Deliver a chat line to node `to` (forwarded when the receiver is not `to`).
    Chat(ChatMessage),
    /// A gossip message too large for a datagram (push-pull, join, leave), for the driver.
    Gossip { message: ByteBuf },
    /// Set a new routing table if the cluster's is still at version `expected` (the one the
    /// caller read): compare-and-set, decided by one coordinating node (see
    /// `Node::set_table`). `forwarded`: sent on by a node to the coordinator it chose, which
    /// then decides rather than sending it on again. Answered with the table now held; one
    /// still at `expected` means the entries were already those (no change).
    ///
    /// Placed before the test-only variants, not after: their presence must not change
    /// the index of a variant every build has.
    SetTableIf {
        entries: Vec<Entry>,
        expected: u64,
        forwarded: bool,
        /// Set the entries as given, moving no data (`route --set --force`): a range whose
        /// one node changes leaves its data behind. Without it, such a range moves.
        force: bool,
        /// A moving range given the nodes it is on calls its move off (`route --set
        /// --call-off`); without it, such an entry leaves the move going (so a table read
        /// with `route --table` and set again changes no move). (Protocol 14.)
        call_off: bool,
    },
    /// Stop, as on SIGTERM: announce `left`, finish the requests in flight, exit
    /// (`kvnode stop NAME --via NODE`). Answered `Done` before the node stops.
    Leave,
    /// The node's figures (`kvnode stats`), as `/metrics` shows them; answered
    /// [`Reply::Stats`]. (Protocol version 7.)
    Stats,
    /// `kvnode secret`: list or change the keyring. `fan_out`: sent by a client, so the
    /// node applies it on every live member and answers `Reply::KeyringReport`; else (from
    /// that node) applied here alone, answered `Reply::KeyringState`. (Protocol version 8.)
    Keyring { op: KeyringOp, fan_out: bool },
    /// Node to node: the move of `entry`'s range to `entry`'s nodes has taken effect in the
    /// range's group (sent by its leader), so the table may name them (`Node::finish_move`).
    /// `forwarded` as for `SetTableIf`. Answered with the table now held. (Protocol 13.)
    /// `ended`: the move ends the group (`entry` is one node), and this is the history its
    /// only voter sealed (`store::ended`): taken whatever move the table holds of the range,
    /// as long as the table runs that history; a move into one node is finished only with
    /// it. `under`: the version and setter of the table the sender finished the move by; a
    /// coordinator holding an older table refuses (the sender asks again once gossip brought
    /// it the newer one), so a finish never lands on a table without the move's history
    /// behind it. (Protocol 17.)
    FinishMove {
        entry: Entry,
        ended: Option<Generation>,
        under: (u64, String),
        forwarded: bool,
    },
    /// What this node knows of moves (`kvnode route --status`): the ranges it took in or is
    /// taking in, with their progress, and the moves it saw finish. Answered
    /// [`Reply::Moves`]. (Protocol 14.)
    Moves,
    /// How many keys this node holds of range `first..=last` and their bytes (`route
    /// --balance`'s plan). Answered [`Reply::RangeSize`]. (Protocol 14.)
    RangeSize { first: u8, last: u8 },
    /// Test builds only: a request that panics inside its task.
    #[cfg(feature = "fault-injection")]
    Panic,
    /// Test builds only: crash one long-lived part of the node.
    #[cfg(feature = "fault-injection")]
    CrashPart { part: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRequest {
    #[serde(with = "serde_bytes")]
    pub bucket: Vec<u8>,
    pub op: BucketOp,
    /// The nodes this request has crossed, first to last.
    pub path: Vec<NodeName>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The bucket's keys in order, from the first after `after` (from the first without), as
    /// many as one answer carries ([`KEYS_PAGE`]).
    Keys { after: Option<ByteBuf> },
    /// Which node owns the bucket; answered by the owner with the path taken.
    Route,
    /// Create the bucket, empty, if it does not exist (the guide's `CREATE`, `kvnode create`);
    /// creating one that exists is no error, as with the guide's `KV.Registry.create`.
    /// (Last, so that the variants before it keep their index on the wire.)
    Create,
    /// A put into a bucket that must exist already: `BucketNotFound` if it was never created
    /// (the guide's `PUT`, where only `CREATE` makes a bucket).
    PutExisting {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// A put (creating the bucket if needed) answered [`Reply::Stored`], which says whether
    /// the key is new (RESP's `HSET` counts the new fields).
    PutReporting {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// `kvnode watch`: the bucket's changes (only `key`'s, if given) after `from`, a
    /// position the owner gave before, answered [`Reply::Changes`] as soon as there is one,
    /// or empty after `wait_ms` (at most half the request's deadline). `from: None` starts a
    /// watch: answered at once, empty, with the position it starts at.
    /// A long poll: each is a resume from the last position seen, so no node keeps anything
    /// per watcher. (Protocol version 11.)
    Watch {
        key: Option<ByteBuf>,
        // Boxed (the same bytes on the wire): every bucket request carries a `BucketOp`, and
        // the position inline made it 72 bytes, copied through every request's futures.
        from: Option<Box<WatchPosition>>,
        wait_ms: u32,
    },
}

/// Where a watch is in its owner's change feed: the owner, the feed's epoch (random at each
/// start of the node) and the last change looked at (`seq`, 1 for the feed's first change).
/// In a replicated range (`range` is its first and last byte), `seq` is instead the range's
/// Raft log index, alike on every replica, `node` the replica that answered and `epoch` 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchPosition {
    pub node: NodeName,
    pub epoch: u64,
    pub seq: u64,
    pub range: Option<(u8, u8)>,
}

impl WatchPosition {
    /// Both are positions in one feed: the same node's since its start, or the same
    /// replicated range's log (wherever they were given).
    pub fn same_feed(&self, other: &WatchPosition) -> bool {
        match (self.range, other.range) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.node == other.node && self.epoch == other.epoch,
            _ => false,
        }
    }
}

/// One change to a watched bucket; `value` is `None` for a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub seq: u64,
    pub key: ByteBuf,
    pub value: Option<ByteBuf>,
}

/// The changes one watch poll carries at most, in bytes (at least one, whatever its size).
pub const WATCH_PAGE: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub to: NodeName,
    /// Where `to` listens, when the sender was told (`chat NAME@HOST:PORT --via NODE`): for a
    /// node that knows no `to` by its directory, `[peers]` or gossip.
    pub at: Option<String>,
    pub from: String,
    pub text: String,
    pub path: Vec<NodeName>,
}

/// A chat line as printed: who said what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    pub from: String,
    pub text: String,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Value(ByteBuf),
    /// Keys in order; `more`: ask again after the last for the rest.
    Keys {
        keys: Vec<ByteBuf>,
        more: bool,
    },
    /// A route query's answer: the owner (for a replicated range, the node answering for
    /// it), the nodes the query crossed, and every node that holds the range.
    Owner {
        node: NodeName,
        path: Vec<NodeName>,
        replicas: Vec<NodeName>,
    },
    Table(RoutingTable),
    Members(Vec<MemberInfo>),
    Pong {
        name: NodeName,
    },
    ChatAck {
        reply: Option<ChatLine>,
    },
    /// A [`BucketOp::PutReporting`] was stored; `new`: the key was not there before.
    /// (Last, so that the variants before it keep their index on the wire.)
    Stored {
        new: bool,
    },
    /// The answer to [`Request::Stats`] (boxed: it is far larger than the others).
    Stats(Box<crate::metrics::StatsReport>),
    /// A node's keyring after a [`Request::Keyring`] applied there alone.
    KeyringState(KeyringView),
    /// A [`Request::Keyring`]'s outcome on every member, in name order.
    KeyringReport(Vec<NodeKeyring>),
    /// The answer to [`BucketOp::Watch`]: the changes, in order, and the position to ask
    /// from next (every change up to it was looked at, those not watched left out).
    Changes {
        events: Vec<WatchEvent>,
        upto: WatchPosition,
    },
    /// The answer to [`Request::Moves`].
    Moves(MovesReport),
    /// The answer to [`Request::RangeSize`]: keys, and their keys' and values' bytes.
    RangeSize {
        keys: u64,
        bytes: u64,
    },
}

/// What one node knows of moves (issue 26): the ranges it took in as a move's new node (or a
/// replica far behind), newest last, and the moves it saw finish in the table, newest last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovesReport {
    pub installs: Vec<InstallReport>,
    pub done: Vec<MoveDone>,
}

/// A range's data streamed into this node: from which node, how much so far, and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    /// `a-m`.
    pub range: String,
    pub from: String,
    pub keys: u64,
    pub bytes: u64,
    /// Milliseconds from its start to its end, or to now while it goes on.
    pub took_ms: u64,
    /// Milliseconds since it ended (0 while it goes on).
    pub ago_ms: u64,
    pub state: InstallState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstallState {
    Receiving,
    Written,
    Failed(String),
}

impl InstallState {
    /// As text and JSON spell it.
    pub fn as_str(&self) -> &str {
        match self {
            InstallState::Receiving => "receiving",
            InstallState::Written => "written",
            InstallState::Failed(_) => "failed",
        }
    }
}

/// A move this node saw finish: the table version that named the move's nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveDone {
    pub range: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub version: u64,
    pub ago_ms: u64,
}

/// One member as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: NodeName,
    pub addr: String,
    /// Typed, so no code compares its spelling; text and JSON output spell it `as_str`.
    pub state: State,
    pub incarnation: u64,
    /// Milliseconds since this node last heard of a change of the member.
    pub last_change_ms: u64,
    /// Milliseconds since this node last heard from the member itself; `None`: only
    /// through others so far.
    pub last_seen_ms: Option<u64>,
}

impl MemberInfo {
    /// Alive, or suspected but not yet declared dead: worth sending to.
    pub fn is_live(&self) -> bool {
        self.state.is_live()
    }
}

/// A typed failure; every variant maps onto one exit code of SPEC §1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The bucket exists but not the key (exit 1).
    #[error("key \"{}\" not found in bucket \"{}\"", escape_bytes(key), escape_bytes(bucket))]
    KeyNotFound { bucket: ByteBuf, key: ByteBuf },
    /// No write ever created the bucket (exit 1).
    #[error(
        "bucket \"{}\" not found (buckets are created by their first put, or by create)",
        escape_bytes(bucket)
    )]
    BucketNotFound { bucket: ByteBuf },
    /// The request breaks a limit or is malformed (exit 2).
    #[error("invalid request: {reason}")]
    InvalidInput { reason: String },
    /// A node on the way could not be reached (exit 3).
    #[error("node {node} ({addr}) is unreachable: {reason}")]
    Unreachable { node: String, addr: String, reason: String },
    /// The caller's deadline passed before the answer (exit 3).
    #[error(
        "deadline passed after {waited_ms} ms waiting for {node}; the node may be down or overloaded (raise --timeout to wait longer)"
    )]
    DeadlineExceeded { node: String, waited_ms: u64 },
    /// The node is shutting down and takes no new requests (exit 3).
    #[error("node {node} is shutting down")]
    ShuttingDown { node: String },
    /// A node on the way refused another's secret (exit 4).
    #[error("authentication refused between {from} and {to}: the secrets differ")]
    AuthRefused { from: String, to: String },
    /// No routing entry covers the bucket (exit 5).
    #[error("{message}")]
    NoRoute { message: String },
    /// The request came back to a node it had crossed (exit 5).
    #[error("routing loop: {}; {TABLES_DISAGREE}", join_path(path))]
    RoutingLoop { path: Vec<String> },
    /// The request crossed more than [`MAX_HOPS`] nodes (exit 5).
    #[error("hop limit of {MAX_HOPS} reached: {}; {TABLES_DISAGREE}", join_path(path))]
    HopLimit { path: Vec<String> },
    /// The node failed while serving the request (exit 6).
    #[error("internal error on node {node}: {reason}")]
    Internal { node: String, reason: String },
    /// A compare-and-set of the routing table found another version than the caller read:
    /// another set won (exit 5).
    #[error(
        "the routing table changed underneath this set: it was read at version {expected}, and {node} holds version {found} (set by {setter}); read it again with `kvnode route --table` and set it again if still needed"
    )]
    TableChanged {
        node: String,
        expected: u64,
        found: u64,
        setter: String,
    },
    /// The node had no room for the request and dropped it; worth retrying later (exit 3).
    /// Said, for one, by a node whose gossip inbox is full.
    #[error("node {node} is overloaded and dropped the request: {reason}")]
    Overloaded { node: String, reason: String },
    /// A watch cannot resume where it was: its owner restarted or changed, so changes may
    /// have been missed (exit 3).
    #[error(
        "the watch cannot resume: {reason}, so changes may have been missed; start `kvnode watch` again, and read the current values with `kvnode get`/`kvnode keys` if they matter"
    )]
    WatchGap { node: String, reason: String },
    /// A watcher read its changes more slowly than they came, and the owner's feed dropped
    /// those it had not read yet (exit 3).
    #[error(
        "the watch fell behind: node {node} keeps only its last {kept}, and those after this watch's position are gone; start `kvnode watch` again (reading faster, or watching one key), and read the current values with `kvnode get`/`kvnode keys` if they matter"
    )]
    WatchFellBehind { node: String, kept: String },
    /// A replica found that its range's leader is a node this request already crossed (the
    /// leader moved to it meanwhile): the request was not applied, and the node before it
    /// asks again (exit 3 if it reaches a client). (Protocol 13.)
    #[error(
        "range {range}'s leadership moved to {leader}, which this request already passed through, while {node} held it; it was not applied: retry it"
    )]
    LeaderMoved {
        node: String,
        range: String,
        leader: String,
    },
}

/// What a routing loop or a hop limit means, and what to do.
const TABLES_DISAGREE: &str =
    "these nodes' tables disagree (compare `kvnode route --table --via NODE`, then set one with `kvnode route --set`)";

fn join_path(path: &[String]) -> String {
    path.join(" -> ")
}

impl RemoteError {
    /// The exit code of SPEC §1 for this failure.
    pub fn exit_code(&self) -> u8 {
        use RemoteError::*;
        match self {
            KeyNotFound { .. } | BucketNotFound { .. } => 1,
            InvalidInput { .. } => 2,
            Unreachable { .. }
            | DeadlineExceeded { .. }
            | ShuttingDown { .. }
            | Overloaded { .. }
            | WatchGap { .. }
            | WatchFellBehind { .. }
            | LeaderMoved { .. } => 3,
            AuthRefused { .. } => 4,
            NoRoute { .. } | RoutingLoop { .. } | HopLimit { .. } | TableChanged { .. } => 5,
            Internal { .. } => 6,
        }
    }

    pub fn invalid(reason: impl fmt::Display) -> Self {
        RemoteError::InvalidInput {
            reason: reason.to_string(),
        }
    }
}

/// Checks the limits of SPEC §4 on a bucket name.
pub fn check_bucket(bucket: &[u8]) -> Result<(), String> {
    check_len("bucket name", bucket.len(), 1, MAX_BUCKET)
}

/// Checks the limits of SPEC §4 on a key.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    check_len("key", key.len(), 1, MAX_KEY)
}

/// Checks the limits of SPEC §4 on a value.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    check_len("value", value.len(), 0, MAX_VALUE)
}

fn check_len(what: &str, len: usize, min: usize, max: usize) -> Result<(), String> {
    if len < min {
        Err(format!("the {what} is empty; it must be 1 to {max} bytes"))
    } else if len > max {
        Err(format!("the {what} is {len} bytes; the limit is {max} bytes"))
    } else {
        Ok(())
    }
}

impl BucketRequest {
    /// Checks every size limit of the request before it is acted on.
    pub fn validate(&self) -> Result<(), String> {
        check_bucket(&self.bucket)?;
        match &self.op {
            BucketOp::Put { key, value }
            | BucketOp::PutExisting { key, value }
            | BucketOp::PutReporting { key, value } => {
                check_key(key)?;
                check_value(value)
            }
            BucketOp::Get { key } | BucketOp::Delete { key } => check_key(key),
            BucketOp::Keys { after: Some(key) } => check_key(key),
            BucketOp::Keys { after: None } | BucketOp::Route | BucketOp::Create => Ok(()),
            BucketOp::Watch { key: Some(key), .. } => check_key(key),
            BucketOp::Watch { key: None, .. } => Ok(()),
        }?;
        if self.path.len() > MAX_HOPS + 1 {
            return Err(format!("path of {} hops is over the limit", self.path.len()));
        }
        Ok(())
    }
}

impl BucketOp {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BucketOp::Put { .. } | BucketOp::PutExisting { .. } | BucketOp::PutReporting { .. } => "put",
            BucketOp::Get { .. } => "get",
            BucketOp::Delete { .. } => "delete",
            BucketOp::Keys { .. } => "keys",
            BucketOp::Route => "route",
            BucketOp::Create => "create",
            BucketOp::Watch { .. } => "watch",
        }
    }
}

impl Request {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Bucket(b) => b.op.kind(),
            Request::Table => "table",
            Request::SetTable { .. } => "set-table",
            Request::Members => "members",
            Request::Ping => "ping",
            Request::Chat(_) => "chat",
            Request::Gossip { .. } => "gossip",
            Request::SetTableIf { .. } => "set-table",
            Request::Leave => "leave",
            Request::Stats => "stats",
            Request::Keyring { .. } => "keyring",
            Request::FinishMove { .. } => "finish-move",
            Request::Moves => "moves",
            Request::RangeSize { .. } => "range-size",
            #[cfg(feature = "fault-injection")]
            Request::Panic => "panic",
            #[cfg(feature = "fault-injection")]
            Request::CrashPart { .. } => "crash-part",
        }
    }

    /// Whether sending this request a second time, when the answer to the first was lost,
    /// is harmless: reads only. Not a put: the first may have been carried out before the
    /// answer was lost, and a write by someone else since would be undone by the second;
    /// not a delete (the second would find the key gone), a chat line (said twice) or a new
    /// table (a second version). The caller of those hears "try again" and decides. A
    /// bucket's creation may be repeated: creating a bucket that exists changes nothing.
    pub fn may_repeat(&self) -> bool {
        match self {
            Request::Bucket(b) => matches!(
                b.op,
                BucketOp::Get { .. }
                    | BucketOp::Keys { .. }
                    | BucketOp::Route
                    | BucketOp::Create
                    | BucketOp::Watch { .. }
            ),
            Request::Table
            | Request::Members
            | Request::Ping
            | Request::Stats
            | Request::Moves
            | Request::RangeSize { .. } => true,
            // Each change may be repeated (installing a secret held changes nothing), but one
            // that fails part way is for the operator to see, not to be sent again unasked.
            Request::Keyring { op, .. } => *op == KeyringOp::List,
            // Finishing a move twice changes nothing; the leader repeats it until it is seen.
            Request::FinishMove { .. } => true,
            Request::SetTable { .. }
            | Request::SetTableIf { .. }
            | Request::Leave
            | Request::Chat(_)
            | Request::Gossip { .. } => false,
            #[cfg(feature = "fault-injection")]
            Request::Panic | Request::CrashPart { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> RequestFrame {
        RequestFrame {
            id: 7,
            timeout_ms: 5000,
            request: Request::Bucket(BucketRequest {
                bucket: b"shopping".to_vec(),
                op: BucketOp::Put {
                    key: b"eggs".to_vec(),
                    value: b"3".to_vec(),
                },
                path: vec![],
            }),
        }
    }

    #[test]
    fn reads_may_be_sent_twice_writes_chat_and_tables_may_not() {
        let bucket = |op| {
            Request::Bucket(BucketRequest {
                bucket: b"b".to_vec(),
                op,
                path: vec![],
            })
        };
        let key = || b"k".to_vec();
        for request in [
            bucket(BucketOp::Get { key: key() }),
            bucket(BucketOp::Keys { after: None }),
            bucket(BucketOp::Route),
            bucket(BucketOp::Create),
            Request::Table,
            Request::Members,
            Request::Ping,
        ] {
            assert!(request.may_repeat(), "{request:?}");
        }
        let chat = ChatMessage {
            to: NodeName::new("kate").unwrap(),
            at: None,
            from: "alex".into(),
            text: "hi".into(),
            path: vec![],
        };
        for request in [
            bucket(BucketOp::Put {
                key: key(),
                value: b"v".to_vec(),
            }),
            bucket(BucketOp::PutReporting {
                key: key(),
                value: b"v".to_vec(),
            }),
            bucket(BucketOp::Delete { key: key() }),
            Request::Chat(chat),
            Request::SetTable { entries: vec![] },
            Request::Gossip {
                message: ByteBuf::new(),
            },
        ] {
            assert!(!request.may_repeat(), "{request:?}");
        }
    }

    #[test]
    fn a_watch_is_checked_like_any_bucket_request_and_may_be_asked_again() {
        let watch = |key: Option<&[u8]>| BucketRequest {
            bucket: b"b".to_vec(),
            op: BucketOp::Watch {
                key: key.map(|k| ByteBuf::from(k.to_vec())),
                from: None,
                wait_ms: u32::MAX,
            },
            path: vec![],
        };
        assert!(watch(None).validate().is_ok());
        assert!(watch(Some(b"k")).validate().is_ok());
        assert!(watch(Some(b"")).validate().unwrap_err().contains("key is empty"));
        assert!(watch(Some(&[0; MAX_KEY + 1])).validate().is_err());
        // A poll only reads: one whose answer was lost is asked again from the same position.
        assert!(Request::Bucket(watch(None)).may_repeat());
        assert_eq!(Request::Bucket(watch(None)).kind(), "watch");
        assert!(
            RemoteError::WatchGap {
                node: "n1".into(),
                reason: "r".into()
            }
            .exit_code()
                == 3
                && RemoteError::WatchFellBehind {
                    node: "n1".into(),
                    kept: "k".into()
                }
                .exit_code()
                    == 3
        );
    }

    async fn read_all<T: DeserializeOwned>(bytes: Vec<u8>, max: usize) -> Vec<Result<T, String>> {
        let mut reader = FrameReader::new(&bytes[..], max);
        let mut out = Vec::new();
        loop {
            match reader.next::<T>().await {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn a_request_framed_from_its_body_is_the_frame_of_the_whole() {
        let whole = frame(&sample()).unwrap();
        let mut body = Vec::new();
        let len = encode_request_body(&sample().request, &mut body).unwrap();
        assert_eq!(len, body.len());
        let mut framed = Vec::new();
        encode_request_frame(7, 5000, &body, &mut framed);
        assert_eq!(framed, whole);
    }

    #[tokio::test]
    async fn frames_round_trip_several_per_buffer() {
        let mut bytes = Vec::new();
        for _ in 0..3 {
            encode_frame(&sample(), &mut bytes).unwrap();
        }
        let got = read_all::<RequestFrame>(bytes, MAX_FRAME).await;
        assert_eq!(got, vec![Ok(sample()), Ok(sample()), Ok(sample())]);
    }

    #[tokio::test]
    async fn a_whole_frame_left_in_the_buffer_is_seen_and_a_partial_one_is_not() {
        let mut bytes = Vec::new();
        encode_frame(&sample(), &mut bytes).unwrap();
        encode_frame(&sample(), &mut bytes).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[0, 0]); // half a length prefix of a third frame
        let mut reader = FrameReader::new(&bytes[..], MAX_FRAME);
        reader.next_frame().await.unwrap().unwrap();
        assert!(reader.has_buffered_frame(), "the second frame is all there");
        reader.next_frame().await.unwrap().unwrap();
        assert!(!reader.has_buffered_frame(), "two bytes are not a frame");
        let mut exact = FrameReader::new(&bytes[..whole], MAX_FRAME);
        exact.next_frame().await.unwrap().unwrap();
        assert!(exact.has_buffered_frame(), "the last frame, with nothing after it");
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_allocating() {
        let bytes = (u32::MAX).to_be_bytes().to_vec();
        let mut reader = FrameReader::new(&bytes[..], MAX_FRAME);
        let err = reader.next_frame().await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
        assert!(reader.buf.capacity() < 64 * 1024, "no buffer grew for the frame");
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error_not_a_clean_end() {
        let mut bytes = frame(&sample()).unwrap();
        bytes.truncate(bytes.len() - 1);
        let got = read_all::<RequestFrame>(bytes, MAX_FRAME).await;
        assert!(got[0].as_ref().unwrap_err().contains("middle of a frame"));
    }

    #[tokio::test]
    async fn frames_being_received_hold_no_more_than_the_budget() {
        // Eight streams each announce a 1 MiB frame and send a quarter of it; the budget is
        // 2 MiB, so two of them may buffer their frame and the others are not read on.
        let budget = FrameBudget::node(2 * 1024 * 1024).for_connection(2 * 1024 * 1024);
        let mut readers = Vec::new();
        for _ in 0..8 {
            let (mut tx, rx) = tokio::io::duplex(2 * 1024 * 1024);
            let mut bytes = ((1024 * 1024) as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&[1; 256 * 1024]);
            tokio::io::AsyncWriteExt::write_all(&mut tx, &bytes).await.unwrap();
            let mut reader = FrameReader::new(rx, MAX_FRAME).with_budget(budget.clone());
            tokio::select! {
                got = reader.next_frame() => panic!("a partial frame was complete: {got:?}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
            readers.push((reader, tx));
        }
        // (A stream that waits has read no more than its first small read.)
        let reading = readers.iter().filter(|(r, _)| r.buf.len() > 16 * 1024).count();
        let buffered: usize = readers.iter().map(|(r, _)| r.buf.len()).sum();
        assert_eq!(reading, 2, "{buffered} bytes buffered in unfinished frames");
        // Finishing a frame frees its share: a waiting stream then reads on.
        let (mut first, mut tx) = readers.remove(0);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &[1; 768 * 1024])
            .await
            .unwrap();
        assert_eq!(first.next_frame().await.unwrap().unwrap().len(), 1024 * 1024);
        drop(first);
        let mut read_on = 0;
        for (reader, _) in &mut readers {
            tokio::select! {
                _ = reader.next_frame() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
            if reader.buf.len() > 16 * 1024 {
                read_on += 1;
            }
        }
        assert_eq!(read_on, 2, "one stream was waiting for the freed share");
    }

    #[test]
    fn the_version_is_readable_whatever_follows() {
        let hello = Hello {
            version: 4242,
            role: Role::Node,
            name: "foo".into(),
            nonce: [9; 32],
            listen: None,
        };
        let bytes = postcard::to_stdvec(&hello).unwrap();
        assert_eq!(peek_version(&bytes), Some(4242));
    }

    #[test]
    fn limits_name_the_part_and_the_bound() {
        assert_eq!(
            check_bucket(b"").unwrap_err(),
            "the bucket name is empty; it must be 1 to 1024 bytes"
        );
        assert!(
            check_key(&[0; 1025])
                .unwrap_err()
                .contains("1025 bytes; the limit is 1024")
        );
        assert!(check_value(&vec![0; MAX_VALUE + 1]).is_err());
        assert!(check_value(b"").is_ok());
    }

    #[test]
    fn every_error_maps_to_its_exit_code() {
        let b = ByteBuf::from(b"b".to_vec());
        assert_eq!(RemoteError::BucketNotFound { bucket: b.clone() }.exit_code(), 1);
        assert_eq!(RemoteError::invalid("x").exit_code(), 2);
        assert_eq!(
            RemoteError::RoutingLoop {
                path: vec!["foo".into(), "bar".into(), "foo".into()]
            }
            .to_string(),
            "routing loop: foo -> bar -> foo; these nodes' tables disagree (compare `kvnode route --table --via NODE`, then set one with `kvnode route --set`)"
        );
        assert_eq!(RemoteError::HopLimit { path: vec![] }.exit_code(), 5);
        assert_eq!(
            RemoteError::Internal {
                node: "n".into(),
                reason: "r".into()
            }
            .exit_code(),
            6
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Random bytes never panic the decoder, and never make it buffer past the limit.
        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut reader = FrameReader::new(&bytes[..], 1024);
                while let Ok(Some(payload)) = reader.next_frame().await {
                    prop_assert!(payload.len() <= 1024);
                    let _ = decode::<RequestFrame>(&payload);
                    let _ = decode::<ResponseFrame>(&payload);
                    let _ = decode::<Hello>(&payload);
                }
                prop_assert!(reader.buf.capacity() <= 16 * 1024);
                Ok(())
            })?;
        }

        /// A valid frame with bytes flipped decodes to something or to an error, never a panic.
        #[test]
        fn mutated_frames_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = frame(&sample()).unwrap();
            for (at, b) in flips {
                let at = 4 + at % (bytes.len() - 4);
                bytes[at] ^= b;
            }
            let _ = decode::<RequestFrame>(&bytes[4..]);
        }
    }
}
