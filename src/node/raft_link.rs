//! Raft frames between nodes (issue 25): each node sends a peer its frames on one long-lived
//! unidirectional QUIC stream of the peer connection, opened on first use and again when it
//! breaks (Raft resends what was lost). Each frame is a length-prefixed postcard
//! [`kvnode_replica::Frame`], one round's messages of every group the two share, at most
//! [`kvnode_replica::MAX_FRAME`] bytes.
//!
//! A snapshot goes on a stream of its own, opened for it (so it neither meets the frame
//! limit nor holds up the heartbeats behind it, and its sender learns it arrived): a [`SnapshotHead`], then its data in chunks of
//! [`SNAPSHOT_CHUNK`], then the stream's end; the driver is told whether it arrived. Each
//! unidirectional stream starts with one byte saying which of the two it is.
//!
//! An incoming frame is from the peer the connection authenticated, whatever the frame says
//! (the replica core drops a message whose sender is another). A frame that is oversize or
//! malformed ends that stream, with a log line; the connection and the node go on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvnode_replica::{Frame, Generation, MAX_FRAME, RaftMsg, RangeId, SNAPSHOT_CHUNK, SnapshotHead, SnapshotPart};
use tokio::sync::{Semaphore, mpsc};

use super::Node;
use super::replicas::{Input, Outbox};
use crate::names::NodeName;
use crate::store::RangeView;
use crate::transport::{self, Connection, RecvStream, SendStream};
use crate::wire::InstallState;
use crate::wire::{self, FrameError, FrameReader};

/// Frames waiting for one peer's stream; more are dropped (Raft resends).
const QUEUE: usize = 256;

/// How long a sender may take to reach a peer before the frames for it are dropped.
const CONNECT: Duration = Duration::from_secs(1);

/// How long one frame's write may wait (for flow control a dead peer never grants) before
/// the stream is given up and reopened.
const WRITE: Duration = Duration::from_secs(1);

/// The first byte of a stream of raft frames.
const STREAM_FRAMES: u8 = 0;

/// The first byte of a stream carrying one snapshot.
const STREAM_SNAPSHOT: u8 = 1;

/// How long one chunk of a snapshot may take to write, or to arrive, before the stream is
/// given up (the leader sends the snapshot again later).
const SNAPSHOT_CHUNK_WAIT: Duration = Duration::from_secs(10);

/// How many snapshots a node takes in at once (one sent whole, by an in-memory node, is held
/// in memory until installed; a streamed one holds a part at a time); more wait, their senders
/// held up by flow control.
const SNAPSHOTS_IN: usize = 2;

/// Each peer's queue of outgoing frames, and the task that writes them.
pub(super) struct RaftLinks {
    queues: Mutex<HashMap<NodeName, mpsc::Sender<Frame>>>,
    /// The snapshots being sent, by peer and range: one at a time for each.
    sending: Mutex<HashSet<(NodeName, RangeId)>>,
    /// Room for the snapshots coming in ([`SNAPSHOTS_IN`]).
    receiving: Semaphore,
    /// The connection each peer last sent its raft frames on: alive for sure, so frames to
    /// it go there too. A peer killed and restarted comes back on a new connection while the
    /// old one may look open for a while (until its idle timeout); without this, frames to
    /// it would go into the old one meanwhile.
    heard_on: Mutex<HashMap<NodeName, Connection>>,
}

/// The node as the driver's [`Outbox`].
pub(super) struct NodeOutbox(pub(super) std::sync::Weak<Node>);

impl Default for RaftLinks {
    fn default() -> Self {
        RaftLinks {
            queues: Mutex::default(),
            sending: Mutex::default(),
            receiving: Semaphore::new(SNAPSHOTS_IN),
            heard_on: Mutex::default(),
        }
    }
}

impl Outbox for NodeOutbox {
    fn send(&self, to: &NodeName, frame: Frame) {
        if let Some(node) = self.0.upgrade() {
            node.send_raft(to, frame);
        }
    }

    fn send_snapshot(&self, to: &NodeName, range: RangeId, generation: Generation, msg: RaftMsg) {
        if let Some(node) = self.0.upgrade() {
            node.send_snapshot(to, range, generation, msg);
        }
    }
}

impl Node {
    /// Queues `frame` for `to`'s raft stream, starting its sender on first use.
    fn send_raft(self: &Arc<Self>, to: &NodeName, frame: Frame) {
        let mut queues = self.raft_links.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.entry(to.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            self.tasks.spawn(Arc::clone(self).raft_sender(to.clone(), rx));
            tx
        });
        if queue.try_send(frame).is_err() {
            tracing::debug!(%to, "raft frame dropped: the peer's queue is full (its stream cannot be opened or written)");
        }
    }

    /// Writes the frames queued for `to` on one stream, reopened when it breaks, when a
    /// write stalls, or when `to` has been heard on another connection than the stream's.
    async fn raft_sender(self: Arc<Self>, to: NodeName, mut queue: mpsc::Receiver<Frame>) {
        // The stream, and the id of the connection it is on.
        let mut stream: Option<(SendStream, usize)> = None;
        loop {
            let frame = tokio::select! {
                f = queue.recv() => f,
                () = self.serve.stopping.cancelled() => None,
            };
            let Some(frame) = frame else { return };
            // A round's frame over the limit goes as several (each message whole).
            let mut bytes = Vec::new();
            for payload in frame.encode_within(MAX_FRAME) {
                if payload.len() > MAX_FRAME {
                    tracing::warn!(%to, len = payload.len(), "raft message over the frame limit; dropped");
                    continue;
                }
                wire::frame_bytes(&payload, &mut bytes);
            }
            if bytes.is_empty() {
                continue;
            }
            let heard = self.raft_links.heard_on(&to).filter(Connection::is_alive);
            if let (Some((_, on)), Some(h)) = (&stream, &heard)
                && *on != h.stable_id()
            {
                tracing::debug!(%to, "the peer sends on a newer connection; its raft stream follows");
                stream = None;
            }
            if stream.is_none() {
                stream = self.open_raft_stream(&to, heard, STREAM_FRAMES).await;
            }
            let Some((s, _)) = stream.as_mut() else { continue };
            let broke = match tokio::time::timeout(WRITE, s.write_all(&bytes)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("a write waited over {WRITE:?}")),
            };
            if let Some(why) = broke {
                tracing::debug!(%to, error = %why, "raft stream broke; reopening it for the next frame");
                stream = None;
            }
        }
    }

    /// A stream to `to`: on `heard` (the connection it last sent on) if given, else on the
    /// pooled connection (made if need be).
    /// The stream starts with `kind`.
    async fn open_raft_stream(
        self: &Arc<Self>,
        to: &NodeName,
        heard: Option<Connection>,
        kind: u8,
    ) -> Option<(SendStream, usize)> {
        let deadline = tokio::time::Instant::now() + CONNECT;
        let on_heard = heard.is_some();
        let opened = tokio::time::timeout_at(deadline, async {
            let conn = match heard {
                Some(c) => c,
                None => self
                    .hop(to, deadline)
                    .await
                    .map_err(|e| format!("no connection: {e}"))?
                    .connection()
                    .clone(),
            };
            let id = conn.stable_id();
            let mut s = conn.open_uni().await.map_err(|e| format!("no stream: {e}"))?;
            s.write_all(&[kind])
                .await
                .map_err(|e| format!("the stream broke: {e}"))?;
            Ok::<_, String>((s, id))
        });
        let why = match opened.await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(why)) => why,
            Err(_) => format!("not open within {CONNECT:?}"),
        };
        // At debug level: a peer that is down is said by gossip; this is for investigations.
        tracing::debug!(%to, on_heard, error = %why, "cannot open a raft stream yet; the frame is dropped (Raft resends)");
        None
    }

    /// Reads the raft streams node `peer` opens on `conn`, handing their frames to the driver.
    pub(super) async fn read_raft_streams(self: Arc<Self>, conn: Connection, peer: NodeName) {
        loop {
            let stream = tokio::select! {
                s = conn.accept_uni() => s,
                () = self.serve.stopping.cancelled() => return,
            };
            let Ok(recv) = stream else { return };
            self.raft_links.heard(&peer, &conn);
            self.tasks.spawn(Arc::clone(&self).read_raft_stream(recv, peer.clone()));
        }
    }

    /// Reads one stream `peer` opened: frames, or one snapshot, as its first byte says.
    async fn read_raft_stream(self: Arc<Self>, mut recv: RecvStream, peer: NodeName) {
        let mut kind = [0u8];
        let read = tokio::select! {
            r = recv.read_exact(&mut kind) => r,
            () = self.serve.stopping.cancelled() => return,
        };
        if read.is_err() {
            return;
        }
        match kind[0] {
            STREAM_FRAMES => self.read_raft_frames(recv, peer).await,
            STREAM_SNAPSHOT => {
                let mut reader = FrameReader::new(recv, MAX_FRAME).with_budget(self.serve.frames.clone());
                let why = tokio::select! {
                    r = self.read_snapshot(&mut reader, &peer) => match r {
                        Ok(()) => return,
                        Err(why) => why,
                    },
                    () = self.serve.stopping.cancelled() => return,
                };
                tracing::warn!(%peer, error = %why, "bad snapshot stream from {peer}; closing it");
                let _ = reader.into_inner().stop(transport::close::BAD_RAFT_FRAME);
            }
            other => {
                tracing::warn!(%peer, kind = other, "raft stream of unknown kind {other} from {peer}; closing it");
                let _ = recv.stop(transport::close::BAD_RAFT_FRAME);
            }
        }
    }

    async fn read_raft_frames(self: Arc<Self>, recv: RecvStream, peer: NodeName) {
        let mut reader = FrameReader::new(recv, MAX_FRAME).with_budget(self.serve.frames.clone());
        loop {
            let next = tokio::select! {
                f = reader.next_frame() => f,
                () = self.serve.stopping.cancelled() => return,
            };
            let why = match next {
                Ok(None) => return,
                Ok(Some(bytes)) => match Frame::decode(&bytes) {
                    Ok(frame) => {
                        // Dropped when the driver's inbox is full: Raft resends.
                        let _ = self.replicas.offer(Input::Frame {
                            from: peer.clone(),
                            frame,
                        });
                        continue;
                    }
                    Err(e) => e.to_string(),
                },
                // The connection ended (the peer stopped, died, or moved to a newer one):
                // nothing bad was sent.
                Err(FrameError::Io(e)) => {
                    tracing::debug!(%peer, error = %e, "raft stream from {peer} ended");
                    return;
                }
                Err(e) => e.to_string(),
            };
            tracing::warn!(%peer, error = %why, "bad raft frame from {peer}; closing that raft stream");
            let _ = reader.into_inner().stop(transport::close::BAD_RAFT_FRAME);
            return;
        }
    }
}

impl Node {
    /// Sends a snapshot to `to` on a stream of its own (one per peer and range at a time; a
    /// second while one travels is dropped, the first one's report stands for it), then tells
    /// the driver whether it arrived.
    fn send_snapshot(self: &Arc<Self>, to: &NodeName, range: RangeId, generation: Generation, msg: RaftMsg) {
        let key = (to.clone(), range);
        if !self
            .raft_links
            .sending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            return;
        }
        let node = Arc::clone(self);
        self.tasks.spawn(async move {
            let (to, range) = key;
            let started = std::time::Instant::now();
            let outcome = node.stream_snapshot(&to, range, generation, msg).await;
            node.raft_links.sending.lock().unwrap_or_else(PoisonError::into_inner).remove(&(to.clone(), range));
            match &outcome {
                Ok(len) => tracing::info!(%range, %to, bytes = len, took = ?started.elapsed(), "snapshot of range {range} sent to {to}"),
                Err(why) => tracing::info!(%range, %to, error = %why, "snapshot of range {range} not sent to {to}"),
            }
            let report = Input::SnapshotSent {
                range,
                to,
                delivered: outcome.is_ok(),
            };
            // Waits for room: without the report the leader would send the replica nothing more.
            let _ = node.replicas.send(report).await;
        });
    }

    /// Writes the snapshot's head and chunks on a new stream and waits until the peer has
    /// read them all: the data's length, or why not.
    async fn stream_snapshot(
        self: &Arc<Self>,
        to: &NodeName,
        range: RangeId,
        generation: Generation,
        msg: RaftMsg,
    ) -> Result<usize, String> {
        let (head, data) = SnapshotHead::split(range, generation, msg);
        if head.len > kvnode_replica::MAX_SNAPSHOT {
            return Err(format!("{} bytes is over the snapshot limit", head.len));
        }
        // No data: the range streams from the view the snapshot was taken with.
        let index = head.msg.snapshot.as_ref().map_or(0, |s| s.index);
        let view = match data.is_empty() {
            true => {
                let view = self.store.snapshot_view(range, index);
                Some(view.ok_or_else(|| format!("the view of the snapshot at {index} is gone; it is taken again"))?)
            }
            false => None,
        };
        let streamed = view.is_some();
        let sent = self.write_snapshot(to, &head, &data, view).await;
        if streamed {
            // Done with it either way: a snapshot sent again takes a new view.
            self.store.release_view(range, index);
        }
        let (mut s, sent) = sent?;
        s.finish().map_err(|e| e.to_string())?;
        // Resolves once the peer has every byte (or stopped the stream: refused).
        match tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, s.stopped()).await {
            Ok(Ok(None)) => Ok(sent),
            Ok(Ok(Some(code))) => Err(format!("the peer refused it (code {code})")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not acknowledged within {SNAPSHOT_CHUNK_WAIT:?}")),
        }
    }

    /// Opens a snapshot stream to `to` and writes the head, then the data (in chunks) or the
    /// parts read from `view`: the stream, to be finished, and the bytes written.
    async fn write_snapshot(
        self: &Arc<Self>,
        to: &NodeName,
        head: &SnapshotHead,
        data: &[u8],
        view: Option<Arc<dyn RangeView>>,
    ) -> Result<(SendStream, usize), String> {
        let heard = self.raft_links.heard_on(to).filter(Connection::is_alive);
        let Some((mut s, _)) = self.open_raft_stream(to, heard, STREAM_SNAPSHOT).await else {
            return Err("no stream to the peer".into());
        };
        write_part(&mut s, &head.encode()).await?;
        let sent = match view {
            None => {
                for chunk in data.chunks(SNAPSHOT_CHUNK) {
                    write_part(&mut s, chunk).await?;
                }
                data.len()
            }
            Some(view) => stream_parts(&mut s, view).await?,
        };
        Ok((s, sent))
    }

    /// Takes in one snapshot: its head, then its chunks up to the length the head gave, then
    /// the stream's end; hands the whole message to the driver.
    async fn read_snapshot(&self, reader: &mut FrameReader<RecvStream>, peer: &NodeName) -> Result<(), String> {
        let next = async |reader: &mut FrameReader<RecvStream>| match tokio::time::timeout(
            SNAPSHOT_CHUNK_WAIT,
            reader.next_frame(),
        )
        .await
        {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no chunk within {SNAPSHOT_CHUNK_WAIT:?}")),
        };
        let head = next(reader).await?.ok_or("the stream ended before its head")?;
        let head = SnapshotHead::decode(&head).map_err(|e| e.to_string())?;
        let _room = self.raft_links.receiving.acquire().await.map_err(|e| e.to_string())?;
        if head.len == 0 {
            return self.install_streamed(reader, peer, head).await;
        }
        let len = usize::try_from(head.len).map_err(|e| e.to_string())?;
        // Grown as chunks arrive, never to more than the head announced.
        let mut data = Vec::new();
        while data.len() < len {
            let chunk = next(reader)
                .await?
                .ok_or("the stream ended before all of the snapshot's data")?;
            if chunk.len() > SNAPSHOT_CHUNK || data.len() + chunk.len() > len {
                return Err("a chunk over the chunk size or past the announced length".into());
            }
            data.extend_from_slice(&chunk);
        }
        if next(reader).await?.is_some() {
            return Err("bytes after the snapshot's data".into());
        }
        tracing::debug!(%peer, range = %head.range, bytes = len, "snapshot received");
        self.replicas
            .send(Input::Frame {
                from: peer.clone(),
                frame: head.into_frame(data),
            })
            .await
            .map_err(|e| e.to_string())
    }
}

impl Node {
    /// Takes in a streamed snapshot (issue 26): once the range's group says it takes it (and
    /// stands still meanwhile), the range's data is replaced part by part as the parts come
    /// (`Store::begin_install`, `install_part`), then the group takes the message. Anything
    /// short of the whole stream clears the group (`Store::wipe_group`), which starts again
    /// empty; the leader sends the snapshot again.
    async fn install_streamed(
        &self,
        reader: &mut FrameReader<RecvStream>,
        peer: &NodeName,
        head: SnapshotHead,
    ) -> Result<(), String> {
        let range = head.range;
        let (done, taken) = tokio::sync::oneshot::channel();
        self.replicas
            .send(Input::BeginInstall {
                from: peer.clone(),
                range,
                generation: head.generation,
                msg: head.msg.clone(),
                done,
            })
            .await
            .map_err(|e| e.to_string())?;
        match taken.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                // Not an error of the peer's: its snapshot is not needed (or not yet).
                tracing::debug!(%peer, %range, why, "streamed snapshot of range {range} from {peer} not taken");
                let _ = reader.get_mut().stop(transport::close::SNAPSHOT_NOT_TAKEN);
                return Ok(());
            }
            Err(_) => return Err("the replica driver stopped".into()),
        }
        let started = std::time::Instant::now();
        let id = self.move_log.begin(range, peer);
        let written = self.write_parts(reader, range, id).await;
        self.move_log.end(
            id,
            match &written {
                Ok(_) => InstallState::Written,
                Err(why) => InstallState::Failed(why.clone()),
            },
        );
        match written {
            Ok((parts, keys)) => {
                tracing::info!(%peer, %range, parts, keys, took = ?started.elapsed(), "snapshot of range {range} from {peer} written");
                self.replicas
                    .send(Input::Installed {
                        from: peer.clone(),
                        range,
                        msg: head.msg,
                    })
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(why) => {
                if let Err(e) = self.store.wipe_group(range).await {
                    tracing::error!(%range, error = %e, "range {range}'s group could not be cleared after a snapshot cut short; it is cleared at the next start");
                }
                let _ = self.replicas.send(Input::InstallFailed { range }).await;
                Err(why)
            }
        }
    }

    /// Clears the range, then writes the stream's parts into it until its end, whose counts
    /// must match what came: the parts and keys written.
    async fn write_parts(
        &self,
        reader: &mut FrameReader<RecvStream>,
        range: RangeId,
        id: u64,
    ) -> Result<(u64, u64), String> {
        self.store.begin_install(range).await.map_err(|e| e.to_string())?;
        let (mut parts, mut keys) = (0u64, 0u64);
        loop {
            let bytes = match tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, reader.next_frame()).await {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => return Err("the stream ended before the snapshot's end".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no part within {SNAPSHOT_CHUNK_WAIT:?}")),
            };
            match SnapshotPart::decode(&bytes).map_err(|e| e.to_string())? {
                SnapshotPart::Data(data) => {
                    let n = data.values().map(|k| k.len() as u64).sum::<u64>();
                    (parts, keys) = (parts + 1, keys + n);
                    self.store.install_part(range, data).await.map_err(|e| e.to_string())?;
                    self.move_log.progress(id, n, bytes.len() as u64);
                }
                SnapshotPart::End { parts: p, keys: k } if (p, k) == (parts, keys) => break,
                SnapshotPart::End { parts: p, keys: k } => {
                    return Err(format!(
                        "the stream announced {p} parts and {k} keys, and {parts} parts and {keys} keys came"
                    ));
                }
            }
        }
        match tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, reader.next_frame()).await {
            Ok(Ok(None)) => Ok((parts, keys)),
            Ok(Ok(Some(_))) => Err("bytes after the snapshot's end".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the stream did not end within {SNAPSHOT_CHUNK_WAIT:?}")),
        }
    }
}

/// Writes one length-prefixed frame of a snapshot stream, within [`SNAPSHOT_CHUNK_WAIT`].
async fn write_part(s: &mut SendStream, bytes: &[u8]) -> Result<(), String> {
    let mut framed = Vec::with_capacity(4 + bytes.len());
    wire::frame_bytes(bytes, &mut framed);
    match tokio::time::timeout(SNAPSHOT_CHUNK_WAIT, s.write_all(&framed)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("a part waited over {SNAPSHOT_CHUNK_WAIT:?}")),
    }
}

/// Streams a range from its snapshot view, a part of about [`SNAPSHOT_CHUNK`] bytes at a time
/// (each read on a blocking thread; flow control paces the reads to the peer's writes), then
/// the end with the counts: the bytes sent.
async fn stream_parts(s: &mut SendStream, view: Arc<dyn RangeView>) -> Result<usize, String> {
    let (mut cursor, mut parts, mut keys, mut sent) = (None, 0u64, 0u64, 0usize);
    loop {
        let v = Arc::clone(&view);
        let read = tokio::task::spawn_blocking(move || v.part(cursor.as_ref(), SNAPSHOT_CHUNK)).await;
        let (data, next) = read.map_err(|e| e.to_string())?.map_err(|e| e.0)?;
        parts += 1;
        keys += data.values().map(|k| k.len() as u64).sum::<u64>();
        let bytes = SnapshotPart::Data(data).encode();
        sent += bytes.len();
        write_part(s, &bytes).await?;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    write_part(s, &SnapshotPart::End { parts, keys }.encode()).await?;
    Ok(sent)
}

impl RaftLinks {
    fn heard(&self, peer: &NodeName, conn: &Connection) {
        let mut heard = self.heard_on.lock().unwrap_or_else(PoisonError::into_inner);
        if heard.get(peer).is_none_or(|c| c.stable_id() != conn.stable_id()) {
            heard.insert(peer.clone(), conn.clone());
        }
    }

    fn heard_on(&self, peer: &NodeName) -> Option<Connection> {
        self.heard_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .cloned()
    }
}
