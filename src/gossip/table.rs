//! What the cluster spreads besides membership: one table that every member converges on.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value the whole cluster converges on, the newest by [`Table::supersedes`] (kvnode's
/// routing table). The core adopts a table that supersedes its own, forwards it at once, and
/// carries it in every full-state exchange; it reads nothing else of it.
pub trait Table: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Whether `self` replaces `other`. Must be a strict total order, the same on every member,
    /// so that all of them end on the same table.
    fn supersedes(&self, other: &Self) -> bool;

    /// The version a person or the simulator tracks the table by.
    fn version(&self) -> u64;

    /// Checks a table that came off the wire: deserialising skips the checks its constructor
    /// makes. A message carrying a table that fails is refused whole.
    fn check(&self) -> Result<(), String>;
}
