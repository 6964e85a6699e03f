//! What a node remembers of a replica group's histories that ended (issue 26): the `ENDED`
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
//!   coordinator (`Request::FinishMove`'s `ended`), as long as its bytes of the range are
//!   that history's (the driver gives the claim up when they may not be: another history of
//!   the range started here, the range's data dropped, or a table giving the bytes to
//!   others).
//! - **Ended elsewhere** (`here == false`): written with the drop of a group whose history
//!   the table says ended. The node never takes part in that history again from nothing: a
//!   table that still runs it (the other coordinator's) must not have its replicas, all of
//!   which dropped it, agree the range is new and bootstrap it over nothing.
//!
//! The newest [`ENDED_KEPT`] histories of each range are kept, newest first, as the
//! table keeps its `ended` list.

use std::sync::PoisonError;

use kvnode_replica::{Generation, RangeId};
use serde::{Deserialize, Serialize};

use super::engine::{Op, RaftSpace, RaftWrites};
use super::group::group_err;
use super::group_records::{self as rec};
use super::{Backend, Store, StoreError};

/// How many ended histories of a range a node remembers.
pub const ENDED_KEPT: usize = 16;

/// A range's ended history, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// The history.
    pub generation: Generation,
    /// It ended onto this node, and this node's bytes of the range are its: sealed here.
    pub here: bool,
}

/// A range and its ended histories, newest first (`None`: a damaged record).
pub type RangeEnded = (RangeId, Option<Vec<Ended>>);

/// `list` with `ended` in it: that history's entry replaced in place, or a new one first
/// (the oldest beyond [`ENDED_KEPT`] let go).
pub(super) fn with(mut list: Vec<Ended>, ended: Ended) -> Vec<Ended> {
    match list.iter_mut().find(|e| e.generation == ended.generation) {
        Some(e) => e.here = ended.here,
        None => {
            list.insert(0, ended);
            list.truncate(ENDED_KEPT);
        }
    }
    list
}

/// `list` with every seal given up (the range's bytes here are no history's any more).
pub(super) fn unsealed(mut list: Vec<Ended>) -> Vec<Ended> {
    for e in &mut list {
        e.here = false;
    }
    list
}

pub(super) fn record(range: RangeId, list: &[Ended]) -> (RaftSpace, Vec<u8>, Option<Vec<u8>>) {
    // A list of plain structs always serialises.
    let value = postcard::to_allocvec(list).unwrap_or_default();
    (RaftSpace::State, rec::state_key(range, rec::ENDED), Some(value))
}

fn decode(range: RangeId, bytes: &[u8]) -> Result<Vec<Ended>, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| {
        group_err(
            range,
            format!("the ended record is damaged ({e}); the store is damaged"),
        )
    })
}

impl Store {
    /// The ended histories of `range` this node knows, newest first (see the module's text).
    pub fn ended(&self, range: RangeId) -> Result<Vec<Ended>, StoreError> {
        match &self.backend {
            Backend::Memory(_) => Ok(self.ended_in_memory().get(&range).cloned().unwrap_or_default()),
            Backend::Disk(d) => {
                let value = d
                    .engine()
                    .raft_get(RaftSpace::State, &rec::state_key(range, rec::ENDED))
                    .map_err(|e| group_err(range, e.0))?;
                value.map_or(Ok(Vec::new()), |v| decode(range, &v))
            }
        }
    }

    /// Whether `range`'s history `generation` is sealed here.
    pub fn sealed(&self, range: RangeId, generation: Generation) -> Result<bool, StoreError> {
        Ok(self.ended(range)?.contains(&Ended { generation, here: true }))
    }

    /// Every range's ended histories this node knows; `None` for a damaged record.
    pub fn ended_all(&self) -> Result<Vec<RangeEnded>, StoreError> {
        match &self.backend {
            Backend::Memory(_) => Ok(self
                .ended_in_memory()
                .iter()
                .map(|(r, e)| (*r, Some(e.clone())))
                .collect()),
            Backend::Disk(d) => {
                let all = d
                    .engine()
                    .raft_scan(RaftSpace::State, &[], &[0xff; 4], false, usize::MAX)
                    .map_err(|e| StoreError::Engine(e.0))?;
                Ok(all
                    .into_iter()
                    .filter_map(|(key, value)| match key.as_slice() {
                        [first, last, rec::ENDED] => {
                            let range = RangeId {
                                first: *first,
                                last: *last,
                            };
                            Some((range, decode(range, &value).ok()))
                        }
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// Records `ended` among `range`'s ended histories (see [`with`]), synced before it
    /// returns.
    pub fn mark_ended(&self, range: RangeId, ended: Ended) -> Result<(), StoreError> {
        let list = with(self.ended(range)?, ended);
        self.write_ended(range, list)
    }

    /// Gives up every seal of `range` here but `history`'s (`history` starts on this node,
    /// and the range's bytes here may become its), synced before it returns.
    pub fn unseal(&self, range: RangeId, history: Generation) -> Result<(), StoreError> {
        let list = self.ended(range)?;
        if list.iter().all(|e| !e.here || e.generation == history) {
            return Ok(());
        }
        let list = list
            .into_iter()
            .map(|e| Ended {
                here: e.here && e.generation == history,
                ..e
            })
            .collect();
        self.write_ended(range, list)
    }

    fn write_ended(&self, range: RangeId, list: Vec<Ended>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(_) => {
                self.ended_in_memory().insert(range, list);
                Ok(())
            }
            Backend::Disk(d) => {
                let writes = RaftWrites {
                    replace: vec![],
                    records: vec![record(range, &list)],
                };
                d.engine()
                    .commit(&[Op::Raft(std::sync::Arc::new(writes))])
                    .map(drop)
                    .map_err(|e| group_err(range, e.0))
            }
        }
    }

    pub(super) fn ended_in_memory(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<RangeId, Vec<Ended>>> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
