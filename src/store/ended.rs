//! What a node remembers of a replica group's history that ended (issue 26): the `ENDED`
//! record of a range, kept after the group's other records are dropped.
//!
//! A group's history ends when a move finishes into one node: that node's data carries the
//! range on, and the table lists the history as ended. Two tables of two coordinators (a
//! partition) can disagree about that, and the one gossip keeps may still run the history.
//! The record is what lets the nodes hold to what the group itself did:
//!
//! - **Sealed here** ([`Ended::here`]): the group's only voter writes it, synced, before it
//!   asks the table to finish the move. From then on the group never changes its
//!   configuration (its driver gives it no target), so its data never lives anywhere but on
//!   this node, whichever table wins: the node may say "this history ended onto me" to any
//!   coordinator, at any time (`Request::FinishMove`'s `ended`).
//! - **Ended elsewhere** (`here == false`): written with the drop of a group whose history
//!   the table says ended. The node never starts that history again, empty: a table that
//!   still runs it (the other coordinator's) must not have its replicas, all of which dropped
//!   it, agree the range is new and bootstrap it over nothing.
//!
//! One record per range (its newest ended history): an older history's table is older than
//! any the cluster is likely to bring back.

use std::sync::PoisonError;

use kvnode_replica::{Generation, RangeId};
use serde::{Deserialize, Serialize};

use super::engine::{Op, RaftSpace, RaftWrites};
use super::group::group_err;
use super::group_records::{self as rec};
use super::{Backend, Store, StoreError};

/// A range's ended history, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// The history.
    pub generation: Generation,
    /// It ended onto this node: sealed here, its data is this node's.
    pub here: bool,
}

impl Ended {
    pub(super) fn record(self, range: RangeId) -> (RaftSpace, Vec<u8>, Option<Vec<u8>>) {
        // A plain struct always serialises.
        let value = postcard::to_allocvec(&self).unwrap_or_default();
        (RaftSpace::State, rec::state_key(range, rec::ENDED), Some(value))
    }
}

impl Store {
    /// The newest ended history of `range` this node knows (see the module's text).
    pub fn ended(&self, range: RangeId) -> Result<Option<Ended>, StoreError> {
        match &self.backend {
            Backend::Memory(_) => Ok(self.ended_in_memory().get(&range).copied()),
            Backend::Disk(d) => {
                let value = d
                    .engine()
                    .raft_get(RaftSpace::State, &rec::state_key(range, rec::ENDED))
                    .map_err(|e| group_err(range, e.0))?;
                value
                    .map(|v| {
                        postcard::from_bytes(&v).map_err(|e| {
                            group_err(
                                range,
                                format!("the ended record is damaged ({e}); the store is damaged"),
                            )
                        })
                    })
                    .transpose()
            }
        }
    }

    /// Every range's newest ended history this node knows; `None` for a damaged record.
    pub fn ended_all(&self) -> Result<Vec<(RangeId, Option<Ended>)>, StoreError> {
        match &self.backend {
            Backend::Memory(_) => Ok(self.ended_in_memory().iter().map(|(r, e)| (*r, Some(*e))).collect()),
            Backend::Disk(d) => {
                let all = d
                    .engine()
                    .raft_scan(RaftSpace::State, &[], &[0xff; 4], false, usize::MAX)
                    .map_err(|e| StoreError::Engine(e.0))?;
                Ok(all
                    .into_iter()
                    .filter_map(|(key, value)| match key.as_slice() {
                        [first, last, rec::ENDED] => Some((
                            RangeId {
                                first: *first,
                                last: *last,
                            },
                            postcard::from_bytes(&value).ok(),
                        )),
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// Records `ended` as `range`'s newest ended history, synced before it returns.
    pub fn mark_ended(&self, range: RangeId, ended: Ended) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(_) => {
                self.ended_in_memory().insert(range, ended);
                Ok(())
            }
            Backend::Disk(d) => {
                let writes = RaftWrites {
                    replace: vec![],
                    records: vec![ended.record(range)],
                };
                d.engine()
                    .commit(&[Op::Raft(std::sync::Arc::new(writes))])
                    .map(drop)
                    .map_err(|e| group_err(range, e.0))
            }
        }
    }

    pub(super) fn ended_in_memory(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<RangeId, Ended>> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
