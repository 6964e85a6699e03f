//! The table the simulator spreads: shaped like kvnode's routing table (ranges of a first byte,
//! each named to a node), so its messages carry as many bytes, but knowing nothing of routing.

use serde::{Deserialize, Serialize};

use crate::table::Table;

/// A version, who set it, and ranges `first..=last` of a byte, each with a node's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimTable {
    version: u64,
    setter: String,
    entries: Vec<(u8, u8, String)>,
}

impl SimTable {
    /// A table of `entries`, which must be in order and must not overlap (else `None`).
    pub fn new(version: u64, setter: &str, entries: Vec<(u8, u8, String)>) -> Option<Self> {
        let table = Self {
            version,
            setter: setter.into(),
            entries,
        };
        table.check().is_ok().then_some(table)
    }

    /// Everything to `owner`, set by `owner`.
    pub fn owned_by(owner: &str, version: u64) -> Self {
        Self {
            version,
            setter: owner.into(),
            entries: vec![(0x00, 0xff, owner.into())],
        }
    }

    /// Entries in order, as [`SimTable::new`] wants them (for tests of what a decode refuses).
    pub fn entries_mut(&mut self) -> &mut Vec<(u8, u8, String)> {
        &mut self.entries
    }
}

impl Table for SimTable {
    /// As kvnode's routing table: the higher version, then the setter, then the entries.
    fn supersedes(&self, other: &Self) -> bool {
        (self.version, &self.setter, &self.entries) > (other.version, &other.setter, &other.entries)
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn check(&self) -> Result<(), String> {
        let mut next = 0u16;
        for (first, last, _) in &self.entries {
            if u16::from(*first) < next || first > last {
                return Err(format!("entry {first:#04x}-{last:#04x} overlaps or is out of order"));
            }
            next = u16::from(*last) + 1;
        }
        Ok(())
    }
}
