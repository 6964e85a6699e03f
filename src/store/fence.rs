//! The bytes a replica group runs over on this node, where plain writes may not go.
//!
//! A range's data is written by exactly one path at a time: plain writes while a single
//! owner serves it, its replica group's applies while the group runs. The handover is a
//! race: a write routed by the table before the one that starts a move (a group of one born
//! over the data in place) can reach the store after the group was born, and even after
//! the group's snapshot was read for the move's new node, which then never has it, though
//! the writer was told it was stored. The replica driver sets the fence to the ranges of
//! the groups it runs before any round of a new group is written
//! ([`crate::store::Store::set_fences`]); a plain write takes the fence's read lock from
//! its check until it is applied (memory) or queued for the writer (disk, whose queue is
//! first in, first out): so every plain write either went before the fence, and before the
//! group's first round in the queue (so in any snapshot the group takes), or is refused,
//! not applied ([`super::StoreError::Moving`]).

use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use super::StoreError;

/// One bit per first byte of a bucket's name.
#[derive(Debug, Default)]
pub(super) struct Fences(RwLock<[u64; 4]>);

impl Fences {
    /// Fences exactly `ranges` (inclusive first and last bytes); waits for the plain writes
    /// under way to be applied or queued.
    pub(super) fn set(&self, ranges: impl IntoIterator<Item = (u8, u8)>) {
        let mut bits = [0u64; 4];
        for (first, last) in ranges {
            for byte in first..=last {
                bits[usize::from(byte / 64)] |= 1 << (byte % 64);
            }
        }
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = bits;
    }

    /// Leave for a plain write of `bucket`: held until it is applied or queued.
    pub(super) fn pass(&self, bucket: &[u8]) -> Result<RwLockReadGuard<'_, [u64; 4]>, StoreError> {
        let bits = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let byte = bucket.first().copied().unwrap_or(0);
        if bits[usize::from(byte / 64)] & (1 << (byte % 64)) != 0 {
            return Err(StoreError::Moving {
                bucket: String::from_utf8_lossy(bucket).into_owned(),
            });
        }
        Ok(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_covers_its_ranges_bytes_and_no_other() {
        let f = Fences::default();
        f.set([(b'a', b'm'), (0, 0), (255, 255)]);
        for bucket in [&b"apple"[..], b"melon", b"\0x", b"\xff"] {
            assert!(f.pass(bucket).is_err(), "{bucket:?}");
        }
        for bucket in [&b"`"[..], b"nut", b"\x01", b"\xfe"] {
            assert!(f.pass(bucket).is_ok(), "{bucket:?}");
        }
        f.set([]);
        assert!(f.pass(b"apple").is_ok());
    }
}
