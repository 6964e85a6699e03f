//! The change feed: this node's acknowledged writes, in the order they took effect, for
//! `kvnode watch` (issue 27 part 2). Knows no network and no watcher.
//!
//! A bounded ring: each change gets the next sequence number of this process's feed, and the
//! oldest changes are dropped past [`MAX_CHANGES`] or [`MAX_BYTES`]. A watcher asks for the
//! changes after the last position it saw; if that position has been dropped, it fell behind
//! and is told so, never served the changes that remain as if nothing were missing. Memory is
//! bounded by the ring, whatever the number of watchers and however slowly they read: the
//! node keeps nothing per watcher.
//!
//! The feed's epoch is random at each start: positions of another process (before a
//! restart) are known not to be comparable, so a watch cannot silently resume across one.
//!
//! A replicated range has a feed of its own on each of its replicas, whose positions are the
//! range's Raft log indexes ([`Feed::starting_at`], [`Feed::push_at`]): the same entry has
//! the same index on every replica, so a watch resumes at another replica (a new leader) from
//! the index it saw. Such a feed knows nothing before the index it started at (a restart, a
//! snapshot installed): a watch from before it is told it fell behind.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

/// The changes the feed keeps at most.
pub const MAX_CHANGES: usize = 4096;
/// The bytes (buckets, keys and values) the feed keeps at most; the newest change is kept
/// whatever its size (a value is at most 8 MiB).
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
/// What a kept change costs besides its bytes.
const CHANGE_OVERHEAD: usize = 64;

/// One acknowledged change to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its place in this process's feed: 1 for the first change, one more for each next.
    pub seq: u64,
    pub bucket: Bytes,
    pub key: Bytes,
    /// The value put; `None` for a delete.
    pub value: Option<Bytes>,
}

impl Change {
    fn size(&self) -> usize {
        self.bucket.len() + self.key.len() + self.value.as_ref().map_or(0, Bytes::len) + CHANGE_OVERHEAD
    }
}

/// Why the changes after a position cannot be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// Changes after `after` were dropped: the oldest kept is `oldest`.
    #[error("the feed no longer holds the changes after {after} (its oldest is {oldest})")]
    FellBehind { after: u64, oldest: u64 },
    /// `after` is past the last change: a position this feed never gave.
    #[error("position {after} is past this feed's last change ({last})")]
    Ahead { after: u64, last: u64 },
}

/// The changes a read found, and how far it looked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub changes: Vec<Change>,
    /// Every change up to this position was looked at: the next read starts after it.
    pub upto: u64,
}

/// A node's change feed; shared by the store's write paths and the watches.
#[derive(Debug)]
pub struct Feed {
    epoch: u64,
    ring: Mutex<Ring>,
    /// The last change's seq, for watchers waiting for the next: sent only while one waits
    /// (a send wakes every waiter in turn, which no write should pay for when none does).
    last: watch::Sender<u64>,
    /// The [`Waiter`]s alive.
    waiting: AtomicUsize,
    max_changes: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Ring {
    changes: VecDeque<Change>,
    bytes: usize,
    last: u64,
    /// Changes up to this position are not kept (the last dropped one, or where the feed
    /// started); a watch asking from before it fell behind.
    dropped: u64,
}

impl Default for Feed {
    fn default() -> Self {
        Self::with_limits(MAX_CHANGES, MAX_BYTES)
    }
}

impl Feed {
    /// A feed with a random epoch keeping at most `max_changes` changes and `max_bytes`.
    pub fn with_limits(max_changes: usize, max_bytes: usize) -> Self {
        Self {
            // Never 0, so that a position's epoch is never mistaken for "no epoch".
            epoch: rand::random::<u64>().max(1),
            ring: Mutex::default(),
            last: watch::Sender::new(0),
            waiting: AtomicUsize::new(0),
            max_changes: max_changes.max(1),
            max_bytes,
        }
    }

    /// This process's feed: positions of another epoch are not comparable with its own.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last change's position (0 before any).
    pub fn last(&self) -> u64 {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner).last
    }

    /// Someone to wake for the next change: taken before a read, it wakes for any change
    /// pushed after that read.
    pub fn waiter(self: &Arc<Self>) -> Waiter {
        // Counted before the read: a push whose change the read misses sees the count.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiter {
            changed: self.last.subscribe(),
            feed: Arc::clone(self),
        }
    }

    /// Appends an acknowledged change (a put when `value` is `Some`, else a delete). The
    /// store calls this in the order its writes take effect.
    pub fn push(&self, bucket: &[u8], key: &[u8], value: Option<Bytes>) {
        self.push_change(None, bucket, key, value);
    }

    /// A replicated range's feed, knowing nothing up to `seq` (the group's applied index).
    pub fn starting_at(seq: u64) -> Self {
        let feed = Self::default();
        {
            let mut ring = feed.ring.lock().unwrap_or_else(PoisonError::into_inner);
            ring.last = seq;
            ring.dropped = seq;
        }
        feed
    }

    /// Pushes the change the range's log entry `seq` made (a [`Feed::starting_at`] feed).
    /// An entry at or before the last position is ignored: each is pushed once, in order.
    pub fn push_at(&self, seq: u64, bucket: &[u8], key: &[u8], value: Option<Bytes>) {
        self.push_change(Some(seq), bucket, key, value);
    }

    /// The range's log entry `seq` applied without changing a key.
    pub fn advance(&self, seq: u64) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.last = ring.last.max(seq);
    }

    /// The range jumped to `seq` (a snapshot installed): what came before is unknown here.
    pub fn restart_at(&self, seq: u64) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            ring.changes.clear();
            ring.bytes = 0;
            ring.last = seq;
            ring.dropped = seq;
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.last.send_replace(seq);
        }
    }

    /// Appends a change at `seq`, or at the next position when `None`.
    fn push_change(&self, seq: Option<u64>, bucket: &[u8], key: &[u8], value: Option<Bytes>) {
        let seq = {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = seq.unwrap_or(ring.last + 1);
            if seq <= ring.last {
                return;
            }
            ring.last = seq;
            let change = Change {
                seq,
                bucket: Bytes::copy_from_slice(bucket),
                key: Bytes::copy_from_slice(key),
                value,
            };
            ring.bytes += change.size();
            ring.changes.push_back(change);
            while ring.changes.len() > 1 && (ring.changes.len() > self.max_changes || ring.bytes > self.max_bytes) {
                let dropped = ring.changes.pop_front().expect("more than one");
                ring.bytes -= dropped.size();
                ring.dropped = dropped.seq;
            }
            seq
        };
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.last.send_replace(seq);
        }
    }

    /// The changes after position `after` that `wanted` keeps, in order, as many as fit in
    /// `budget` bytes (at least one); or why they cannot be given.
    pub fn read(&self, after: u64, wanted: impl Fn(&Change) -> bool, budget: usize) -> Result<Page, FeedError> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if after > ring.last {
            return Err(FeedError::Ahead { after, last: ring.last });
        }
        if after < ring.dropped {
            let oldest = ring.changes.front().map_or(ring.last + 1, |c| c.seq);
            return Err(FeedError::FellBehind { after, oldest });
        }
        // Positions rise through the ring (with gaps in a range's feed).
        let start = ring.changes.partition_point(|c| c.seq <= after);
        let mut page = Page {
            changes: Vec::new(),
            upto: ring.last,
        };
        let mut bytes = 0;
        for change in ring.changes.range(start..) {
            if !wanted(change) {
                continue;
            }
            if !page.changes.is_empty() && bytes + change.size() > budget {
                // The rest is for the next read, which starts after the last one given.
                page.upto = page.changes.last().expect("not empty").seq;
                break;
            }
            bytes += change.size();
            page.changes.push(change.clone());
        }
        Ok(page)
    }
}

/// A watcher waiting for the feed's next change ([`Feed::waiter`]).
#[derive(Debug)]
pub struct Waiter {
    changed: watch::Receiver<u64>,
    feed: Arc<Feed>,
}

impl Waiter {
    /// Returns once a change was pushed since the waiter was made, or since this last
    /// returned (possibly, rarely, for a change the last read already saw).
    pub async fn changed(&mut self) {
        // The sender lives as long as the feed, which this waiter holds.
        let _ = self.changed.changed().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.feed.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &Change) -> bool {
        true
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.changes.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn changes_come_in_order_after_the_position_asked() {
        let feed = Feed::default();
        assert_eq!(
            feed.read(0, all, 1024).unwrap(),
            Page {
                changes: vec![],
                upto: 0
            }
        );
        feed.push(b"b", b"k", Some(Bytes::from_static(b"1")));
        feed.push(b"b", b"k", None);
        feed.push(b"c", b"x", Some(Bytes::from_static(b"2")));
        let page = feed.read(0, all, 1024).unwrap();
        assert_eq!(seqs(&page), [1, 2, 3]);
        assert_eq!(page.changes[1].value, None, "a delete");
        assert_eq!(page.upto, 3);
        assert_eq!(seqs(&feed.read(2, all, 1024).unwrap()), [3]);
        assert_eq!(
            feed.read(3, all, 1024).unwrap(),
            Page {
                changes: vec![],
                upto: 3
            }
        );
    }

    #[test]
    fn a_filtered_read_still_moves_past_what_it_skipped() {
        let feed = Feed::default();
        feed.push(b"b", b"k", None);
        feed.push(b"other", b"k", None);
        let page = feed.read(0, |c| c.bucket == "other", 1024).unwrap();
        assert_eq!((seqs(&page), page.upto), (vec![2], 2));
        let page = feed.read(1, |c| c.bucket == "b", 1024).unwrap();
        assert_eq!((seqs(&page), page.upto), (vec![], 2));
    }

    #[test]
    fn a_read_past_its_budget_stops_after_a_whole_change_and_says_where() {
        let feed = Feed::default();
        for _ in 0..3 {
            feed.push(b"b", b"k", Some(Bytes::from(vec![0; 1000])));
        }
        let page = feed.read(0, all, 1500).unwrap();
        assert_eq!((seqs(&page), page.upto), (vec![1], 1));
        let page = feed.read(0, all, 10).unwrap();
        assert_eq!(seqs(&page), [1], "at least one change, whatever its size");
    }

    #[test]
    fn a_position_whose_changes_were_dropped_fell_behind() {
        let feed = Feed::with_limits(3, usize::MAX);
        for _ in 0..5 {
            feed.push(b"b", b"k", None);
        }
        assert_eq!(
            feed.read(1, all, 1024),
            Err(FeedError::FellBehind { after: 1, oldest: 3 })
        );
        assert_eq!(seqs(&feed.read(2, all, 1024).unwrap()), [3, 4, 5]);
        assert_eq!(feed.read(6, all, 1024), Err(FeedError::Ahead { after: 6, last: 5 }));
    }

    #[test]
    fn the_ring_keeps_no_more_bytes_than_its_bound_but_always_the_newest() {
        let feed = Feed::with_limits(1000, 3000);
        for _ in 0..10 {
            feed.push(b"b", b"k", Some(Bytes::from(vec![0; 1000])));
        }
        let ring = feed.ring.lock().unwrap();
        assert!(ring.bytes <= 3000 && ring.changes.len() == 2, "{} bytes", ring.bytes);
        drop(ring);
        let feed = Feed::with_limits(1000, 10);
        feed.push(b"b", b"k", Some(Bytes::from(vec![0; 1000])));
        assert_eq!(seqs(&feed.read(0, all, 1024).unwrap()), [1]);
    }

    #[tokio::test]
    async fn a_subscriber_wakes_for_a_change_pushed_after_it_subscribed() {
        let feed = Arc::new(Feed::default());
        feed.push(b"b", b"k", None); // nobody waits: nobody is woken
        let mut waiter = feed.waiter();
        let pusher = Arc::clone(&feed);
        tokio::spawn(async move { pusher.push(b"b", b"k", None) });
        waiter.changed().await;
        assert_eq!(feed.read(1, all, 1024).unwrap().upto, 2);
        drop(waiter);
        assert_eq!(feed.waiting.load(Ordering::SeqCst), 0);
        assert_ne!(feed.epoch(), Feed::default().epoch(), "each feed has its own epoch");
    }

    #[test]
    fn a_range_feed_is_positioned_by_log_index_and_knows_nothing_before_its_start() {
        let feed = Feed::starting_at(10);
        assert_eq!(feed.last(), 10);
        assert!(matches!(
            feed.read(9, all, 1024),
            Err(FeedError::FellBehind { after: 9, .. })
        ));
        assert_eq!(seqs(&feed.read(10, all, 1024).unwrap()), Vec::<u64>::new());
        feed.push_at(12, b"b", b"k", Some(Bytes::from_static(b"1")));
        feed.advance(13);
        feed.push_at(15, b"b", b"k", None);
        // Pushed again (a re-application): ignored.
        feed.push_at(15, b"b", b"x", None);
        feed.push_at(11, b"b", b"x", None);
        assert_eq!(seqs(&feed.read(10, all, 1024).unwrap()), [12, 15]);
        assert_eq!(seqs(&feed.read(12, all, 1024).unwrap()), [15]);
        assert_eq!(seqs(&feed.read(13, all, 1024).unwrap()), [15]);
        assert_eq!(feed.read(15, all, 1024).unwrap().upto, 15);
        assert!(matches!(feed.read(16, all, 1024), Err(FeedError::Ahead { .. })));
        // A snapshot: what came before is unknown.
        feed.restart_at(40);
        assert!(matches!(feed.read(15, all, 1024), Err(FeedError::FellBehind { .. })));
        assert_eq!(feed.read(40, all, 1024).unwrap().upto, 40);
    }

    #[test]
    fn a_range_feed_past_its_bound_drops_its_oldest_and_says_so() {
        let feed = Feed {
            max_changes: 2,
            ..Feed::starting_at(0)
        };
        for seq in [3, 5, 9] {
            feed.push_at(seq, b"b", b"k", None);
        }
        // Change 3 was dropped: a watch that saw 2 missed it; one that saw 3 (or 4) did not.
        assert!(matches!(
            feed.read(2, all, 1024),
            Err(FeedError::FellBehind { after: 2, oldest: 5 })
        ));
        assert_eq!(seqs(&feed.read(3, all, 1024).unwrap()), [5, 9]);
        assert_eq!(seqs(&feed.read(4, all, 1024).unwrap()), [5, 9]);
    }
}
