//! `kvnode watch` at the bucket's owner: one long poll of the store's change feed.
//!
//! A watch is a sequence of polls, each a resume from the last position its client saw, so
//! the node keeps nothing per watcher: a slow watcher costs no memory, and one that falls
//! further behind than the feed keeps is told so at its next poll (see `store::Feed`). A
//! poll holds its stream's request slot only until its wait ends (at most half its
//! deadline), and ends at once when the node stops.

use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::time::Instant;

use kvnode_replica::RangeId;

use super::Node;
use crate::names::NodeName;
use crate::rpc::Now;
use crate::store::{Change, Feed, FeedError};
use crate::wire::{BucketOp, BucketRequest, RemoteError, Reply, WATCH_PAGE, WatchEvent, WatchPosition};

/// The feed a watch reads.
pub(super) enum Source {
    /// This node's own (a bucket it owns alone).
    Node,
    /// A replicated range's, on this replica (its leader, as `Node::replicated` routes it).
    Range(RangeId, Arc<Feed>),
}

impl Node {
    /// A watch of a bucket this node serves from `source` (`Node::bucket_now` decided so, for
    /// a bucket this node owns; `Node::replicated`, at a replicated range's leader). Answered
    /// at once for a new watch (where it starts), when the feed has changes for it, or cannot
    /// serve it; else the future of the answer, which ends when a change comes, when its wait
    /// ends, or when the node stops.
    pub(super) fn watch_here(self: &Arc<Self>, req: BucketRequest, timeout: Duration, source: Source) -> Now {
        let BucketOp::Watch { key, from, wait_ms } = req.op else {
            unreachable!("watch_here is given watches only");
        };
        let (feed, range) = match source {
            Source::Node => (Arc::clone(self.store.feed()), None),
            Source::Range(range, feed) => (feed, Some(range)),
        };
        let poll = Poll {
            me: self.name.clone(),
            bucket: req.bucket,
            key: key.map(ByteBuf::into_vec),
            range,
        };
        let after = match poll.start(&feed, from.map(|f| *f)) {
            // A new watch is told at once where it starts: from then on, none of the
            // changes it is to see can be missed.
            Ok(Start::New(at)) => return Now::Answer(Ok(poll.changes(Vec::new(), &feed, at))),
            Ok(Start::After(after)) => after,
            Err(e) => return Now::Answer(Err(e)),
        };
        // Subscribed before the first read: a change pushed after it wakes the wait below.
        let mut changed = feed.waiter();
        let mut after = match poll.read(&feed, after) {
            Ok(Read::Changes(answer)) => return Now::Answer(Ok(answer)),
            Ok(Read::Nothing { upto }) => upto,
            Err(e) => return Now::Answer(Err(e)),
        };
        // Half the deadline at most: the empty answer must still get back through every hop.
        let wait = Duration::from_millis(wait_ms.into()).min(timeout / 2);
        let until = Instant::now() + wait;
        let stopping = self.serve.stopping.clone();
        Now::Waiting(Box::pin(async move {
            let _counted = crate::metrics::WatchWaiting::start();
            loop {
                tokio::select! {
                    () = changed.changed() => {}
                    () = tokio::time::sleep_until(until) => break,
                    () = stopping.cancelled() => break,
                }
                // (Seen by `changed`: a change pushed from now on wakes it again.)
                match poll.read(&feed, after)? {
                    Read::Changes(answer) => return Ok(answer),
                    Read::Nothing { upto } => after = upto,
                }
            }
            Ok(poll.changes(Vec::new(), &feed, after))
        }))
    }
}

impl Node {
    /// A watch's poll as routed (`now`), ended with "shutting down" once this node stops:
    /// a stopping node must not wait for a poll it sent on to the owner, which may wait for
    /// changes for a while yet. (Its client re-establishes the watch, through this node once
    /// it is back, from its last position.)
    pub(super) fn until_stopping(self: &Arc<Self>, now: Now) -> Now {
        match now {
            Now::Waiting(answer) => {
                let (stopping, node) = (self.serve.stopping.clone(), self.name.to_string());
                Now::Waiting(Box::pin(async move {
                    tokio::select! {
                        answer = answer => answer,
                        () = stopping.cancelled() => Err(RemoteError::ShuttingDown { node }),
                    }
                }))
            }
            Now::First(placing) => {
                let node = Arc::clone(self);
                Now::First(Box::pin(async move { node.until_stopping(placing.await) }))
            }
            now @ (Now::Answer(_) | Now::Later(_)) => now,
        }
    }
}

/// Where a poll starts in the feed.
enum Start {
    /// A new watch, at the feed's last change.
    New(u64),
    /// A watch resuming after this change.
    After(u64),
}

/// What one read of the feed found for a watch.
enum Read {
    /// The answer: changes for the watch.
    Changes(Reply),
    /// None: the feed was looked at up to `upto`.
    Nothing { upto: u64 },
}

/// One poll's question: which changes, for whom.
struct Poll {
    me: NodeName,
    bucket: Vec<u8>,
    key: Option<Vec<u8>>,
    /// The replicated range whose feed is read, if it is one's.
    range: Option<RangeId>,
}

impl Poll {
    /// Where the poll starts: a new watch at the feed's last change; else after the position
    /// the watch resumes from, if it is this feed's.
    fn start(&self, feed: &Feed, from: Option<WatchPosition>) -> Result<Start, RemoteError> {
        let Some(from) = from else {
            return Ok(Start::New(feed.last()));
        };
        let gap = |reason: String| RemoteError::WatchGap {
            node: self.me.to_string(),
            reason,
        };
        if let Some(range) = self.range {
            // Log indexes: alike on every replica, whichever answered before.
            return match from.range {
                Some(r) if r == (range.first, range.last) => Ok(Start::After(from.seq)),
                _ => Err(gap(format!(
                    "the watch began at {} outside the replicated range {range}, which now holds the bucket",
                    from.node
                ))),
            };
        }
        if from.range.is_some() {
            return Err(gap(format!(
                "the watch began in a replicated range, and {} now owns the bucket alone",
                self.me
            )));
        }
        if from.node != self.me {
            return Err(gap(format!(
                "the bucket was watched at {}, and its owner is now {}",
                from.node, self.me
            )));
        }
        if from.epoch != feed.epoch() {
            return Err(gap(format!(
                "{} restarted since this watch began (its change feed starts afresh at each start)",
                self.me
            )));
        }
        Ok(Start::After(from.seq))
    }

    fn wanted(&self, change: &Change) -> bool {
        change.bucket == self.bucket && self.key.as_ref().is_none_or(|k| change.key == k[..])
    }

    /// The changes after `after` for this watch, or how far the feed was looked at.
    fn read(&self, feed: &Feed, after: u64) -> Result<Read, RemoteError> {
        let page = match feed.read(after, |c| self.wanted(c), WATCH_PAGE) {
            // A replica that has not applied the entry the watch saw yet (a new leader, just
            // elected): nothing for it until it has.
            Err(FeedError::Ahead { .. }) if self.range.is_some() => return Ok(Read::Nothing { upto: after }),
            page => page.map_err(|e| self.refused(e))?,
        };
        if page.changes.is_empty() {
            return Ok(Read::Nothing { upto: page.upto });
        }
        let events = page
            .changes
            .into_iter()
            .map(|c| WatchEvent {
                seq: c.seq,
                key: ByteBuf::from(c.key.to_vec()),
                value: c.value.map(|v| ByteBuf::from(v.to_vec())),
            })
            .collect();
        Ok(Read::Changes(self.changes(events, feed, page.upto)))
    }

    fn changes(&self, events: Vec<WatchEvent>, feed: &Feed, upto: u64) -> Reply {
        Reply::Changes {
            events,
            upto: WatchPosition {
                node: self.me.clone(),
                epoch: if self.range.is_some() { 0 } else { feed.epoch() },
                seq: upto,
                range: self.range.map(|r| (r.first, r.last)),
            },
        }
    }

    fn refused(&self, e: FeedError) -> RemoteError {
        match e {
            FeedError::FellBehind { .. } => RemoteError::WatchFellBehind {
                node: self.me.to_string(),
                kept: format!(
                    "{} changes (at most {} MiB)",
                    crate::store::MAX_FEED_CHANGES,
                    crate::store::MAX_FEED_BYTES / (1024 * 1024)
                ),
            },
            FeedError::Ahead { .. } => RemoteError::invalid(format!("watch: {e}")),
        }
    }
}
