//! How ranges and nodes are named inside Raft: a [`RangeId`] per group, a `u64` per replica.
//! Pure functions, no state; the names stay the only ids anyone outside this crate sees.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A replicated range, named as the routing table names it: the first and last byte of the
/// bucket names it holds (`a-m` is `{ first: b'a', last: b'm' }`). One range may have had
/// several groups over time; [`Generation`] tells their histories apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RangeId {
    /// The first byte of the range's bucket names.
    pub first: u8,
    /// The last byte, inclusive.
    pub last: u8,
}

impl std::fmt::Display for RangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", char::from(self.first), char::from(self.last))
    }
}

/// Which history of a range's group a replica belongs to (issue 26). A range's group may be
/// born more than once (replicated, then held by one node, then replicated again starts at
/// index 1, term 1 anew); a replica of an earlier history must never vote in, or be voted
/// for by, a later one, whose terms and log it does not share. The routing table gives each
/// group's generation when the group is born and keeps it while the group lives; every
/// message, probe and snapshot carries its group's, and a replica steps only its own.
///
/// [`Generation::LEGACY`] (0) is the generation of every group and table from before
/// generations; [`Generation::derive`] never gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Generation(pub u64);

impl Generation {
    /// Groups and tables from before generations.
    pub const LEGACY: Generation = Generation(0);

    /// The generation of `range`'s group born with `nodes` in the table of `version` set by
    /// `setter`: the same on every node that reads that table (a configuration file's table
    /// is derived again at each start), different for every table that births one
    /// (SipHash-2-4 with a key of its own, stable across releases as [`node_id`] is).
    pub fn derive<'a>(
        version: u64,
        setter: &'a str,
        range: RangeId,
        nodes: impl IntoIterator<Item = &'a str>,
    ) -> Generation {
        const GENERATION_KEY: (u64, u64) = (0x6b76_6e6f_6465_2d67, 0x656e_6572_6174_696f);
        // Each name with its length before it, so that no two lists read alike.
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&[range.first, range.last]);
        for name in std::iter::once(setter).chain(nodes) {
            bytes.extend_from_slice(&(name.len() as u64).to_be_bytes());
            bytes.extend_from_slice(name.as_bytes());
        }
        match siphash24(GENERATION_KEY, &bytes) {
            0 => Generation(1),
            g => Generation(g),
        }
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a set of node names cannot be given Raft ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Two names hash to one id (astronomically unlikely, but then a clear error, not a
    /// confused group): one of them has to be renamed.
    #[error("nodes {0:?} and {1:?} have the same raft id {2:#x}; rename one of them")]
    Collision(String, String, u64),
    /// The same name twice in one set.
    #[error("node {0:?} is named twice")]
    Duplicate(String),
}

/// The constant key of the name hash. Changing it changes every replica's id, so it never
/// changes: ids are persisted in each group's hard state (votes) and conf state.
const KEY: (u64, u64) = (0x6b76_6e6f_6465_2d72, 0x6166_742d_6964_7331);

/// The Raft id of a node name: SipHash-2-4 of its bytes with a fixed key. Written out here
/// because std's `DefaultHasher` does not promise a stable algorithm across Rust releases, and
/// ids must survive upgrades. Never 0, which raft-rs reserves for "no node".
pub fn node_id(name: &str) -> u64 {
    match siphash24(KEY, name.as_bytes()) {
        0 => 1,
        id => id,
    }
}

/// The two-way map between the names of one group (or the whole membership) and their ids,
/// built only when no two names collide: checked when a table is set and at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIds {
    by_id: BTreeMap<u64, String>,
}

impl NodeIds {
    /// Ids for `names`, or which two names cannot live in one cluster.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, IdError> {
        let mut by_id = BTreeMap::new();
        for name in names {
            let id = node_id(name);
            if let Some(other) = by_id.insert(id, name.to_string()) {
                return Err(if other == name {
                    IdError::Duplicate(other)
                } else {
                    IdError::Collision(other, name.to_string(), id)
                });
            }
        }
        Ok(NodeIds { by_id })
    }

    /// The name behind a Raft id, if it is one of ours.
    pub fn name_of(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// The id of a known name.
    pub fn id_of(&self, name: &str) -> Option<u64> {
        let id = node_id(name);
        self.by_id.contains_key(&id).then_some(id)
    }

    /// Every id, in order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_id.keys().copied()
    }
}

/// SipHash-2-4 (Aumasson and Bernstein), the reference algorithm.
pub(crate) fn siphash24(key: (u64, u64), data: &[u8]) -> u64 {
    let mut v = [
        key.0 ^ 0x736f_6d65_7073_6575,
        key.1 ^ 0x646f_7261_6e64_6f6d,
        key.0 ^ 0x6c79_6765_6e65_7261,
        key.1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut compress = |m: u64| {
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    };
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        compress(u64::from_le_bytes(word));
    }
    let mut last = [0u8; 8];
    let tail = chunks.remainder();
    last[..tail.len()].copy_from_slice(tail);
    // The message length mod 256 goes in the last word's top byte.
    last[7] = data.len() as u8;
    compress(u64::from_le_bytes(last));
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}
