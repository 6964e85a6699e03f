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
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Set a key of a bucket that must exist: applies as nothing, [`Effect::NoBucket`], in a
    /// bucket never created (the guide's `PUT`).
    PutExisting {
        /// The bucket's name.
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Set a key of a bucket and say whether it is new ([`Effect::StoredNew`]; RESP's `HSET`
    /// counts new fields).
    PutReporting {
        /// The bucket's name.
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove a key of a bucket; [`Effect::NoKey`] or [`Effect::NoBucket`] if it was not there.
    Delete {
        /// The bucket's name.
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Create a bucket (an empty one; creating an existing bucket changes nothing).
    CreateBucket {
        /// The bucket's name.
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
    },
}

/// What applying an entry did, decided by the replica's state at that point of the log (so
/// every replica decides alike, and a check and its write are one step: two deletes of one
/// key cannot both find it). The proposer's answer is made from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A put stored its value (replacing one, for [`Command::PutReporting`]).
    Stored,
    /// A [`Command::PutReporting`] of a key that was not there.
    StoredNew,
    /// A delete removed its key.
    Deleted,
    /// A delete of a key that was not there; nothing changed.
    NoKey,
    /// A delete or a [`Command::PutExisting`] in a bucket never created; nothing changed.
    NoBucket,
    /// A [`Command::CreateBucket`]; `false` if the bucket existed.
    Created(bool),
    /// An entry with no command (a new leader's empty entry, a conf change).
    Nothing,
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
