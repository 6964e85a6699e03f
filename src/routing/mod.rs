//! The routing table: which nodes hold a bucket, by the first byte of its name (SPEC §5).
//!
//! Pure data and parsing; it knows no network and no gossip. Routing a request by this table,
//! and forwarding it to the owner, is the node's (`node::handler`).

mod balance;
mod moves;
mod parse;

pub use moves::Planned;

use std::fmt;

use kvnode_replica::{Generation, RangeId};
use serde::{Deserialize, Serialize};

use crate::names::{NodeName, escape_bytes};
use parse::byte_to_string;

/// The most nodes one entry may name (issue 25): a majority of 7 is 4, and more replicas
/// cost every write a wider round for little more safety.
pub const MAX_REPLICAS: usize = 7;

/// One entry: buckets whose first byte is in `first..=last` are held by its replicas, the
/// first named the preferred leader. An entry of one node is today's single owner.
///
/// The replicas are checked whenever an entry is made, decoded ones included (distinct
/// names, 1 to [`MAX_REPLICAS`] of them), so an entry always has its first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "EntryFields")]
pub struct Entry {
    pub first: u8,
    pub last: u8,
    replicas: Vec<NodeName>,
}

/// An entry as decoded, before [`Entry::new`] checks its replicas.
#[derive(Deserialize)]
struct EntryFields {
    first: u8,
    last: u8,
    replicas: Vec<NodeName>,
}

impl TryFrom<EntryFields> for Entry {
    type Error = TableError;

    fn try_from(f: EntryFields) -> Result<Self, TableError> {
        Entry::new(f.first, f.last, f.replicas)
    }
}

/// An ordered list of entries plus the version that orders tables cluster-wide.
///
/// Two tables are compared by `(version, setter)`, then by their entries: the higher wins
/// everywhere, so every node settles on the same table however the updates arrive.
///
/// `moves` (issue 26) are ranges on their way to other nodes: each names an entry's exact
/// range and the nodes it is to be held by. Requests still follow the entry (where the data
/// is) until the range's group has moved and its leader finishes the move, which makes the
/// move's nodes the entry's (`docs/design/moves.md`).
///
/// `generations` (issue 26) name the history of each range's group ([`Generation`]): given
/// when the group is born (a new replicated range, or a single owner's range starting to
/// move), kept while it lives ([`RoutingTable::with_generations`]). A range whose group is
/// not listed (born with a configuration file's table, or before generations) has
/// [`Generation::LEGACY`]. `ended` lists, per range, the newest histories whose group the
/// cluster saw end (finished into one node, whose data carried the range on): a replica of
/// one of those may drop what it holds of it; of any other it may not.
///
/// `then` (issue 26), when not empty, is the table `route --set` asked for, to be planned
/// once the moves are done: a replicated range's bounds change (a split, a merge) by moving
/// the bytes onto one node first (these moves), re-cutting them there, and giving the pieces
/// their replicas ([`RoutingTable::plan_change`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoutingTable {
    entries: Vec<Entry>,
    version: u64,
    setter: String,
    moves: Vec<Entry>,
    generations: Vec<(u8, u8, Generation)>,
    ended: Vec<(u8, u8, Generation)>,
    then: Vec<Entry>,
}

/// How many ended histories a table keeps per range: a replica away for longer than this
/// many rebirths of its range keeps its old group (and says so) rather than drop it unproven.
const ENDED_KEPT: usize = 16;

/// Why a table specification was refused; every variant quotes the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The specification holds no entry.
    #[error("the routing table is empty; give entries like 'a-m=foo,n-z=bar'")]
    Empty,
    /// Two commas in a row, or one at either end: an entry left out by mistake, perhaps.
    #[error("routing table {spec:?}: entry {position} is empty; remove the extra comma")]
    EmptyEntry { spec: String, position: usize },
    /// An entry is not `RANGE=NODE`.
    #[error("routing entry {entry:?} is not RANGE=NODE (like 'a-m=foo' or '0x00-0x60=baz')")]
    Malformed { entry: String },
    /// A range bound is not a single printable character or `0xNN`.
    #[error("routing entry {entry:?}: {bound:?} is not a byte; use one printable ASCII character or 0x00-0xff")]
    BadByte { entry: String, bound: String },
    /// `first` comes after `last`.
    #[error("routing entry {entry:?} is reversed: {first} comes after {last}")]
    Reversed { entry: String, first: String, last: String },
    /// The node name is not a valid name.
    #[error("routing entry {entry:?}: {reason}")]
    BadNode { entry: String, reason: String },
    /// Two entries cover a common byte.
    #[error("routing entries {first:?} and {second:?} overlap")]
    Overlap { first: String, second: String },
    /// `a-m=foo++bar`, `a-m=+foo`, `a-m=foo+`: a replica left out between the '+'.
    #[error("routing entry {entry:?}: replica {position} is empty; name a node or remove the extra '+'")]
    EmptyReplica { entry: String, position: usize },
    /// An entry decoded with no node at all (text always names one).
    #[error("routing entry for {range} names no node; give it one, like '{range}=foo'")]
    NoReplica { range: String },
    /// One node named twice in one entry: it would hold the range once, not twice.
    #[error("routing entry {entry:?} names {node} twice; a range's replicas are distinct nodes")]
    DuplicateReplica { entry: String, node: String },
    /// More than [`MAX_REPLICAS`] nodes in one entry.
    #[error("routing entry {entry:?} names {count} nodes; a range has at most {MAX_REPLICAS} replicas")]
    TooManyReplicas { entry: String, count: usize },
    /// Two nodes of one entry whose Raft ids (hashes of their names) collide.
    #[error("routing entry {entry:?}: {reason}")]
    IdCollision { entry: String, reason: String },
    /// A move whose range is not exactly one entry's, or that would change nothing.
    #[error("move {entry:?}: {reason}")]
    BadMove { entry: String, reason: String },
}

impl RoutingTable {
    /// The table of a lone node that owns everything, at version 0 so any configured
    /// table a cluster gossips wins over it.
    pub fn owns_everything(node: &NodeName) -> Self {
        Self {
            entries: vec![Entry::single(0x00, 0xff, node.clone())],
            version: 0,
            setter: node.to_string(),
            moves: Vec::new(),
            generations: Vec::new(),
            ended: Vec::new(),
            then: Vec::new(),
        }
    }

    /// Builds a table from entries, checking that no two overlap.
    pub fn new(entries: Vec<Entry>, version: u64, setter: impl Into<String>) -> Result<Self, TableError> {
        if entries.is_empty() {
            return Err(TableError::Empty);
        }
        for (i, a) in entries.iter().enumerate() {
            for b in &entries[..i] {
                if a.first <= b.last && b.first <= a.last {
                    return Err(TableError::Overlap {
                        first: b.to_string(),
                        second: a.to_string(),
                    });
                }
            }
        }
        Ok(Self {
            entries,
            version,
            setter: setter.into(),
            moves: Vec::new(),
            generations: Vec::new(),
            ended: Vec::new(),
            then: Vec::new(),
        })
    }

    /// The same table with `then` to be planned once its moves are done, checked as a
    /// table's entries are (none: nothing to follow).
    pub fn with_then(mut self, then: Vec<Entry>) -> Result<Self, TableError> {
        if !then.is_empty() {
            RoutingTable::new(then.clone(), 0, "")?;
        }
        self.then = then;
        Ok(self)
    }

    /// The table to be planned once the moves are done (empty: none).
    pub fn then(&self) -> &[Entry] {
        &self.then
    }

    /// A table as saved before it carried `then` (saved-table format 4), checked.
    pub fn restored(
        entries: Vec<Entry>,
        version: u64,
        setter: String,
        moves: Vec<Entry>,
        generations: Vec<(u8, u8, Generation)>,
        ended: Vec<(u8, u8, Generation)>,
    ) -> Result<Self, String> {
        let mut table = RoutingTable::new(entries, version, setter)
            .and_then(|t| t.with_moves(moves))
            .map_err(|e| e.to_string())?;
        table.generations = generations;
        table.ended = ended;
        kvnode_gossip::Table::check(&table)?;
        Ok(table)
    }

    /// The same table with `moves` under way, checked: each names exactly one entry's range,
    /// once. A move may name the nodes the entry holds: a move called off, its range's group
    /// going back to them (`plan_change`).
    pub fn with_moves(mut self, moves: Vec<Entry>) -> Result<Self, TableError> {
        for (i, m) in moves.iter().enumerate() {
            let bad = |reason: &str| TableError::BadMove {
                entry: m.to_string(),
                reason: reason.to_string(),
            };
            if !self.entries.iter().any(|e| (e.first, e.last) == (m.first, m.last)) {
                return Err(bad("its range is no entry's range"));
            }
            if moves[..i].iter().any(|o| (o.first, o.last) == (m.first, m.last)) {
                return Err(bad("the range is moved twice"));
            }
        }
        self.moves = moves;
        Ok(self)
    }

    /// The same table with a generation for each range whose group runs, and the histories
    /// that ended. `prev` is the table this one replaces at the coordinator:
    /// - a range whose group `prev` ran too keeps its generation (the group lives on: moved,
    ///   re-ordered, a move re-aimed); any other group is born here and gets a new one;
    /// - a group `prev` ran that this table does not (finished into one node) has ended, and
    ///   joins `prev`'s ended histories (the newest [`ENDED_KEPT`] of each range are kept:
    ///   a few bytes each, in every table gossip carries).
    ///
    /// `None` for a table of a configuration file: its groups are [`Generation::LEGACY`],
    /// as every node's copy of one configuration (each set by the node itself) must agree,
    /// and as the groups of a cluster from before generations are.
    pub fn with_generations(mut self, prev: Option<&RoutingTable>) -> Self {
        let Some(prev) = prev else {
            self.generations.clear();
            self.ended.clear();
            return self;
        };
        let mut generations = Vec::new();
        for e in &self.entries {
            let Some(nodes) = self.group_of(e) else { continue };
            let lives_on = prev
                .entry_for(e.first, e.last)
                .and_then(|h| prev.group_of(h))
                .map(|_| prev.generation_of(e.first, e.last));
            let range = RangeId {
                first: e.first,
                last: e.last,
            };
            let generation = lives_on.unwrap_or_else(|| {
                Generation::derive(self.version, &self.setter, range, nodes.iter().map(NodeName::as_str))
            });
            if generation != Generation::LEGACY {
                generations.push((e.first, e.last, generation));
            }
        }
        self.generations = generations;
        let mut ended = prev.ended.clone();
        for h in prev.entries.iter().filter(|h| prev.group_of(h).is_some()) {
            let lives_on = self
                .entry_for(h.first, h.last)
                .is_some_and(|e| self.group_of(e).is_some());
            if !lives_on {
                ended.push((h.first, h.last, prev.generation_of(h.first, h.last)));
            }
        }
        // The newest of each range, in the order they ended.
        let mut kept = Vec::with_capacity(ended.len());
        for (i, &(first, last, g)) in ended.iter().enumerate().rev() {
            let newer = ended[i + 1..]
                .iter()
                .filter(|&&(f, l, _)| (f, l) == (first, last))
                .count();
            if newer < ENDED_KEPT && !kept.contains(&(first, last, g)) {
                kept.push((first, last, g));
            }
        }
        kept.reverse();
        self.ended = kept;
        self
    }

    /// Whether the group of the range `first..=last` of history `generation` has ended (see
    /// [`RoutingTable::with_generations`]).
    pub fn has_ended(&self, first: u8, last: u8, generation: Generation) -> bool {
        self.ended.contains(&(first, last, generation))
    }

    /// The generation of the group of the range `first..=last` ([`Generation::LEGACY`] for a
    /// range this table gives none).
    pub fn generation_of(&self, first: u8, last: u8) -> Generation {
        self.generations
            .iter()
            .find(|(f, l, _)| (*f, *l) == (first, last))
            .map_or(Generation::LEGACY, |(_, _, g)| *g)
    }

    /// The entry of exactly the range `first..=last`, if the table has one.
    pub fn entry_for(&self, first: u8, last: u8) -> Option<&Entry> {
        self.entries.iter().find(|e| (e.first, e.last) == (first, last))
    }

    /// The moves under way.
    pub fn moves(&self) -> &[Entry] {
        &self.moves
    }

    /// The move under way of the range `first..=last`, if any.
    pub fn move_of(&self, first: u8, last: u8) -> Option<&Entry> {
        self.moves.iter().find(|m| (m.first, m.last) == (first, last))
    }

    /// The nodes of `entry`'s range group: its own, then a move's new ones. A range's group
    /// runs while the entry is replicated or moving (a single owner's range becomes a group of
    /// one for its move); `None` for a single owner's range that is not moving.
    pub fn group_of(&self, entry: &Entry) -> Option<Vec<NodeName>> {
        let moving = self.move_of(entry.first, entry.last);
        if !entry.is_replicated() && moving.is_none() {
            return None;
        }
        let mut nodes = entry.replicas().to_vec();
        for n in moving.map(Entry::replicas).unwrap_or_default() {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
        Some(nodes)
    }

    /// Parses `a-m=foo,n-z=bar`, `a-m=foo+bar+baz` (or a list of such entries from a config file).
    pub fn parse<'a>(
        specs: impl IntoIterator<Item = &'a str>,
        version: u64,
        setter: impl Into<String>,
    ) -> Result<Self, TableError> {
        let specs: Vec<&str> = specs.into_iter().collect();
        if specs.iter().all(|s| s.trim().is_empty()) {
            return Err(TableError::Empty);
        }
        let mut entries = Vec::new();
        for spec in specs {
            if spec.trim().is_empty() {
                // An empty string in a config file's list, beside real entries.
                return Err(TableError::Malformed {
                    entry: spec.to_string(),
                });
            }
            for (i, entry) in spec.split(',').map(str::trim).enumerate() {
                if entry.is_empty() {
                    return Err(TableError::EmptyEntry {
                        spec: spec.to_string(),
                        position: i + 1,
                    });
                }
                entries.push(entry.parse()?);
            }
        }
        Self::new(entries, version, setter)
    }

    /// The entry that covers `bucket`, by its first byte; the first matching entry wins.
    pub fn entry_of(&self, bucket: &[u8]) -> Option<&Entry> {
        let first = *bucket.first()?;
        self.entries.iter().find(|e| e.first <= first && first <= e.last)
    }

    /// The node that owns `bucket`: the entry's only node, or for a replicated entry its
    /// preferred leader (which leads only when its group says so: ask the group for that).
    pub fn owner_of(&self, bucket: &[u8]) -> Option<&NodeName> {
        self.entry_of(bucket).map(Entry::preferred_leader)
    }

    /// Every node that holds `bucket`, the preferred leader first.
    pub fn replicas_of(&self, bucket: &[u8]) -> Option<&[NodeName]> {
        self.entry_of(bucket).map(Entry::replicas)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The node that set this version (`route --set` on it, or its config file).
    pub fn setter(&self) -> &str {
        &self.setter
    }

    /// Whether `self` should replace `other`: the higher `(version, setter)` wins, and two
    /// different tables under one pair (a node's config file edited between two starts,
    /// while the cluster still holds the old table) are ordered by their entries, so that
    /// every node still settles on one of them.
    pub fn supersedes(&self, other: &RoutingTable) -> bool {
        (
            self.version,
            &self.setter,
            &self.entries,
            &self.moves,
            &self.generations,
            &self.ended,
            &self.then,
        ) > (
            other.version,
            &other.setter,
            &other.entries,
            &other.moves,
            &other.generations,
            &other.ended,
            &other.then,
        )
    }

    /// The same entries under a new version and setter (`route --set`).
    pub fn with_version(mut self, version: u64, setter: impl Into<String>) -> Self {
        self.version = version;
        self.setter = setter.into();
        self
    }

    /// Every node the table names (its moves' too), once each.
    pub fn nodes(&self) -> Vec<&NodeName> {
        let mut nodes: Vec<&NodeName> = self
            .entries
            .iter()
            .chain(&self.moves)
            .flat_map(|e| &e.replicas)
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// The error text for a bucket the table does not cover: the tutorial's message, then
    /// the byte no entry covers (a bucket name shown escaped hides which byte counts) and
    /// how to cover it.
    pub fn no_entry_message(&self, bucket: &[u8]) -> String {
        let byte = match bucket.first() {
            Some(&b) if b.is_ascii_graphic() => format!("0x{b:02x} ('{}')", b as char),
            Some(&b) => format!("0x{b:02x}"),
            None => "(none: the name is empty)".into(),
        };
        format!(
            "could not find entry for \"{}\" in routing table {self} (version {}): no entry covers its first byte {byte}; \
             add a range for it, or use 0x00-0xff to cover every byte (`kvnode route --set`)",
            escape_bytes(bucket),
            self.version
        )
    }
}

impl fmt::Display for RoutingTable {
    /// `[a-m=foo, n-z=bar]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// `[a-m=foo, n-z=bar]`
        fn list(f: &mut fmt::Formatter<'_>, entries: &[Entry]) -> fmt::Result {
            f.write_str("[")?;
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{e}")?;
            }
            f.write_str("]")
        }
        list(f, &self.entries)?;
        for m in &self.moves {
            write!(f, " moving {m}")?;
        }
        if !self.then.is_empty() {
            f.write_str(" then ")?;
            list(f, &self.then)?;
        }
        Ok(())
    }
}

impl Entry {
    /// An entry held by `replicas`, checked: 1 to [`MAX_REPLICAS`] distinct nodes.
    pub fn new(first: u8, last: u8, replicas: Vec<NodeName>) -> Result<Self, TableError> {
        let entry = Entry { first, last, replicas };
        let count = entry.replicas.len();
        if count == 0 {
            return Err(TableError::NoReplica { range: entry.range() });
        }
        if count > MAX_REPLICAS {
            return Err(TableError::TooManyReplicas {
                entry: entry.to_string(),
                count,
            });
        }
        for (i, node) in entry.replicas.iter().enumerate() {
            if entry.replicas[..i].contains(node) {
                return Err(TableError::DuplicateReplica {
                    entry: entry.to_string(),
                    node: node.to_string(),
                });
            }
        }
        // A replicated range's group names its replicas by a hash of their names: two that
        // hash alike would be one voter (astronomically unlikely; then a clear error).
        if entry.is_replicated()
            && let Err(e) = kvnode_replica::NodeIds::new(entry.replicas.iter().map(NodeName::as_str))
        {
            return Err(TableError::IdCollision {
                entry: entry.to_string(),
                reason: e.to_string(),
            });
        }
        Ok(entry)
    }

    /// An entry owned by one node, as every entry was before replicas.
    pub fn single(first: u8, last: u8, node: NodeName) -> Self {
        Entry {
            first,
            last,
            replicas: vec![node],
        }
    }

    /// The nodes that hold the range, the preferred leader first.
    pub fn replicas(&self) -> &[NodeName] {
        &self.replicas
    }

    /// The first named: the range's only node, or the replica that should lead its group.
    pub fn preferred_leader(&self) -> &NodeName {
        // Never empty: every way to make an entry goes through `new` or `single`.
        &self.replicas[0]
    }

    /// Whether the range is held by more than one node.
    pub fn is_replicated(&self) -> bool {
        self.replicas.len() > 1
    }

    /// Whether `other` names the same nodes (in any order).
    pub fn same_nodes(&self, other: &Entry) -> bool {
        self.replicas.len() == other.replicas.len() && self.replicas.iter().all(|r| other.replicas.contains(r))
    }

    /// The range alone: `a-m`, `0x00-0x60`, or `x` for a single byte.
    pub fn range(&self) -> String {
        if self.first == self.last {
            byte_to_string(self.first)
        } else {
            format!("{}-{}", byte_to_string(self.first), byte_to_string(self.last))
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `a-m=foo`, or `a-m=foo+bar+baz`: what the parser reads back.
        write!(f, "{}=", self.range())?;
        for (i, node) in self.replicas.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{node}")?;
        }
        Ok(())
    }
}

/// The table gossip spreads (SPEC §6): the newest by version, then setter, wins everywhere.
impl kvnode_gossip::Table for RoutingTable {
    fn supersedes(&self, other: &Self) -> bool {
        RoutingTable::supersedes(self, other)
    }

    fn version(&self) -> u64 {
        RoutingTable::version(self)
    }

    /// Tables derive `Deserialize` without the checks of the whole table [`RoutingTable::new`]
    /// makes (overlaps; replicated entries while they are refused); each entry's replicas
    /// are checked as it is decoded.
    fn check(&self) -> Result<(), String> {
        RoutingTable::new(self.entries.clone(), self.version, self.setter.clone())
            .and_then(|t| t.with_moves(self.moves.clone()))
            .and_then(|t| t.with_then(self.then.clone()))
            .map_err(|e| e.to_string())?;
        for (i, &(first, last, _)) in self.generations.iter().enumerate() {
            let group = self.entry_for(first, last).and_then(|e| self.group_of(e));
            if group.is_none() || self.generations[..i].iter().any(|&(f, l, _)| (f, l) == (first, last)) {
                return Err(format!(
                    "the table gives a generation to range {}-{}, which runs no group or has one already",
                    byte_to_string(first),
                    byte_to_string(last)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
