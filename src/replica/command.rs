//! What a replicated range's log carries: the [`Command`]s of a bucket's writes, and the
//! [`ProposalId`] that lets the proposing node recognise its own entry when it is applied.

use serde::{Deserialize, Serialize};

/// One write to a range, as an entry's data (postcard). Opaque to Raft; applied in log order
/// by every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key of a bucket.
    Put {
        /// The bucket's name.
        bucket: Vec<u8>,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a key of a bucket.
    Delete {
        /// The bucket's name.
        bucket: Vec<u8>,
        /// The key.
        key: Vec<u8>,
    },
    /// Create a bucket (an empty one; creating an existing bucket changes nothing).
    CreateBucket {
        /// The bucket's name.
        bucket: Vec<u8>,
    },
}

impl Command {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serialising a plain enum of byte vectors into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A proposal, as its proposer knows it: which start of the node made it (`incarnation`,
/// different at every start, so an entry proposed before a restart is never taken for one
/// proposed after) and a sequence number within that start. Carried in the entry's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    /// The proposer's start (the caller's choice: a boot counter or a random number).
    pub incarnation: u64,
    /// Counts proposals within one start, from 1.
    pub seq: u64,
}

impl ProposalId {
    pub(crate) fn to_context(self) -> Vec<u8> {
        let mut c = Vec::with_capacity(16);
        c.extend_from_slice(&self.incarnation.to_be_bytes());
        c.extend_from_slice(&self.seq.to_be_bytes());
        c
    }

    pub(crate) fn from_context(c: &[u8]) -> Option<Self> {
        let (a, b) = c.split_first_chunk::<8>()?;
        let b: [u8; 8] = b.try_into().ok()?;
        Some(ProposalId {
            incarnation: u64::from_be_bytes(*a),
            seq: u64::from_be_bytes(b),
        })
    }
}
